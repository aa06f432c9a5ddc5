"""The /retrieve server under load and abuse: many concurrent clients, stalled clients, oversized bodies, tokens,
caps, remote binding, and the env.retriever_url path of `sdar train` (all on 127.0.0.1, a few seconds in all)."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sdar.config import ConfigError, EnvConfig, RunConfig, validate
from sdar.envs.registry import make_env_factory
from sdar.envs.search.data import offline_corpus
from sdar.envs.search.retrievers import (
    TOKEN_ENV,
    BM25Retriever,
    HTTPRetriever,
    RequestRefused,
    RetrieverError,
)
from sdar.envs.search.server import ServerLimits, is_loopback, main_serve, serve_retriever

CLIENTS = 64
REQUESTS = 20


@pytest.fixture(scope="module")
def corpus() -> list:
    return offline_corpus()[:1500]


@pytest.fixture(scope="module")
def bm25(corpus) -> BM25Retriever:
    return BM25Retriever(corpus)


def _queries(corpus: list, n: int) -> list[str]:
    return [" ".join(p.text.split()[:6]) for p in corpus[:: max(len(corpus) // n, 1)][:n]]


def _raw_post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def _post(url: str, payload: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    return _raw_post(url, json.dumps(payload).encode(), headers)


def test_64_concurrent_clients_get_every_answer_right(bm25, corpus) -> None:
    queries = _queries(corpus, 40)
    expected = {q: bm25.retrieve([q], 3)[0] for q in queries}
    errors: list[str] = []
    answered = [0] * CLIENTS
    start = threading.Barrier(CLIENTS)

    def client(i: int, url: str) -> None:
        retriever = HTTPRetriever(url, timeout=30, retries=0)  # no retry: any reset or refusal is an error
        start.wait()
        for j in range(REQUESTS):
            q = queries[(i * REQUESTS + j) % len(queries)]
            try:
                got = retriever.retrieve([q], 3)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(f"client {i} request {j}: {exc!r}")
                continue
            if got != [expected[q]]:
                errors.append(f"client {i} request {j}: wrong answer for {q!r}")
            answered[i] += 1

    with serve_retriever(bm25, corpus_size=len(corpus)) as server:
        threads = [threading.Thread(target=client, args=(i, server.url)) for i in range(CLIENTS)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        took = time.monotonic() - began
    assert not any(t.is_alive() for t in threads)
    assert errors == [], errors[:5]
    assert sum(answered) == CLIENTS * REQUESTS
    print(f"{CLIENTS * REQUESTS} requests from {CLIENTS} clients in {took:.1f} s")


def _stall(url: str, announce: int) -> socket.socket:
    """A client that announces a body of ``announce`` bytes and then sends nothing."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(f"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {announce}\r\n\r\n".encode())
    return sock


def _closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock`` (reads until EOF or reset)."""
    began = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    return time.monotonic() - began


def test_a_stalled_client_neither_blocks_others_nor_lives_forever(bm25, corpus) -> None:
    limits = ServerLimits(read_timeout_s=1.0)
    with serve_retriever(bm25, corpus_size=len(corpus), limits=limits) as server:
        stalled = _stall(server.url, 100_000)
        began = time.monotonic()
        client = HTTPRetriever(server.url, timeout=5, retries=0)
        for q in _queries(corpus, 5):
            t0 = time.monotonic()
            assert client.retrieve([q], 3) == bm25.retrieve([q], 3)
            assert time.monotonic() - t0 < 0.5  # answered at once, not after the stalled client's timeout
        assert time.monotonic() - began < 1.0
        closed = _closed_after(stalled) + (time.monotonic() - began)
        assert 0.8 <= closed < 3.0

        # trickling one header byte at a time does not extend the deadline either
        parts = urlsplit(server.url)
        trickle = socket.create_connection((parts.hostname, parts.port), timeout=10)
        began, closed_at = time.monotonic(), None
        trickle.sendall(b"POST /retrieve HTTP/1.1\r\nX-Slow: ")
        while closed_at is None and time.monotonic() - began < 5.0:
            try:
                trickle.sendall(b"a")
                readable, _, _ = select.select([trickle], [], [], 0.1)
                if readable and not trickle.recv(1):
                    closed_at = time.monotonic()
            except OSError:
                closed_at = time.monotonic()
        assert closed_at is not None and closed_at - began < 3.0
        stalled.close()
        trickle.close()
        assert client.retrieve(["capital"], 1)  # still serving


def test_oversized_body_gets_413_and_is_not_retried(bm25, corpus) -> None:
    with serve_retriever(bm25, corpus_size=len(corpus), limits=ServerLimits(max_body_bytes=1000)) as server:
        status, body = _post(server.url, {"queries": ["x" * 50] * 40})
        assert status == 413 and "over the limit" in body["error"]
        sleeps: list[float] = []
        client = HTTPRetriever(server.url, timeout=5, retries=3, backoff=0.01, sleep=sleeps.append)
        with pytest.raises(RequestRefused, match="413"):
            client.retrieve(["y" * 50] * 40, 3)
        assert sleeps == []  # a refusal is final
        assert _raw_post(server.url, b"{not json")[0] == 400
        assert client.retrieve(["capital"], 1)  # small requests still pass


def test_token_is_required_when_set(bm25, corpus, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with serve_retriever(bm25, corpus_size=len(corpus), token="s3cret") as server:
        status, body = _post(server.url, {"queries": ["capital"]})
        assert status == 401 and TOKEN_ENV in body["error"]
        assert _post(server.url, {"queries": ["capital"]}, {"Authorization": "Bearer wrong"})[0] == 401
        assert _post(server.url, {"queries": ["capital"]}, {"Authorization": "Bearer s3cret"})[0] == 200
        with pytest.raises(RequestRefused, match="401"):
            HTTPRetriever(server.url, timeout=5, retries=2).retrieve(["capital"], 1)
        assert HTTPRetriever(server.url, timeout=5, token="s3cret").retrieve(["capital"], 1)
        monkeypatch.setenv(TOKEN_ENV, "s3cret")
        client = HTTPRetriever(server.url, timeout=5)  # the token comes from the environment
        assert client.retrieve(["capital"], 2) == bm25.retrieve(["capital"], 2)
        client.check()
        with pytest.raises(RequestRefused):
            HTTPRetriever(server.url, timeout=5, token="nope").check()
        parts = urlsplit(server.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200  # health needs no token
        conn.close()


def test_topk_queries_and_answer_size_are_capped(bm25, corpus) -> None:
    queries, many = _queries(corpus, 4), _queries(corpus, 8)

    def size(qs: list[str]) -> int:  # the server's answer with scores, topk 2
        rows = [[{"document": {"id": p.doc_id, "contents": p.contents}, "score": p.score} for p in row]
                for row in bm25.retrieve(qs, 2)]
        return len(json.dumps({"result": rows}).encode())

    assert size(many) > size(queries) + 200
    limits = ServerLimits(max_topk=2, max_queries=8, max_response_bytes=size(queries) + 100)
    with serve_retriever(bm25, corpus_size=len(corpus), limits=limits) as server:
        status, body = _post(server.url, {"queries": queries, "topk": len(corpus), "return_scores": True})
        assert status == 200 and all(len(row) == 2 for row in body["result"])
        assert HTTPRetriever(server.url, timeout=5).retrieve(queries, 100) == bm25.retrieve(queries, 2)
        status, body = _post(server.url, {"queries": queries * 3})
        assert status == 400 and "at most 8 queries" in body["error"]
        status, body = _post(server.url, {"queries": many, "topk": 2, "return_scores": True})
        assert status == 400 and "over the limit" in body["error"]


def test_connections_over_the_limit_get_503(bm25, corpus) -> None:
    limits = ServerLimits(max_connections=2, read_timeout_s=5.0)
    with serve_retriever(bm25, corpus_size=len(corpus), limits=limits) as server:
        held = [_stall(server.url, 10) for _ in range(2)]
        time.sleep(0.2)  # both accepted and counted
        status, body = _post(server.url, {"queries": ["capital"]})
        assert status == 503 and "too many" in body["error"]
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while _post(server.url, {"queries": ["capital"]})[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_remote_hosts_need_an_explicit_opt_in(bm25, tmp_path: Path, monkeypatch, capsys) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("::")
    with pytest.raises(ValueError, match="allow_remote"):
        serve_retriever(bm25, host="0.0.0.0")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "0", "contents": '"Iron"\nIron is an element.'}) + "\n")
    with pytest.raises(SystemExit) as info:
        main_serve(["--host", "0.0.0.0", "--corpus", str(corpus)])
    assert info.value.code == 2 and "--allow-remote" in capsys.readouterr().err

    seen = {}

    class _Stub:
        url = "http://0.0.0.0:1/retrieve"

        def serve_forever(self) -> None:
            raise KeyboardInterrupt

        def close(self) -> None:
            pass

    def fake_serve(retriever, **kwargs):
        seen.update(kwargs)
        return _Stub()

    monkeypatch.setattr("sdar.envs.search.server.serve_retriever", fake_serve)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main_serve(["--host", "0.0.0.0", "--allow-remote", "--corpus", str(corpus), "--max-topk", "7"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "NO authentication" in err
    assert seen["allow_remote"] and seen["token"] is None and seen["limits"].max_topk == 7
    monkeypatch.setenv(TOKEN_ENV, "tok")
    assert main_serve(["--host", "0.0.0.0", "--allow-remote", "--corpus", str(corpus)]) == 0
    assert seen["token"] == "tok" and "bearer token" in capsys.readouterr().err


def test_env_retriever_url_makes_search_envs_use_the_server(bm25, corpus, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert EnvConfig().retriever_url is None
    with pytest.raises(ConfigError, match="retriever_url"):
        validate(RunConfig(env=EnvConfig(name="toy", retriever_url="http://127.0.0.1:1/retrieve")))
    with pytest.raises(ConfigError, match="retriever_url"):
        validate(RunConfig(env=EnvConfig(name="search", retriever_url="127.0.0.1:8000")))
    with serve_retriever(bm25, corpus_size=len(corpus)) as server:
        factory = make_env_factory("search", max_turns=4, retriever_url=server.url)
        env = factory()
        assert isinstance(env.retriever, HTTPRetriever) and env.retriever.url == server.url
        task = factory.questions[0]
        env.reset(task_id=task.id, seed=0)
        step = env.step(f"<search>{corpus[3].title}</search>")
        assert corpus[3].title in step.observation  # answered by the server's (smaller) corpus
    with pytest.raises(RetrieverError, match="sdar retriever serve"):
        make_env_factory("search", retriever_url=server.url)  # the server is gone: fail at start, not per search
