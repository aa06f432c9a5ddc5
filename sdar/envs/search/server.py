"""A Search-R1 compatible ``/retrieve`` HTTP server over any Retriever (stdlib ``http.server``, one thread per
connection, one retrieval at a time); ``sdar retriever serve`` runs ``main_serve``.

Endpoints:

* ``POST /retrieve`` with JSON ``{"queries": [str, ...], "topk": int (optional), "return_scores": bool
  (optional, default false)}``. Answer: ``{"result": [...]}`` with one list per query, best first; each item is
  ``{"document": {"id", "contents"}, "score": s}`` when ``return_scores`` is true, else the document object.
  ``contents`` is the quoted title, a newline, and the text (the wiki-18 layout).
* ``GET /health`` answers ``{"status": "ok", "passages": N}`` (no token needed).

Errors are JSON ``{"error": "..."}``: 400 malformed request or an answer over the size limit, 401 missing or wrong
token, 404 unknown path, 411 no ``Content-Length``, 413 body over the limit, 503 too many open connections, 500
retriever failure.

Limits (``ServerLimits``, each a ``sdar retriever serve`` flag) keep one client from exhausting the server: the body
size, the time a client may take to send its whole request (a watchdog closes a stalled connection), ``topk``
(larger values are lowered to the cap), queries per request, the answer size and the number of open connections.
The listen backlog is 128, so bursts of many workers queue instead of being reset.

The server binds 127.0.0.1 unless told otherwise. Binding any other address needs ``allow_remote``
(``--allow-remote``) and prints a warning; an optional bearer token (``--token`` or ``SDAR_RETRIEVER_TOKEN``) is then
required on ``/retrieve`` as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

from sdar.envs.search.retrievers import TOKEN_ENV, Passage, Retriever

__all__ = [
    "DEFAULT_PORT",
    "MAX_QUERIES",
    "RetrievalServer",
    "ServerLimits",
    "is_loopback",
    "main_serve",
    "serve_retriever",
]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8000
"""Port of ``sdar retriever serve`` (Search-R1's default retriever URL is ``http://127.0.0.1:8000/retrieve``)."""
MAX_QUERIES = 1024
"""Default largest batch one request may carry."""
BACKLOG = 128
"""Listen backlog: connections the kernel queues before the server accepts them (the stdlib default is 5)."""
_MAX_REJECTERS = 16
"""Threads answering 503 at once; further connections over the limit are closed without an answer."""


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one request or client may cost the server."""

    max_body_bytes: int = 1 << 20
    """Largest request body; a larger ``Content-Length`` is answered 413 without reading the body."""
    read_timeout_s: float = 10.0
    """Seconds a client has to send its whole request; a slower connection is closed."""
    max_topk: int = 50
    """A larger ``topk`` is lowered to this."""
    max_queries: int = MAX_QUERIES
    """Queries per request; more is a 400."""
    max_response_bytes: int = 16 << 20
    """Largest answer; a request whose answer would be larger gets a 400 asking for fewer queries or a smaller topk."""
    max_connections: int = 256
    """Open connections served at once; further ones get a 503 at once."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_topk", "max_queries", "max_response_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.read_timeout_s <= 0:
            raise ValueError(f"read_timeout_s must be > 0, got {self.read_timeout_s}")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (127.0.0.0/8, ::1 or a name resolving only to those)."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def _document(p: Passage) -> dict[str, Any]:
    return {"id": p.doc_id, "contents": p.contents}


class _RequestError(ValueError):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse_request(payload: Any, default_topk: int, limits: ServerLimits) -> tuple[list[str], int, bool]:
    if not isinstance(payload, dict):
        raise _RequestError(400, "the body must be a JSON object with a 'queries' list")
    queries = payload.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise _RequestError(400, "'queries' must be a list of strings")
    if len(queries) > limits.max_queries:
        raise _RequestError(400, f"at most {limits.max_queries} queries per request, got {len(queries)}")
    topk = payload.get("topk", default_topk)
    if topk is None:
        topk = default_topk
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise _RequestError(400, f"'topk' must be a positive integer, got {topk!r}")
    scores = payload.get("return_scores", False)
    if not isinstance(scores, bool):
        raise _RequestError(400, f"'return_scores' must be true or false, got {scores!r}")
    return queries, min(topk, limits.max_topk), scores


class _Watchdog:
    """One thread that shuts down connections whose request did not arrive before its deadline."""

    def __init__(self) -> None:
        self._deadlines: dict[socket.socket, float] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sdar-retriever-watchdog", daemon=True)
        self._thread.start()

    def watch(self, conn: socket.socket, seconds: float) -> None:
        with self._cond:
            self._deadlines[conn] = time.monotonic() + seconds
            self._cond.notify()

    def release(self, conn: socket.socket) -> None:
        with self._cond:
            self._deadlines.pop(conn, None)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for conn in [c for c, t in self._deadlines.items() if t <= now]:
                    del self._deadlines[conn]
                    try:
                        conn.shutdown(socket.SHUT_RDWR)  # the handler's blocked read returns; it then closes
                    except OSError:
                        pass
                    logger.info("retriever server: closed a connection that did not send its request in time")
                wait = min(self._deadlines.values(), default=now + 1.0) - now
                self._cond.wait(timeout=max(wait, 0.01))


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def setup(self) -> None:
        self.timeout = self.server.limits.read_timeout_s  # every blocking read and write of this connection
        super().setup()
        self.server.watchdog.watch(self.connection, self.server.limits.read_timeout_s)

    def finish(self) -> None:
        self.server.watchdog.release(self.connection)
        try:
            super().finish()
        except OSError:  # the client is gone
            pass

    def _send(self, status: int, payload: Any, *, body: bytes | None = None, headers: dict[str, str] | None = None
              ) -> None:
        data = body if body is not None else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: int, message: str, *, unread: int = 0, headers: dict[str, str] | None = None) -> None:
        """Answer an error and close; ``unread`` body bytes are drained briefly so the client can read the answer."""
        self.server.watchdog.release(self.connection)
        self.close_connection = True
        self._send(status, {"error": message}, headers={"Connection": "close", **(headers or {})})
        if unread > 0:
            self._linger(unread)

    def _linger(self, unread: int) -> None:
        """Half-close, then drain some of the unread body: closing with unread data would reset the connection
        before the client reads the error."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            budget, deadline = min(unread, 4 << 20), time.monotonic() + 1.0
            while budget > 0 and time.monotonic() < deadline:
                chunk = self.connection.recv(min(budget, 65536))
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.server.watchdog.release(self.connection)
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok", "passages": self.server.corpus_size})
        else:
            self._send(404, {"error": f"unknown path {self.path!r}; use POST /retrieve or GET /health"})

    def _authorised(self) -> bool:
        token = self.server.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise _RequestError(411, "chunked bodies are not accepted; send a Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _RequestError(411, "a POST /retrieve needs a Content-Length header")
        try:
            length = int(raw)
        except ValueError:
            raise _RequestError(400, f"bad Content-Length {raw!r}") from None
        if length < 0:
            raise _RequestError(400, f"bad Content-Length {raw!r}")
        if length > self.server.limits.max_body_bytes:
            limit = self.server.limits.max_body_bytes
            raise _RequestError(413, f"body of {length} bytes is over the limit of {limit}; send fewer or shorter "
                                     "queries per request")
        return length

    def _read_body(self, length: int) -> bytes:
        data = self.rfile.read(length)
        if len(data) < length:
            raise ConnectionError("the client closed the connection (or was too slow) before sending its body")
        return data

    def _announced(self) -> int:
        raw = self.headers.get("Content-Length", "").strip()
        return int(raw) if raw.isdigit() else 1 << 16

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/") != "/retrieve":
            self._refuse(404, f"unknown path {self.path!r}; use POST /retrieve", unread=self._announced())
            return
        try:
            length = self._content_length()
        except _RequestError as exc:
            self._refuse(exc.status, str(exc), unread=self._announced())
            return
        if not self._authorised():
            self._refuse(401, f"missing or wrong bearer token; the client sets it from ${TOKEN_ENV}",
                         unread=length, headers={"WWW-Authenticate": "Bearer"})
            return
        try:
            body = self._read_body(length)
        except (OSError, ConnectionError) as exc:
            logger.info("retriever server: dropped %s: %s", self.client_address[0], exc)
            self.close_connection = True
            return
        self.server.watchdog.release(self.connection)  # the request is in; retrieval may take its time
        try:
            payload = json.loads(body.decode("utf-8") or "null")
            queries, topk, scores = _parse_request(payload, self.server.default_topk, self.server.limits)
        except _RequestError as exc:
            self._send(exc.status, {"error": str(exc)})
            return
        except (ValueError, UnicodeDecodeError) as exc:
            self._send(400, {"error": f"the body is not valid JSON: {exc}"})
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
        data = json.dumps({"result": result}).encode("utf-8")
        limit = self.server.limits.max_response_bytes
        if len(data) > limit:
            self._send(400, {"error": f"the answer would be {len(data)} bytes, over the limit of {limit}; send fewer "
                                      "queries per request or a smaller topk"})
            return
        self._send(200, None, body=data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        logger.debug("retriever server: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], retriever: Retriever, default_topk: int, corpus_size: int,
                 limits: ServerLimits, token: str | None):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.retriever = retriever
        self.default_topk = default_topk
        self.corpus_size = corpus_size
        self.limits = limits
        self.token = token or None
        self.lock = threading.Lock()
        self.watchdog = _Watchdog()
        self._open = 0
        self._rejecting = 0
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            busy = self._open >= self.limits.max_connections
            if not busy:
                self._open += 1
        if busy:
            self._reject_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._open_lock:
                self._open -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open -= 1

    def _reject_busy(self, request: socket.socket) -> None:
        """Answer 503 from a short-lived thread (at most ``_MAX_REJECTERS`` at once; beyond that just close)."""
        with self._open_lock:
            spare = self._rejecting < _MAX_REJECTERS
            if spare:
                self._rejecting += 1
        if not spare:
            self.shutdown_request(request)
            return
        threading.Thread(target=self._send_busy, args=(request,), name="sdar-retriever-busy", daemon=True).start()

    def _send_busy(self, request: socket.socket) -> None:
        body = json.dumps({"error": "too many open connections; retry shortly"}).encode()
        try:
            request.settimeout(0.5)
            request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            + f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n".encode()
                            + body)
            request.shutdown(socket.SHUT_WR)
            # read what the client still sends, so that closing does not reset the connection under its answer
            deadline, budget = time.monotonic() + 0.5, 1 << 16
            while budget > 0 and time.monotonic() < deadline:
                chunk = request.recv(min(budget, 8192))
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass
        finally:
            request.close()
            with self._open_lock:
                self._rejecting -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is logged in one line; anything else with its traceback, to the log only."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            logger.info("retriever server: connection from %s ended: %r", client_address[0], exc)
        else:
            logger.exception("retriever server: error while serving %s", client_address[0])

    def server_close(self) -> None:
        super().server_close()
        self.watchdog.stop()


@dataclass
class RetrievalServer:
    """A running server; ``url`` is its ``/retrieve`` endpoint. Stop it with ``close()`` (idempotent)."""

    _server: _Server
    _thread: threading.Thread | None
    _closed: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/retrieve"

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``close()`` is called from another thread (or KeyboardInterrupt)."""
        self._server.serve_forever()

    def close(self) -> None:
        """Stop serving and release the socket."""
        if self._closed:
            return
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        self._closed = True

    def __enter__(self) -> "RetrievalServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_retriever(
    retriever: Retriever, *, host: str = "127.0.0.1", port: int = 0, topk: int = 3, corpus_size: int = 0,
    background: bool = True, limits: ServerLimits | None = None, token: str | None = None, allow_remote: bool = False,
) -> RetrievalServer:
    """Bind a ``/retrieve`` server for ``retriever``; ``port=0`` picks a free port (see ``RetrievalServer.url``).

    With ``background=True`` requests are served by a daemon thread right away; otherwise the caller runs
    ``RetrievalServer.serve_forever()`` itself (``main_serve`` does). ``token`` set requires
    ``Authorization: Bearer <token>`` on ``/retrieve``.

    Raises:
        ValueError: ``host`` is not a loopback address and ``allow_remote`` is false.
    """
    if not allow_remote and not is_loopback(host):
        raise ValueError(f"host {host!r} makes the retriever reachable from other machines; pass allow_remote=True "
                         "(--allow-remote) to do so on purpose, ideally with a token")
    server = _Server((host, port), retriever, topk, corpus_size, limits or ServerLimits(), token)
    thread = None
    if background:
        thread = threading.Thread(target=server.serve_forever, name="sdar-retriever", daemon=True)
        thread.start()
    return RetrievalServer(server, thread)


def _build_parser() -> argparse.ArgumentParser:
    d = ServerLimits()
    parser = argparse.ArgumentParser(
        prog="sdar retriever serve",
        description="Serve passage retrieval over HTTP at POST /retrieve (Search-R1 format).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other than a loopback address (reachable from other machines)")
    parser.add_argument("--token", default=None,
                        help=f"require 'Authorization: Bearer TOKEN' on /retrieve (default: ${TOKEN_ENV} if set; "
                             "the environment variable keeps it out of the process list)")
    parser.add_argument("--retriever", choices=("bm25", "dense"), default="bm25", help="retrieval method")
    parser.add_argument("--corpus", default=None,
                        help="wiki-18 style JSONL corpus ({'id', 'contents'} or {'id', 'title', 'text'} per line); "
                             "default: the built-in offline Wikipedia summaries")
    parser.add_argument("--topk", type=int, default=3, help="passages per query when a request gives no topk")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder for --retriever dense")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-topk", type=int, default=d.max_topk, help="a larger requested topk is lowered to this")
    limits.add_argument("--max-queries", type=int, default=d.max_queries, help="queries per request")
    limits.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body (413)")
    limits.add_argument("--max-response-bytes", type=int, default=d.max_response_bytes, help="largest answer")
    limits.add_argument("--read-timeout", type=float, default=d.read_timeout_s,
                        help="seconds a client has to send its request before the connection is closed")
    limits.add_argument("--max-connections", type=int, default=d.max_connections,
                        help="connections served at once; more get 503")
    return parser


def main_serve(argv: Sequence[str]) -> int:
    """``sdar retriever serve [options]``: build the retriever, then serve until interrupted. Returns 0."""
    from sdar.envs.search.data import build_retriever, load_corpus, offline_corpus

    parser = _build_parser()
    args = parser.parse_args(list(argv))
    try:
        limits = ServerLimits(max_body_bytes=args.max_body_bytes, read_timeout_s=args.read_timeout,
                              max_topk=args.max_topk, max_queries=args.max_queries,
                              max_response_bytes=args.max_response_bytes, max_connections=args.max_connections)
    except ValueError as exc:
        parser.error(str(exc))
    remote = not is_loopback(args.host)
    if remote and not args.allow_remote:
        parser.error(f"--host {args.host} makes the retriever reachable from other machines; add --allow-remote to "
                     f"do so on purpose (and set a token with ${TOKEN_ENV} or --token)")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if remote:
        sys.stderr.write(f"sdar retriever: WARNING: serving on {args.host}, reachable from other machines; "
                         + ("clients need the bearer token.\n" if token else
                            f"there is NO authentication: anyone who can reach the port can query it (set ${TOKEN_ENV} "
                            "or --token).\n"))
    passages = load_corpus(Path(args.corpus)) if args.corpus else offline_corpus()
    retriever = build_retriever(passages, kind=args.retriever, cache_dir=args.cache_dir)
    handle = serve_retriever(retriever, host=args.host, port=args.port, topk=args.topk, corpus_size=len(passages),
                             background=False, limits=limits, token=token, allow_remote=args.allow_remote)
    sys.stderr.write(f"sdar retriever: {args.retriever} over {len(passages)} passages at {handle.url}"
                     f"{' (bearer token required)' if token else ''}\n")
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
