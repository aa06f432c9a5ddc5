"""A Search-R1 compatible ``/retrieve`` HTTP server over any Retriever (stdlib ``http.server``, one thread per
request, one retrieval at a time); ``sdar retriever serve`` runs ``main_serve``.

Endpoints:

* ``POST /retrieve`` with JSON ``{"queries": [str, ...], "topk": int (optional), "return_scores": bool
  (optional, default false)}``. Answer: ``{"result": [...]}`` with one list per query, best first; each item is
  ``{"document": {"id", "contents"}, "score": s}`` when ``return_scores`` is true, else the document object.
  ``contents`` is the quoted title, a newline, and the text (the wiki-18 layout). A malformed request gets HTTP 400
  with ``{"error": "..."}``; a retriever failure gets HTTP 500.
* ``GET /health`` answers ``{"status": "ok", "passages": N}``.

The server binds 127.0.0.1 unless told otherwise: it has no authentication.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

from sdar.envs.search.retrievers import Passage, Retriever

__all__ = ["DEFAULT_PORT", "RetrievalServer", "main_serve", "serve_retriever"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8000
"""Port of ``sdar retriever serve`` (Search-R1's default retriever URL is ``http://127.0.0.1:8000/retrieve``)."""
MAX_QUERIES = 1024
"""Largest batch one request may carry."""


def _document(p: Passage) -> dict[str, Any]:
    return {"id": p.doc_id, "contents": p.contents}


class _BadRequest(ValueError):
    pass


def _parse_request(payload: Any, default_topk: int) -> tuple[list[str], int, bool]:
    if not isinstance(payload, dict):
        raise _BadRequest("the body must be a JSON object with a 'queries' list")
    queries = payload.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise _BadRequest("'queries' must be a list of strings")
    if len(queries) > MAX_QUERIES:
        raise _BadRequest(f"at most {MAX_QUERIES} queries per request, got {len(queries)}")
    topk = payload.get("topk", default_topk)
    if topk is None:
        topk = default_topk
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise _BadRequest(f"'topk' must be a positive integer, got {topk!r}")
    scores = payload.get("return_scores", False)
    if not isinstance(scores, bool):
        raise _BadRequest(f"'return_scores' must be true or false, got {scores!r}")
    return queries, topk, scores


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok", "passages": self.server.corpus_size})
        else:
            self._send(404, {"error": f"unknown path {self.path!r}; use POST /retrieve or GET /health"})

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/") != "/retrieve":
            self._send(404, {"error": f"unknown path {self.path!r}; use POST /retrieve"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length).decode("utf-8") or "null")
            queries, topk, scores = _parse_request(payload, self.server.default_topk)
        except (ValueError, UnicodeDecodeError) as exc:
            self._send(400, {"error": str(exc)})
            return
        try:
            with self.server.lock:
                hits = self.server.retriever.retrieve(queries, topk) if queries else []
        except Exception as exc:  # noqa: BLE001 - reported to the client, the server keeps running
            logger.exception("retrieval failed")
            self._send(500, {"error": f"retrieval failed: {exc!r}"})
            return
        result = [
            [{"document": _document(p), "score": p.score} if scores else _document(p) for p in row] for row in hits
        ]
        self._send(200, {"result": result})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        logger.debug("retriever server: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], retriever: Retriever, default_topk: int, corpus_size: int):
        super().__init__(address, _Handler)
        self.retriever = retriever
        self.default_topk = default_topk
        self.corpus_size = corpus_size
        self.lock = threading.Lock()


@dataclass
class RetrievalServer:
    """A running server; ``url`` is its ``/retrieve`` endpoint. Stop it with ``close()`` (idempotent)."""

    _server: _Server
    _thread: threading.Thread | None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}/retrieve"

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``close()`` is called from another thread (or KeyboardInterrupt)."""
        self._server.serve_forever()

    def close(self) -> None:
        """Stop serving and release the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "RetrievalServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_retriever(
    retriever: Retriever, *, host: str = "127.0.0.1", port: int = 0, topk: int = 3, corpus_size: int = 0,
    background: bool = True,
) -> RetrievalServer:
    """Bind a ``/retrieve`` server for ``retriever``; ``port=0`` picks a free port (see ``RetrievalServer.url``).

    With ``background=True`` requests are served by a daemon thread right away; otherwise the caller runs
    ``RetrievalServer.serve_forever()`` itself (``main_serve`` does).
    """
    server = _Server((host, port), retriever, topk, corpus_size)
    thread = None
    if background:
        thread = threading.Thread(target=server.serve_forever, name="sdar-retriever", daemon=True)
        thread.start()
    return RetrievalServer(server, thread)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdar retriever serve",
        description="Serve passage retrieval over HTTP at POST /retrieve (Search-R1 format).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)")
    parser.add_argument("--retriever", choices=("bm25", "dense"), default="bm25", help="retrieval method")
    parser.add_argument("--corpus", default=None,
                        help="wiki-18 style JSONL corpus ({'id', 'contents'} or {'id', 'title', 'text'} per line); "
                             "default: the built-in offline Wikipedia summaries")
    parser.add_argument("--topk", type=int, default=3, help="passages per query when a request gives no topk")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder for --retriever dense")
    return parser


def main_serve(argv: Sequence[str]) -> int:
    """``sdar retriever serve [options]``: build the retriever, then serve until interrupted. Returns 0."""
    from sdar.envs.search.data import build_retriever, load_corpus, offline_corpus

    args = _build_parser().parse_args(list(argv))
    passages = load_corpus(Path(args.corpus)) if args.corpus else offline_corpus()
    retriever = build_retriever(passages, kind=args.retriever, cache_dir=args.cache_dir)
    handle = serve_retriever(retriever, host=args.host, port=args.port, topk=args.topk,
                             corpus_size=len(passages), background=False)
    sys.stderr.write(f"sdar retriever: {args.retriever} over {len(passages)} passages at {handle.url}\n")
    # Stop on Ctrl-C, `kill -INT` and `kill` (SIGTERM) even when started in the background (`nohup ... &`), where
    # the shell makes the process ignore SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        handle.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        handle.close()
    return 0
