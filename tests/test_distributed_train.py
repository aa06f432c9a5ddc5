"""The training loop under torchrun on 2 CPU processes (gloo, FSDP) against the same run in one process.

One module-scoped fixture launches ``torchrun --nproc-per-node 2`` once: a 2-step run (checkpoint every step, an
evaluation after step 1), then a resume of the same run folder up to step 3. Rollouts are made greedy in both the
2-rank run and the single-process reference, so both see the same episodes: GRPO groups and episode seeds do not
depend on the rank, and each rank rolls out whole groups.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from sdar.config import dump_yaml, load_config
from sdar.distributed import (
    DataParallel,
    combine_weighted,
    consolidate_sharded,
    load_run_checkpoint,
    resolve_strategy,
    rollout_weights,
    weighted_sums,
)
from sdar.learner.checkpoint import load_checkpoint, save_checkpoint
from sdar.records import PromptContext, Trajectory, Turn
from sdar.rollout.collect import CollectSettings, EpisodeRequest
from sdar.rollout.generator import SamplingParams
from sdar.stats import rollout_metrics
from torchrun_launch import read_metrics, torchrun_beside

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.yaml"
OVERRIDES = {
    "rollout.max_new_tokens": 8,
    "env.max_turns": 2,
    "total_steps": 2,
    "save_every": 1,
    "keep_checkpoints": 3,
    "eval_every": 2,
    "eval_tasks": 3,  # split 2 / 1 over the ranks
    "eval_temperature": 0.0,
    "algo.old_logprobs": "recompute",
    "algo.mismatch_correction": "tis",  # the importance weights go through both learners
    "optim.lr": 1e-2,  # large enough that step 1 and the evaluation see visibly different weights
    "log.sample_every": 0,
}

DRIVER = textwrap.dedent(
    """
    import dataclasses
    import logging
    import sys

    from sdar.rollout.collector import Collector

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    plain = Collector.train

    def greedy(self, step):
        s = self.train_settings
        s = dataclasses.replace(s, sampling=dataclasses.replace(s.sampling, temperature=0.0))
        return plain(dataclasses.replace(self, train_settings=s), step)

    Collector.train = greedy

    from sdar.commands.cli import cmd_train
    from sdar.distributed import DataParallel, finish

    cmd_train(["--config", sys.argv[1]])
    cmd_train(["--config", sys.argv[1], "--resume", "--total-steps", "3"])

    dp = DataParallel.from_env()  # an error on rank 1 only: both ranks raise instead of waiting
    try:
        with dp.together():
            if dp.rank == 1:
                raise ValueError("broken on rank 1")
        seen = "nothing"
    except Exception as exc:
        seen = f"{type(exc).__name__}: {exc}"
    with open(f"{sys.argv[2]}/together_rank{dp.rank}.txt", "w") as f:
        f.write(seen)
    finish(0)
    """
)


def _greedy_rollouts(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from sdar.rollout.collector import Collector

    plain = Collector.train

    def greedy(self, step):
        s = self.train_settings
        s = dataclasses.replace(s, sampling=dataclasses.replace(s.sampling, temperature=0.0))
        return plain(dataclasses.replace(self, train_settings=s), step)

    monkeypatch.setattr(Collector, "train", greedy)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("dist")
    cfg = load_config(SMOKE, overrides={**OVERRIDES, "out_dir": str(base / "two")})
    (base / "run.yaml").write_text(dump_yaml(cfg))
    (base / "driver.py").write_text(DRIVER)

    def reference() -> None:  # the same run in one process meanwhile
        from sdar.commands.train import train

        with pytest.MonkeyPatch.context() as mp:
            _greedy_rollouts(mp)
            train(load_config(SMOKE, overrides={**OVERRIDES, "out_dir": str(base / "one")}))

    code, log = torchrun_beside(base / "driver.py", [str(base / "run.yaml"), str(base)], base / "torchrun.log",
                                reference)
    return {"returncode": code, "log": log, "two": base / "two",
            "one": base / "one", "base": base}


def _ok(runs: dict) -> None:
    assert runs["returncode"] == 0, runs["log"][-8000:]


# --------------------------------------------------------------------------------------------- 2 ranks (torchrun)
def test_two_ranks_train_and_only_rank0_writes(runs):
    _ok(runs)
    out = runs["two"]
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [0, 1, 2]  # one line per step: rank 0 alone
    ckpt = out / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_000000", "step_000001", "step_000002"]
    assert (ckpt / "latest").read_text().strip() == "step_000002"
    for step in range(3):
        shards = ckpt / "sharded" / f"step_{step:06d}"
        assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                                            "learner_state.pt"]
    assert not [p for p in ckpt.rglob("*") if p.name.startswith(".tmp-")]
    assert (out / "config.yaml").is_file()
    first = read_metrics(out / "metrics.jsonl")[0]
    assert first["rollout/episodes"] == 4.0  # 2 episodes per rank, summed


def test_two_ranks_match_one_process(runs):
    _ok(runs)
    two, one = read_metrics(runs["two"] / "metrics.jsonl"), read_metrics(runs["one"] / "metrics.jsonl")
    for step in (0, 1):
        for key in ("loss/total", "train/grad_norm", "pg/clip_frac", "rollout/reward", "rollout/response_tokens",
                    "train/tokens"):
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-6), (step, key)
    assert two[0]["train/grad_norm"] > 1e-4 and two[0]["train/tokens"] > 0
    # the generator's own copy was refreshed after step 0: its log-probs are the trained policy's (stale: ~0.3 off)
    assert two[1]["mismatch/logprob_abs_diff_max"] < 1e-4
    evals = {k: v for k, v in one[1].items() if k.startswith("eval/")}
    assert evals and {k: two[1][k] for k in evals} == pytest.approx(evals)  # the panel split over the ranks

    state, _ = load_checkpoint(runs["one"] / "checkpoints" / "step_000001", restore_rng=False)
    want = state["model"]
    got = consolidate_sharded(runs["two"] / "checkpoints" / "step_000001")
    start = consolidate_sharded(runs["two"] / "checkpoints" / "step_000000")
    assert set(got) == set(want)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-5
    assert max(float((got[k] - start[k]).abs().max()) for k in want) > 1e-3  # the second update moved weights


def test_resume_from_the_sharded_checkpoint_continues_at_the_next_step(runs):
    _ok(runs)
    assert "resuming at step 2" in runs["log"]
    ckpt = runs["two"] / "checkpoints"
    state = json.loads((ckpt / "step_000002" / "state.json").read_text())
    assert state["step"] == 2 and state["extra"]["next_step"] == 3
    counters = torch.load(ckpt / "sharded" / "step_000002" / "learner_state.pt", weights_only=True)
    assert counters["train_steps"] == 3 and counters["optimizer_steps"] == 3  # 2 restored + 1 after the resume


def test_an_error_on_one_rank_is_raised_on_every_rank(runs):
    _ok(runs)
    assert (runs["base"] / "together_rank1.txt").read_text() == "ValueError: broken on rank 1"
    assert (runs["base"] / "together_rank0.txt").read_text() == (
        "RuntimeError: rank(s) [1] failed; their own logs show the error")


# ----------------------------------------------------------------------------------------- one process, no group
def test_strategy_resolution():
    assert resolve_strategy("auto", world_size=1, initialized=False, lora=True) == "local"
    assert resolve_strategy("auto", world_size=2, initialized=True, lora=False) == "fsdp"
    assert resolve_strategy("fsdp", world_size=1, initialized=True, lora=False) == "fsdp"
    with pytest.raises(ValueError, match="optim.strategy=local cannot"):
        resolve_strategy("local", world_size=2, initialized=True, lora=False)
    with pytest.raises(ValueError, match="launch with torchrun"):
        resolve_strategy("fsdp", world_size=1, initialized=False, lora=False)
    with pytest.raises(ValueError, match="LoRA"):
        resolve_strategy("auto", world_size=2, initialized=True, lora=True)


def test_fsdp_with_lora_is_a_config_error():
    from sdar.config import ConfigError

    with pytest.raises(ConfigError, match="optim.strategy=fsdp"):
        load_config(SMOKE, overrides={"optim.strategy": "fsdp", "model.lora_rank": 8})


def _requests(groups: int, size: int) -> list[EpisodeRequest]:
    from sdar.envs.base import TaskSpec

    return [EpisodeRequest(task=TaskSpec(task_id=f"t{g}", task_type="x"), seed=g, group_id=g, episode_id=g * size + k)
            for g in range(groups) for k in range(size)]


def test_ranks_get_whole_groups():
    reqs = _requests(3, 2)  # groups 0, 1, 2 of 2 episodes: rank 0 takes groups 0-1, rank 1 group 2
    assert [r.episode_id for r in DataParallel(0, 2).shard_requests(reqs, 2)] == [0, 1, 2, 3]
    assert [r.episode_id for r in DataParallel(1, 2).shard_requests(reqs, 2)] == [4, 5]
    assert DataParallel().shard_requests(reqs, 2) == reqs
    with pytest.raises(ValueError, match="tasks_per_step >= 4"):
        DataParallel(0, 4).shard_requests(reqs, 2)
    assert [len(DataParallel(r, 2).shard_panel(list(range(3)))) for r in (0, 1)] == [2, 1]


def test_rank_mixes_into_the_sampling_seed_except_on_rank0():
    s = CollectSettings(sampling=SamplingParams(seed=7))
    assert DataParallel(0, 2).settings(s) is s
    other = DataParallel(1, 2).settings(s)
    assert other.sampling.seed != 7 and other.sampling.seed == DataParallel(1, 2).settings(s).sampling.seed
    unseeded = CollectSettings()
    assert DataParallel(1, 2).settings(unseeded) is unseeded


def test_single_process_verbs_are_identities():
    dp = DataParallel()
    assert not dp.enabled and dp.is_main and dp.device("auto") is None
    assert dp.gather([1, 2]) == [1, 2] and dp.every(True) and not dp.every(False)
    assert dp.mean_metrics({"a": 1.5}) == {"a": 1.5}
    with pytest.raises(KeyError, match="boom"):
        with dp.together():
            raise KeyError("boom")


def _turn(valid: bool, reward: float = 0.0, tokens: int = 2) -> Turn:
    ctx = PromptContext(env_name="toy", goal="g", step=0, observation="o")
    return Turn(index=0, context=ctx, prompt_ids=(1,), response_ids=(5,) * tokens, response_logprobs=(-1.0,) * tokens,
                response_text="x", action="a", valid=valid, finish_reason="stop", reward=reward, observation="o",
                done=False)


def _traj(turns: list[Turn], won: bool, task_type: str) -> Trajectory:
    return Trajectory(task_id="t", task_type=task_type, group_id=0, episode_id=0, seed=0, turns=tuple(turns), won=won)


def test_rank_metrics_combine_into_the_metrics_of_all_episodes():
    # rank 0: one won "a" episode (2 valid turns of 2 tokens); rank 1: a lost "a" episode (1 invalid turn of 4 tokens)
    # and a lost "b" episode (1 valid turn). All episodes: success/a = 1/2, success/b = 0, invalid_ratio = 1/4,
    # response_tokens = (2+2+4+2)/4 = 2.5, success = 1/3, episodes = 3.
    rank0 = [_traj([_turn(True), _turn(True, reward=10.0)], True, "a")]
    rank1 = [_traj([_turn(False, tokens=4)], False, "a"), _traj([_turn(True)], False, "b")]
    parts = [weighted_sums(m, rollout_weights(t, m)) for t in (rank0, rank1) for m in [rollout_metrics(t, 0.1)]]
    total = {k: sum(p.get(k, 0.0) for p in parts) for k in set(parts[0]) | set(parts[1])}  # what all_reduce does
    got = combine_weighted(total)
    want = rollout_metrics(rank0 + rank1, 0.1)
    assert set(got) == set(want)
    assert got == pytest.approx(want)
    assert got["rollout/success/a"] == pytest.approx(0.5) and got["rollout/invalid_ratio"] == pytest.approx(0.25)
    assert got["rollout/response_tokens"] == pytest.approx(2.5) and got["rollout/episodes"] == 3.0


def test_a_sharded_checkpoint_is_refused_by_a_single_process_learner(tmp_path):
    from sdar.learner.local import LocalLearner
    from sdar.tiny import byte_tokenizer, tiny_model

    save_checkpoint(tmp_path, step=0, learner_state={"model": {}, "sharded_folder": "sharded/step_000000"},
                    extra={"next_step": 1})
    learner = LocalLearner(tiny_model(len(byte_tokenizer())))
    with pytest.raises(ValueError, match="sharded weights from a torchrun job"):
        load_run_checkpoint(learner, tmp_path, dp=DataParallel())
    assert load_run_checkpoint(learner, tmp_path / "none", dp=DataParallel()) is None
