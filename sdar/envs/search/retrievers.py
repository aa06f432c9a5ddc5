"""Passage retrievers for Search-QA behind one Protocol: BM25 (default), an HTTP client for a ``/retrieve`` server,
the shared retry-with-back-off function and the ``<information>`` formatting.

Wire format of a Search-R1 ``/retrieve`` server (what ``HTTPRetriever`` speaks and ``sdar.envs.search.server``
serves): POST JSON ``{"queries": [...], "topk": k, "return_scores": true}`` answered by
``{"result": [[{"document": {"id": ..., "contents": "\\"Title\\"\\ntext"}, "score": s}, ...], ...]}``, one list
per query, best first. Without ``return_scores`` each item is the document object itself. ``contents`` holds the
title (quoted, as in the wiki-18 corpus) on its first line and the passage text after it. A server started with a
token wants ``Authorization: Bearer <token>``; ``HTTPRetriever`` sends the one in ``$SDAR_RETRIEVER_TOKEN``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

from sdar.errors import UserError
from sdar.envs.bm25 import BM25Index

__all__ = [
    "BM25Retriever",
    "HTTPRetriever",
    "Passage",
    "RequestRefused",
    "Retriever",
    "RetrieverError",
    "TOKEN_ENV",
    "call_with_retries",
    "format_information",
    "passage_from_contents",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

TOKEN_ENV = "SDAR_RETRIEVER_TOKEN"
"""Environment variable holding the bearer token of a ``/retrieve`` server (read by the server and the client)."""


@dataclass(frozen=True)
class Passage:
    """One retrievable text: a Wikipedia-style title and its passage."""

    doc_id: str
    title: str
    text: str
    score: float = 0.0
    """Retrieval score of this hit (0.0 in a corpus listing)."""

    @property
    def contents(self) -> str:
        """The wiki-18 ``contents`` field: the quoted title, a newline, then the text."""
        return f'"{self.title}"\n{self.text}'


def passage_from_contents(doc_id: str, contents: str, score: float = 0.0) -> Passage:
    """Split a wiki-18 style ``contents`` string (title on the first line, optionally quoted) into a Passage."""
    title, _, text = contents.partition("\n")
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return Passage(doc_id=doc_id, title=title, text=text.strip(), score=score)


class RetrieverError(UserError, RuntimeError):
    """Retrieval failed (server unreachable, bad answer, ...); the message says what to check."""


class RequestRefused(RetrieverError):
    """The server refused the request itself (HTTP 4xx): sending it again would not help, so it is not retried."""


@runtime_checkable
class Retriever(Protocol):
    """Top-k passage search for a batch of queries."""

    def retrieve(self, queries: list[str], k: int) -> list[list[Passage]]:
        """The best ``k`` passages (fewer when fewer match) for each query, best first, one list per query.

        Raises:
            RetrieverError: when the backend cannot answer.
        """
        ...


def call_with_retries(
    fn: Callable[[], T],
    *,
    retries: int,
    backoff: float,
    sleep: Callable[[float], None] = time.sleep,
    what: str = "retrieval",
) -> T:
    """Call ``fn``; on an exception retry up to ``retries`` more times, sleeping ``backoff * 2**i`` before retry i.

    Example: ``retries=2, backoff=0.5`` makes at most 3 calls with sleeps of 0.5 s and 1.0 s in between. A
    ``RequestRefused`` is raised at once (the same request would be refused again).

    Raises:
        RetrieverError: after the last failed attempt, chained to its exception.
    """
    if retries < 0 or backoff < 0:
        raise ValueError(f"retries and backoff must be >= 0, got retries={retries}, backoff={backoff}")
    for attempt in range(retries + 1):
        try:
            return fn()
        except RequestRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - any backend failure is retried, then reported
            if attempt == retries:
                raise RetrieverError(f"{what} failed after {retries + 1} attempt(s): {exc!r}") from exc
            delay = backoff * (2**attempt)
            logger.debug("%s failed (attempt %d/%d, %r); retrying in %.3f s", what, attempt + 1, retries + 1,
                         exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def format_information(passages: Sequence[Passage]) -> str:
    """The observation for one search: ``"\\n<information>Doc 1(Title: T) text\\n...</information>\\n"``.

    This is Search-R1's passage layout; an empty hit list says so inside the block.
    """
    if not passages:
        body = "No passage matched the query.\n"
    else:
        body = "".join(f"Doc {i}(Title: {p.title}) {p.text}\n" for i, p in enumerate(passages, 1))
    return f"\n<information>{body}</information>\n"


@dataclass
class BM25Retriever:
    """BM25 over the passages' title and text (the default retriever; uses ``sdar.envs.bm25.BM25Index``).

    Ties are broken by corpus order, so results are deterministic.
    """

    passages: Sequence[Passage]

    def __post_init__(self) -> None:
        if not self.passages:
            raise ValueError("BM25Retriever needs at least one passage")
        self._index = BM25Index([f"{p.title} {p.text}" for p in self.passages])

    def retrieve(self, queries: list[str], k: int) -> list[list[Passage]]:
        """See ``Retriever.retrieve``; queries with no indexed term get an empty list."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        hits = self._index.search_many(list(queries), k)
        return [[_scored(self.passages[i], s) for i, s in row] for row in hits]


def _scored(p: Passage, score: float) -> Passage:
    return Passage(doc_id=p.doc_id, title=p.title, text=p.text, score=float(score))


def _parse_hit(item: Any, where: str) -> Passage:
    if not isinstance(item, Mapping):
        raise RetrieverError(f"{where}: expected a JSON object per hit, got {type(item).__name__}")
    doc, score = (item["document"], float(item.get("score", 0.0))) if "document" in item else (item, 0.0)
    if not isinstance(doc, Mapping):
        raise RetrieverError(f"{where}: 'document' must be a JSON object")
    doc_id = str(doc.get("id", doc.get("doc_id", "")))
    if isinstance(doc.get("contents"), str):
        return passage_from_contents(doc_id, doc["contents"], score)
    if isinstance(doc.get("text"), str):
        return Passage(doc_id=doc_id, title=str(doc.get("title", "")), text=doc["text"], score=score)
    raise RetrieverError(f"{where}: a hit needs 'contents' (or 'title' and 'text'); got keys {sorted(doc)}")


def _token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read(65536).decode("utf-8", "replace"))
        return str(payload.get("error", payload)) if isinstance(payload, Mapping) else str(payload)
    except (OSError, ValueError):
        return exc.reason if isinstance(exc.reason, str) else ""


@dataclass
class HTTPRetriever:
    """Client of a Search-R1 compatible ``/retrieve`` endpoint (wire format in the module docstring).

    Args:
        url: the full endpoint, e.g. ``http://127.0.0.1:8000/retrieve``.
        timeout: seconds per HTTP request.
        retries: extra attempts after a failed request (connection error, HTTP 5xx / 408 / 429, malformed answer);
            other 4xx answers (bad request, wrong token, too large) are not retried.
        backoff: sleep before retry i is ``backoff * 2**i`` seconds.
        token: bearer token sent as ``Authorization: Bearer <token>``; default ``$SDAR_RETRIEVER_TOKEN`` (None: none).
        sleep: the sleep function (tests pass a recorder).
    """

    url: str
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    token: str | None = field(default_factory=_token_from_env, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def retrieve(self, queries: list[str], k: int) -> list[list[Passage]]:
        """See ``Retriever.retrieve``.

        Raises:
            RetrieverError: when every attempt failed, or at once when the server refused the request
                (``RequestRefused``); the message names the URL and the error.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        body = json.dumps({"queries": list(queries), "topk": k, "return_scores": True}).encode("utf-8")
        what = f"retrieval request to {self.url} (is the server running? start one with `sdar retriever serve`)"
        return call_with_retries(
            lambda: self._post(body, len(queries)), retries=self.retries, backoff=self.backoff, sleep=self.sleep,
            what=what,
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _post(self, body: bytes, n: int) -> list[list[Passage]]:
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                hint = f" (set ${TOKEN_ENV} to the server's token)" if exc.code == 401 else ""
                raise RequestRefused(f"{self.url} refused the request with HTTP {exc.code}: {_error_text(exc)}{hint}"
                                     ) from exc
            raise
        result = payload.get("result") if isinstance(payload, Mapping) else None
        if not isinstance(result, list) or len(result) != n:
            raise RetrieverError(f"{self.url} answered without a 'result' list of {n} entries")
        out: list[list[Passage]] = []
        for qi, hits in enumerate(result):
            if not isinstance(hits, list):
                raise RetrieverError(f"{self.url}: result[{qi}] is not a list")
            out.append([_parse_hit(h, f"{self.url} result[{qi}]") for h in hits])
        return out

    def check(self) -> None:
        """Send one empty request (with the usual retries): proves the server is up and accepts our token.

        Raises:
            RetrieverError: the server cannot be reached, refuses the token, or does not answer like a
                ``/retrieve`` server; the message names the URL and the fix.
        """
        body = json.dumps({"queries": [], "topk": 1}).encode("utf-8")
        what = f"probe of {self.url} (start a server with `sdar retriever serve`, or fix env.retriever_url)"
        call_with_retries(lambda: self._post(body, 0), retries=self.retries, backoff=self.backoff, sleep=self.sleep,
                          what=what)
