"""Search-QA retrievers: passages and formatting, retries, BM25, the /retrieve server and client, dense retrieval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sdar.envs.search.data import QAItem
from sdar.envs.search.env import SEARCH_FAILED_FEEDBACK, SearchQAEnv
from sdar.envs.search.retrievers import (
    BM25Retriever,
    HTTPRetriever,
    Passage,
    Retriever,
    RetrieverError,
    call_with_retries,
    format_information,
    passage_from_contents,
)
from sdar.envs.search.server import _build_parser, serve_retriever
from torchrun_launch import free_port

ROOT = Path(__file__).resolve().parents[1]

PASSAGES = [
    Passage("0", "Paris", "Paris is the capital and largest city of France."),
    Passage("1", "Berlin", "Berlin is the capital and largest city of Germany."),
    Passage("2", "Iron", "Iron is a chemical element with symbol Fe and atomic number 26."),
    Passage("3", "Rhine", "The Rhine is a river that flows through Germany and the Netherlands."),
]


def test_passage_contents_round_trip() -> None:
    p = PASSAGES[0]
    assert p.contents == '"Paris"\nParis is the capital and largest city of France.'
    assert passage_from_contents("0", p.contents) == p
    assert passage_from_contents("x", "Plain title\nline one\nline two", 1.5) == Passage("x", "Plain title",
                                                                                          "line one\nline two", 1.5)


def test_format_information_layout() -> None:
    text = format_information(PASSAGES[:2])
    assert text == ("\n<information>Doc 1(Title: Paris) Paris is the capital and largest city of France.\n"
                    "Doc 2(Title: Berlin) Berlin is the capital and largest city of Germany.\n</information>\n")
    assert format_information([]) == "\n<information>No passage matched the query.\n</information>\n"


def test_call_with_retries_backs_off_exponentially_then_raises() -> None:
    sleeps: list[float] = []
    calls = []

    def always_fails() -> None:
        calls.append(1)
        raise OSError("down")

    with pytest.raises(RetrieverError, match="after 3 attempt"):
        call_with_retries(always_fails, retries=2, backoff=0.5, sleep=sleeps.append)
    assert len(calls) == 3 and sleeps == [0.5, 1.0]

    outcomes = iter([OSError("once"), "ok"])

    def second_time_lucky() -> str:
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    sleeps.clear()
    assert call_with_retries(second_time_lucky, retries=5, backoff=0.25, sleep=sleeps.append) == "ok"
    assert sleeps == [0.25]
    with pytest.raises(ValueError):
        call_with_retries(lambda: 1, retries=-1, backoff=0.1)


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever(PASSAGES)


def test_bm25_retriever_ranks_and_limits(bm25: BM25Retriever) -> None:
    assert isinstance(bm25, Retriever)
    rows = bm25.retrieve(["river in Germany", "atomic number 26", "zzzz unknown"], 2)
    assert [p.title for p in rows[0]] == ["Rhine", "Berlin"]  # Rhine matches both terms, Berlin only "Germany"
    assert rows[0][0].score > rows[0][1].score > 0
    assert [p.title for p in rows[1]] == ["Iron"]  # the only passage with any of the terms
    assert rows[2] == []
    assert bm25.retrieve(["river in Germany"], 2) == rows[:1]  # deterministic
    with pytest.raises(ValueError):
        bm25.retrieve(["x"], 0)


def _post(url: str, payload: object) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_round_trip(bm25: BM25Retriever) -> None:
    with serve_retriever(bm25, port=0, topk=3, corpus_size=len(PASSAGES)) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/retrieve")
        client = HTTPRetriever(server.url, timeout=5, retries=0)
        queries = ["capital of Germany", "atomic number 26"]
        assert client.retrieve(queries, 2) == bm25.retrieve(queries, 2)  # titles, texts, ids and scores

        status, body = _post(server.url, {"queries": ["atomic number 26"]})  # Search-R1 form without scores
        assert status == 200
        assert body == {"result": [[{"id": "2", "contents": PASSAGES[2].contents}]]}
        status, body = _post(server.url, {"queries": ["capital"], "topk": 1, "return_scores": True})
        assert status == 200 and set(body["result"][0][0]) == {"document", "score"}
        assert len(body["result"][0]) == 1

        assert _post(server.url, {"queries": "not a list"})[0] == 400
        assert _post(server.url, {"queries": ["x"], "topk": 0})[0] == 400
        assert _post(server.url.replace("/retrieve", "/other"), {"queries": []})[0] == 404
        with urllib.request.urlopen(server.url.replace("/retrieve", "/health"), timeout=5) as resp:
            assert json.loads(resp.read()) == {"status": "ok", "passages": 4}



def test_unreachable_server_retries_then_env_reports_the_failure() -> None:
    sleeps: list[float] = []
    client = HTTPRetriever(f"http://127.0.0.1:{free_port()}/retrieve", timeout=1, retries=2, backoff=0.01,
                           sleep=sleeps.append)
    with pytest.raises(RetrieverError, match="sdar retriever serve"):
        client.retrieve(["anything"], 3)
    assert sleeps == [0.01, 0.02]

    sleeps.clear()
    env = SearchQAEnv(client, [QAItem("q", "Capital of France?", ("Paris",), "nq", "eval")], search_retries=1,
                      search_backoff=0.05, sleep=sleeps.append)
    env.reset(task_id="q", seed=0)
    r = env.step("<search>capital of France</search>")
    assert r.observation == SEARCH_FAILED_FEEDBACK and not (r.terminated or r.truncated)
    # two env attempts, each with the client's own three tries: client sleeps, env sleep, client sleeps
    assert sleeps == [0.01, 0.02, 0.05, 0.01, 0.02]


def test_serve_defaults_to_localhost() -> None:
    args = _build_parser().parse_args([])
    assert (args.host, args.port, args.retriever, args.topk) == ("127.0.0.1", 8000, "bm25", 3)


def test_main_serve_runs_as_a_process_and_stops_on_interrupt(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": p.doc_id, "contents": p.contents}) + "\n" for p in PASSAGES))
    port = free_port()
    code = "import sys; from sdar.envs.search.server import main_serve; sys.exit(main_serve(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "--corpus", str(corpus), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            # as when started with `nohup ... &`: the shell makes background processes ignore SIGINT
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        client = HTTPRetriever(f"http://127.0.0.1:{port}/retrieve", timeout=2, retries=0)
        deadline = time.monotonic() + 30
        while True:
            try:
                rows = client.retrieve(["chemical element"], 1)
                break
            except RetrieverError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the server did not come up within 30 s"
                time.sleep(0.2)
        assert [p.title for p in rows[0]] == ["Iron"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # generous: interpreter shutdown is slow on a loaded machine
        assert b"4 passages" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----- dense retrieval ---------------------------------------------------------------------------------------

DENSE_DOCS = [
    ("Paris", "Paris is the capital and most populous city of France."),
    ("Tokyo", "Tokyo is the capital of Japan and one of the largest cities in the world."),
    ("Photosynthesis", "Photosynthesis is how plants turn light, water and carbon dioxide into sugar."),
    ("Jupiter", "Jupiter is the fifth planet from the Sun and the largest in the Solar System."),
    ("Violin", "The violin is a wooden string instrument played with a bow."),
    ("Football", "Association football is a team sport played with a spherical ball between two teams of eleven."),
    ("Penicillin", "Penicillin is an antibiotic discovered by Alexander Fleming in 1928."),
    ("Mount Everest", "Mount Everest is the highest mountain above sea level, in the Himalayas."),
    ("Volcano", "A volcano is a rupture in a planet's crust through which lava and gases escape."),
    ("Coffee", "Coffee is a drink brewed from roasted coffee beans."),
    ("Chess", "Chess is a board game for two players on a checkered board of 64 squares."),
    ("Pyramids of Giza", "The pyramids of Giza are ancient tombs built for Egyptian pharaohs."),
    ("Honey bee", "Honey bees are insects that make honey and pollinate flowers."),
    ("Bicycle", "A bicycle is a pedal-driven vehicle with two wheels."),
    ("Shakespeare", "William Shakespeare was an English playwright who wrote Hamlet and Macbeth."),
    ("Electricity", "Electricity is the set of phenomena associated with moving electric charge."),
    ("Amazon River", "The Amazon River in South America is the largest river by discharge volume."),
    ("Internet", "The Internet is the global system of interconnected computer networks."),
    ("Vaccine", "A vaccine trains the immune system to recognise a pathogen."),
    ("Rainbow", "A rainbow is an optical effect caused by refraction of sunlight in water droplets."),
    ("Piano", "The piano is a keyboard instrument whose strings are struck by hammers."),
    ("Desert", "A desert is a barren area of land with little precipitation."),
    ("Moon", "The Moon is Earth's only natural satellite."),
    ("Bread", "Bread is a staple food made from flour and water, usually baked."),
    ("Olympic Games", "The Olympic Games are international sporting events held every four years."),
    ("Gold", "Gold is a chemical element with symbol Au, a bright yellow precious metal."),
    ("Tiger", "The tiger is the largest living cat species, with orange fur and black stripes."),
    ("Glacier", "A glacier is a persistent body of dense ice that moves under its own weight."),
    ("Democracy", "Democracy is a system of government in which power rests with the people."),
    ("Printing press", "The printing press, developed by Johannes Gutenberg, mechanised book production."),
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("faiss", reason="faiss-cpu is not installed: pip install 'sdar[search]'")
    from sdar.envs.search.dense import load_minilm_encoder

    return load_minilm_encoder()


class CountingEncoder:
    def __init__(self, inner) -> None:
        self.inner, self.texts = inner, 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.inner(texts)


def test_dense_retriever_on_a_tiny_corpus_with_cache(minilm, tmp_path: Path) -> None:
    from sdar.envs.search.dense import DenseRetriever

    passages = [Passage(str(i), t, x) for i, (t, x) in enumerate(DENSE_DOCS)]
    first = CountingEncoder(minilm)
    dense = DenseRetriever(passages, cache_dir=tmp_path, encoder=first)
    assert first.texts == 30 and dense.cache_path is not None and dense.cache_path.is_file()
    assert np.load(dense.cache_path).shape == (30, 384)
    rows = dense.retrieve(["Which city is the capital of France?", "who wrote Hamlet", "planet in the solar system"],
                          3)
    assert [r[0].title for r in rows] == ["Paris", "Shakespeare", "Jupiter"]
    assert all(len(r) == 3 and r[0].score >= r[1].score >= r[2].score for r in rows)
    assert rows[0][0].score <= 1.0 + 1e-5  # cosine similarity of unit vectors

    again = CountingEncoder(minilm)
    cached = DenseRetriever(passages, cache_dir=tmp_path, encoder=again)
    assert again.texts == 0  # passages come from the cache
    assert cached.retrieve(["capital of France"], 1)[0][0].title == "Paris" and again.texts == 1


def test_dense_cache_key_follows_the_corpus(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu is not installed: pip install 'sdar[search]'")
    from sdar.envs.search.dense import DenseRetriever

    vocab = ["paris", "berlin", "iron", "rhine", "river", "capital", "element"]

    def bag_of_words(texts: list[str]) -> np.ndarray:  # [N, 7] word counts: a tiny deterministic encoder
        return np.array([[t.lower().count(w) for w in vocab] for t in texts], dtype=np.float32)

    a = DenseRetriever(PASSAGES, cache_dir=tmp_path, encoder=bag_of_words, encoder_name="bow")
    b = DenseRetriever(PASSAGES[:3], cache_dir=tmp_path, encoder=bag_of_words, encoder_name="bow")
    assert a.cache_path != b.cache_path and len(list(tmp_path.glob("*.npy"))) == 2
    assert a.retrieve(["rhine river"], 1)[0][0].title == "Rhine"
    assert [p.title for p in a.retrieve(["element"], 4)[0]][0] == "Iron"
