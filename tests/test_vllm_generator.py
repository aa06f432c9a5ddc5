"""The vLLM rollout backend: output mapping and wiring (always run), and the generator contract on a real engine.

The real-engine tests need vLLM and are skipped (and reported as skipped) without it. On a CPU machine:
    scripts/make_vllm_cpu_venv.sh && .venv-vllm/bin/python -m pytest tests/test_vllm_generator.py
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import types
from pathlib import Path

import pytest
import torch

from sdar.rollout import vllm_engine
from sdar.rollout.generator import Sample, SamplingParams
from sdar.rollout.backends import build_generator
from sdar.rollout.hf import HFGenerator, truncated_logits
from sdar.rollout.vllm_engine import (
    VLLMGenerator,
    VLLMNotInstalledError,
    import_vllm,
    row_seed,
    sample_from_completion,
    vllm_sampling_kwargs,
)
from sdar.tiny import byte_tokenizer, tiny_model

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"
SKIP_REASON = ("vllm is not installed here: run scripts/make_vllm_cpu_venv.sh and use "
               ".venv-vllm/bin/python -m pytest tests/test_vllm_generator.py")


def test_one_process_engine_gets_no_launcher_arguments():
    # under torchrun (tests/test_vllm_torchrun.py) the engine joins the job as an external-launcher replica
    assert not torch.distributed.is_initialized()
    assert vllm_engine.torchrun_engine_kwargs() == {}


# ------------------------------------------------------------------------------------------- fakes (no vLLM needed)
@dataclasses.dataclass
class FakeLogprob:
    logprob: float


@dataclasses.dataclass
class FakeCompletion:
    token_ids: list[int]
    logprobs: list[dict[int, object]] | None
    finish_reason: str | None


class FakeLLM:
    """Records calls like ``vllm.LLM``; each prompt gets its own length as its only token, log-prob -0.5."""

    def __init__(self, logprobs_mode: str = "processed_logprobs") -> None:
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(logprobs_mode=logprobs_mode))
        self.calls: list[tuple] = []

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append(("generate", prompts, params))
        return [types.SimpleNamespace(outputs=[FakeCompletion([len(p["prompt_token_ids"])],
                                                              [{len(p["prompt_token_ids"]): FakeLogprob(-0.5)}],
                                                              "length")]) for p in prompts]

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        kwargs["weights_iterator"] = [name for name, _ in kwargs["weights_iterator"]]
        self.calls.append(("collective_rpc", method, kwargs))
        return [None]

    def apply_model(self, fn):
        self.calls.append(("apply_model", fn))
        return [fn(types.SimpleNamespace())]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))
        return True

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up",))
        return True


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` module: ``SamplingParams`` keeps its keyword arguments, ``TokensPrompt`` is a dict."""
    mod = types.ModuleType("vllm")
    mod.__version__ = "fake"
    mod.SamplingParams = lambda **kw: kw
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    mod.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return mod


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError


def test_missing_vllm_error_names_both_install_routes(no_vllm, tmp_path):
    with pytest.raises(VLLMNotInstalledError) as info:
        import_vllm()
    msg = str(info.value)
    assert "pip install 'sdar[vllm]'" in msg and "scripts/make_vllm_cpu_venv.sh" in msg and ".venv-vllm" in msg
    assert isinstance(info.value, ImportError)
    with pytest.raises(VLLMNotInstalledError, match="make_vllm_cpu_venv"):
        VLLMGenerator.from_model_dir(tmp_path)


def test_runtime_with_vllm_backend_reports_the_install_hint(no_vllm, tmp_path):
    from sdar.config import load_config
    from sdar.runtime import build

    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path)})
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, backend="vllm"))
    with pytest.raises(VLLMNotInstalledError, match=r"sdar\[vllm\]"):
        build(cfg)


def test_build_generator_hf_shares_the_policy_and_rejects_unknown_backends():
    from sdar.config import load_config

    cfg = load_config(SMOKE)
    tok = byte_tokenizer()
    policy = tiny_model(len(tok))
    gen = build_generator("hf", policy, tok, batch_size=cfg.rollout.batch_size)
    assert isinstance(gen, HFGenerator) and gen.model is policy and gen.batch_size == cfg.rollout.batch_size
    with pytest.raises(ValueError, match="'hf' or 'vllm'"):
        build_generator("sglang", policy, tok)


def test_sample_from_completion_maps_tokens_logprobs_and_finish():
    s = sample_from_completion(FakeCompletion([5, 7], [{5: FakeLogprob(-0.25)}, {7: FakeLogprob(-1.5)}], "stop"))
    assert s == Sample(token_ids=(5, 7), logprobs=(-0.25, -1.5), finish_reason="stop")
    # plain floats are accepted too; extra (top-k) entries are ignored, the sampled id's value is used
    s = sample_from_completion(FakeCompletion([3], [{9: -0.1, 3: -2.0}], "length"))
    assert s == Sample(token_ids=(3,), logprobs=(-2.0,), finish_reason="length")
    with pytest.raises(ValueError, match="finish_reason='abort'"):
        sample_from_completion(FakeCompletion([3], [{3: -2.0}], "abort"))
    with pytest.raises(ValueError, match="logprobs=0"):
        sample_from_completion(FakeCompletion([3], None, "stop"))
    with pytest.raises(ValueError, match="no log-prob for sampled token 3"):
        sample_from_completion(FakeCompletion([3], [{4: -2.0}], "stop"))
    with pytest.raises(ValueError, match="1 log-prob positions for 2 tokens"):
        sample_from_completion(FakeCompletion([3, 4], [{3: -2.0}], "stop"))


def test_sampling_kwargs_follow_the_params():
    params = SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=5, stop=("</a>", "\n"), seed=1)
    kw = vllm_sampling_kwargs(params, seed=123)
    assert kw == {"n": 1, "max_tokens": 9, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 123,
                  "stop": ["</a>", "\n"], "include_stop_str_in_output": True, "logprobs": 0}
    greedy = vllm_sampling_kwargs(SamplingParams(temperature=0.0), seed=None)
    assert greedy["temperature"] == 0.0 and greedy["seed"] is None and greedy["stop"] == []


def test_row_seeds_are_deterministic_distinct_and_63_bit():
    seeds = [row_seed(s, r) for s in range(20) for r in range(20)]
    assert len(set(seeds)) == 400  # seed s row r+1 is not seed s+1 row r: rows of consecutive calls don't repeat
    assert all(0 <= x < 2**63 for x in seeds)
    assert row_seed(7, 3) == row_seed(7, 3)


def test_generate_sends_token_prompts_with_a_seed_per_row(fake_vllm):
    llm = FakeLLM()
    gen = VLLMGenerator(llm)
    out = gen.generate([[1, 2, 3], [4], [1, 2, 3]], SamplingParams(max_new_tokens=4, seed=11))
    assert out == [Sample((3,), (-0.5,), "length"), Sample((1,), (-0.5,), "length"), Sample((3,), (-0.5,), "length")]
    _, prompts, params = llm.calls[0]
    assert [p["prompt_token_ids"] for p in prompts] == [[1, 2, 3], [4], [1, 2, 3]]
    assert [p["seed"] for p in params] == [row_seed(11, 0), row_seed(11, 1), row_seed(11, 2)]
    assert all(p["logprobs"] == 0 and p["max_tokens"] == 4 for p in params)
    gen.generate([[1]], SamplingParams(max_new_tokens=4))
    assert llm.calls[1][2][0]["seed"] is None
    assert gen.generate([], SamplingParams()) == []
    with pytest.raises(ValueError, match="at least one token"):
        gen.generate([[1], []], SamplingParams())


def test_row_keys_seed_each_row_by_its_key_not_its_position(fake_vllm):
    llm = FakeLLM()
    gen = VLLMGenerator(llm)
    gen.generate([[1], [2], [3]], SamplingParams(seed=5, row_keys=(10, 11, 12)))  # one process, all episodes
    gen.generate([[3]], SamplingParams(seed=5, row_keys=(12,)))  # the same episode alone (another rank's call)
    assert [p["seed"] for p in llm.calls[0][2]] == [row_seed(5, 10), row_seed(5, 11), row_seed(5, 12)]
    assert llm.calls[1][2][0]["seed"] == row_seed(5, 12)
    assert vllm_engine.row_seeds(SamplingParams(seed=5), 2) == [row_seed(5, 0), row_seed(5, 1)]
    assert vllm_engine.row_seeds(SamplingParams(row_keys=(1, 2)), 2) == [None, None]
    with pytest.raises(ValueError, match="2 keys for 3 prompts"):
        vllm_engine.row_seeds(SamplingParams(seed=1, row_keys=(1, 2)), 3)


def test_engine_with_raw_logprobs_is_refused():
    with pytest.raises(ValueError, match="processed_logprobs"):
        VLLMGenerator(FakeLLM(logprobs_mode="raw_logprobs"))


def test_load_weights_reloads_checkpoint_names_in_place_then_clears_the_prefix_cache():
    llm = FakeLLM()
    gen = VLLMGenerator(llm)
    w = torch.ones(2, requires_grad=True)
    gen.load_weights(iter([("model.a.weight", w), ("lm_head.weight", torch.zeros(1))]))
    assert [c[0] for c in llm.calls] == ["collective_rpc", "apply_model", "reset_prefix_cache"]
    assert llm.calls[1][1] is vllm_engine.retie_output_head
    assert llm.calls[0][1:] == ("reload_weights", {"weights_iterator": ["model.a.weight", "lm_head.weight"],
                                                   "is_checkpoint_format": True})


def test_load_weights_hands_the_engine_a_lazy_stream():
    # the engine's loader pulls one tensor at a time: nothing is read before it asks (a sharded learner gathers
    # each tensor only then), and each arrives detached
    pulled: list[str] = []
    seen: list[tuple[str, bool, list[str]]] = []

    def source():
        for name in ("a", "b", "c"):
            pulled.append(name)
            yield name, torch.ones(1, requires_grad=True)

    class Loader(FakeLLM):
        def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
            stream = kwargs["weights_iterator"]
            assert pulled == [] and not isinstance(stream, (list, tuple))
            for name, tensor in stream:
                seen.append((name, tensor.requires_grad, list(pulled)))
            return [None]

    VLLMGenerator(Loader()).load_weights(source())
    assert seen == [("a", False, ["a"]), ("b", False, ["a", "b"]), ("c", False, ["a", "b", "c"])]


def test_retie_output_head_points_a_tied_head_at_the_embedding_and_reprocesses_it():
    processed = []
    embed = types.SimpleNamespace(weight=torch.nn.Parameter(torch.ones(3, 2)))
    head = types.SimpleNamespace(weight=torch.nn.Parameter(torch.zeros(3, 2)),
                                 quant_method=types.SimpleNamespace(process_weights_after_loading=processed.append))
    model = types.SimpleNamespace(config=types.SimpleNamespace(tie_word_embeddings=True), lm_head=head,
                                  model=types.SimpleNamespace(embed_tokens=embed))
    assert vllm_engine.retie_output_head(model)
    assert head.weight is embed.weight and processed == [head]
    untied = types.SimpleNamespace(config=types.SimpleNamespace(tie_word_embeddings=False), lm_head=head,
                                   model=types.SimpleNamespace(embed_tokens=embed))
    assert not vllm_engine.retie_output_head(untied) and processed == [head]
    assert not vllm_engine.retie_output_head(types.SimpleNamespace())


def test_engine_start_up_leaves_rngs_threads_and_environment_as_they_were(monkeypatch):
    import numpy as np

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    py, npy = random.getstate(), np.random.get_state()
    with vllm_engine._guard_process_state({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}):
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        torch.manual_seed(0), random.seed(0), np.random.seed(0)  # what an in-process start-up does
        torch.set_num_threads = lambda n: None
    assert torch.set_num_threads is set_threads and torch.get_num_threads() == threads
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ
    assert random.getstate() == py and np.array_equal(np.random.get_state()[1], npy[1])
    assert torch.equal(torch.rand(3), expected)


def test_sleep_and_wake_pass_through_only_with_sleep_mode(fake_vllm, caplog):
    llm = FakeLLM()
    off = VLLMGenerator(llm)
    with caplog.at_level("DEBUG", logger=vllm_engine.__name__):
        off.sleep()
        off.wake_up()
    assert llm.calls == [] and not off.asleep
    assert "sleep mode is off" in caplog.text

    on = VLLMGenerator(llm, sleep_enabled=True)
    on.sleep(level=2)
    assert on.asleep and llm.calls == [("sleep", 2)]
    on.sleep()  # already asleep: nothing more
    on.generate([[1]], SamplingParams(max_new_tokens=1))  # wakes the engine first
    assert [c[0] for c in llm.calls] == ["sleep", "wake_up", "generate"] and not on.asleep
    on.sleep()
    on.load_weights([("x", torch.zeros(1))])
    assert [c[0] for c in llm.calls[-5:]] == ["sleep", "wake_up", "collective_rpc", "apply_model", "reset_prefix_cache"]


def test_tiny_random_is_written_to_a_loadable_folder():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdar.models import TINY_RANDOM, load_model

    path, tmp = vllm_engine._engine_source(TINY_RANDOM, "float32")
    assert tmp is not None and Path(path, "config.json").is_file() and Path(path, "tokenizer.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    for (name, a), b in zip(load_model(TINY_RANDOM, dtype="float32").state_dict().items(),
                            reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert AutoTokenizer.from_pretrained(path)("hi")["input_ids"] == byte_tokenizer()("hi")["input_ids"]
    tmp.cleanup()
    folder, none = vllm_engine._engine_source(str(Path(path).parent), "float32")
    assert folder == str(Path(path).parent) and none is None


# ------------------------------------------------------------------------------------------- the real engine
# A 2-layer Qwen2-style model with hidden size 64 (head size 32: the smallest the CPU attention kernels take).
HIDDEN = 64
PROMPTS_TEXT = ["hello there", "hi", "a much longer prompt, with commas and more words"]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def hf_models(tok):
    """Seed-0 and seed-1 random models, and a 'repeat the last token' model (attention/MLP outputs zeroed)."""
    m0, m1 = tiny_model(len(tok), hidden_size=HIDDEN, seed=0), tiny_model(len(tok), hidden_size=HIDDEN, seed=1)
    rep = tiny_model(len(tok), hidden_size=HIDDEN, seed=0)
    with torch.no_grad():
        for layer in rep.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return {"seed0": m0, "seed1": m1, "repeat": rep}


@pytest.fixture(scope="module")
def engine(tok, hf_models, tmp_path_factory):
    pytest.importorskip("vllm", reason=SKIP_REASON)
    folder = tmp_path_factory.mktemp("tiny-vllm")
    hf_models["seed0"].save_pretrained(folder)
    tok.save_pretrained(folder)
    set_threads, rng, py = torch.set_num_threads, torch.random.get_rng_state(), random.getstate()
    gen = VLLMGenerator.from_model_dir(folder, dtype="float32", seed=123, max_model_len=512, kv_cache_gib=0.25)
    # the in-process start-up's thread-control replacement and global reseeding were undone
    assert torch.set_num_threads is set_threads
    assert torch.equal(torch.random.get_rng_state(), rng) and random.getstate() == py
    return gen


@pytest.fixture
def weights(engine, hf_models):
    """Load one of ``hf_models`` into the engine; the seed-0 weights are put back afterwards."""
    def load(name: str):
        engine.load_weights(hf_models[name].named_parameters())
        return hf_models[name]

    yield load
    engine.load_weights(hf_models["seed0"].state_dict().items())


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def scaled_logits(model, prompt, response, temperature: float) -> torch.Tensor:
    """[len(response), V] logits / temperature predicting each response token, from one teacher-forced forward."""
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(response)])).logits[0].float()
    return logits[len(prompt) - 1: len(prompt) - 1 + len(response)] / temperature


def teacher_forced(model, prompt, response, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    z = truncated_logits(scaled_logits(model, prompt, response, 1.0), temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.log_softmax(z, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_teacher_forced(engine, tok, hf_models, temperature):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT]
    samples = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=temperature, seed=3))
    assert len(samples) == 3
    for p, s in zip(prompts, samples):
        assert len(s.token_ids) == len(s.logprobs) >= 1
        expected = teacher_forced(hf_models["seed0"], p, s.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(s.logprobs), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.3), (20, 0.5)])
def test_truncated_sampling_logprobs_are_renormalised(engine, tok, hf_models, top_k, top_p):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT[:2]]
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_k=top_k, top_p=top_p, seed=0)
    for p, s in zip(prompts, engine.generate(prompts, params)):
        expected = teacher_forced(hf_models["seed0"], p, s.token_ids, 0.9, top_k, top_p)
        torch.testing.assert_close(torch.tensor(s.logprobs), expected, atol=1e-4, rtol=0)
        full = torch.log_softmax(scaled_logits(hf_models["seed0"], p, s.token_ids, 0.9), -1)
        full = full.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
        assert all(lp > f for lp, f in zip(s.logprobs, full.tolist()))  # truncation raised every sampled log-prob


def test_seeds_reproduce_and_identical_prompts_differ(engine, tok):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT]
    a = engine.generate(prompts, SamplingParams(max_new_tokens=10, seed=7))
    b = engine.generate(prompts, SamplingParams(max_new_tokens=10, seed=7))
    c = engine.generate(prompts, SamplingParams(max_new_tokens=10, seed=8))
    assert a == b
    assert [s.token_ids for s in a] != [s.token_ids for s in c]
    group = engine.generate([prompts[0]] * 4, SamplingParams(max_new_tokens=10, seed=7))
    assert len({s.token_ids for s in group}) == 4  # a GRPO group of one prompt gets distinct samples
    assert group[0] == a[0]  # row 0 of a call does not depend on the rows after it


def test_greedy_is_argmax_with_temperature_one_logprobs_like_hf(engine, tok, hf_models):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT]
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    a = engine.generate(prompts, greedy)
    assert engine.generate(prompts, dataclasses.replace(greedy, seed=123)) == a
    hf = HFGenerator(hf_models["seed0"], tok).generate(prompts, greedy)
    for p, s, h in zip(prompts, a, hf):
        assert s.token_ids == h.token_ids
        assert s.token_ids == tuple(scaled_logits(hf_models["seed0"], p, s.token_ids, 1.0).argmax(-1).tolist())
        torch.testing.assert_close(torch.tensor(s.logprobs), teacher_forced(hf_models["seed0"], p, s.token_ids),
                                   atol=1e-4, rtol=0)


def test_max_new_tokens_gives_length_finish(engine, tok):
    prompts = [ids(tok, t) for t in PROMPTS_TEXT]
    for n in (1, 5):
        for s in engine.generate(prompts, SamplingParams(max_new_tokens=n, temperature=0.0)):
            assert len(s.token_ids) <= n
            if tok.eos_token_id not in s.token_ids:
                assert len(s.token_ids) == n and s.finish_reason == "length"


def test_stop_strings_and_eos_end_rows_with_the_completing_token(engine, tok, weights):
    model = weights("repeat")
    prompt = ids(tok, "say it q")
    q = ids(tok, "q")[0]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    assert HFGenerator(model, tok).generate([prompt], greedy)[0].token_ids == (q,) * 6  # the model repeats "q"
    s = engine.generate([prompt], greedy)[0]
    assert s.token_ids == (q,) * 6 and s.finish_reason == "length"
    s = engine.generate([prompt], dataclasses.replace(greedy, stop=("qqq",)))[0]
    assert tok.decode(s.token_ids) == "qqq" and s.finish_reason == "stop"
    torch.testing.assert_close(torch.tensor(s.logprobs), teacher_forced(model, prompt, s.token_ids), atol=1e-4,
                               rtol=0)
    eos = tok.eos_token_id
    s = engine.generate([prompt + [eos]], greedy)[0]  # the model repeats eos: the row ends at once, eos kept
    assert s.token_ids == (eos,) and s.finish_reason == "stop"
    assert math.isclose(s.logprobs[0], float(teacher_forced(model, prompt + [eos], [eos])[0]), abs_tol=1e-4)


def test_load_weights_changes_the_output_and_clears_the_prefix_cache(engine, tok, hf_models, weights):
    long_prompt = ids(tok, "a long shared prompt " * 12)  # several full KV blocks: prefix-cache hits if not cleared
    prompts = [long_prompt, ids(tok, "hi")]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    before = engine.generate(prompts, greedy)
    model = weights("seed1")
    after = engine.generate(prompts, greedy)
    expected = HFGenerator(model, tok).generate(prompts, greedy)
    assert [s.token_ids for s in after] == [s.token_ids for s in expected]
    for p, s, b in zip(prompts, after, before):
        # exact under the new weights (with stale prefix-cache KV the long prompt's log-probs would be off) ...
        torch.testing.assert_close(torch.tensor(s.logprobs), teacher_forced(model, p, s.token_ids), atol=1e-4, rtol=0)
        # ... and not those of the old weights (both random models mostly repeat a token, so compare log-probs)
        assert max(abs(x - y) for x, y in zip(s.logprobs, b.logprobs)) > 1e-2


def test_sleep_and_wake_are_noops_on_cpu(engine, tok):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU behaviour (no sleep mode)")
    prompts = [ids(tok, "hi")]
    greedy = SamplingParams(max_new_tokens=4, temperature=0.0)
    before = engine.generate(prompts, greedy)
    engine.sleep()
    assert not engine.sleep_enabled and not engine.asleep
    engine.wake_up()
    assert engine.generate(prompts, greedy) == before


def test_a_seeded_call_larger_than_the_batch_token_budget_samples_every_row_as_alone(engine, tok):
    # 12 prompts x 400 tokens exceed one scheduler step's token budget: on CPUs the engine prefills whole prompts
    # (a chunked prefill would rewind the seeded rows' generators, which CPU generators cannot do)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 250, (400,), generator=g).tolist() for _ in range(12)]
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=5, row_keys=tuple(range(100, 112)))
    together = engine.generate(prompts, params)
    assert len(together) == 12
    alone = engine.generate(prompts[7:8], dataclasses.replace(params, row_keys=(107,)))
    assert alone[0] == together[7]
