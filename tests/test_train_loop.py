"""The whole training loop on the tiny random model and the built-in game: every method, resume, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sdar.config import load_config
from sdar.commands.demo import run_report
from sdar.metrics import read_metrics
from sdar.learner.checkpoint import latest_checkpoint, load_checkpoint
from sdar.commands.train import train

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.yaml"


def smoke_cfg(tmp_path: Path, **overrides):
    base = {"out_dir": str(tmp_path / "run"), "log.sample_every": 0}
    base.update(overrides)
    return load_config(SMOKE, overrides=base)


@pytest.mark.parametrize("method", ["grpo", "skill_grpo", "opsd", "grpo_opsd", "skill_sd", "rlsd", "sdar"])
def test_every_method_runs_a_step(tmp_path, method):
    source = "skills" if method == "skill_grpo" else "expert_plan"
    extra = {"rollout.max_prompt_tokens": 6000, "teacher.max_prompt_tokens": 8000} if method == "skill_grpo" else {}
    cfg = smoke_cfg(tmp_path, **{"algo.method": method, "teacher.source": source, "total_steps": 1, **extra})
    last = train(cfg)
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert len(rows) == 1
    for key in ("rollout/reward", "rollout/success", "rollout/episode_len", "rollout/invalid_ratio", "train/grad_norm",
                "train/lr", "timing/rollout_s", "timing/update_s", "perf/tokens_per_s", "entropy/entropy"):
        assert key in last, f"{key} missing for {method}"
    assert all(math.isfinite(v) for v in last.values() if isinstance(v, float))
    teacher_methods = {"opsd", "grpo_opsd", "skill_sd", "rlsd", "sdar"}
    assert ("sdar/gap_pre_mean" in last) == (method in teacher_methods)
    if method in {"sdar", "opsd", "grpo_opsd"}:
        assert 0.0 < last["sdar/gate_mean"] < 1.0 and "sdar/gate_active_ratio" in last
    if method in teacher_methods:  # gap diagnostics and the saved Δ sample for the histogram
        assert "sdar/gap_by_pos/q1" in last and "sdar/gap_by_pos/q4" in last
        lines = (Path(cfg.out_dir) / "delta_samples.jsonl").read_text().splitlines()
        saved = json.loads(lines[0])
        assert len(lines) == 1 and saved["step"] == 0 and 0 < len(saved["delta"]) <= 256
    else:
        assert not (Path(cfg.out_dir) / "delta_samples.jsonl").exists()
    if method == "grpo_opsd":
        assert last["sdar/gate_mean"] == pytest.approx(0.5)
    if method == "skill_grpo":
        assert last["skills/count"] > 0
    if method == "rlsd":  # the first step is the reference's step 1 of its 100-step linear warm-down
        assert last["rlsd/lambda"] == pytest.approx(0.495)
    assert ("sdar/teacher_history_dropped" in last) == (method in teacher_methods)
    assert latest_checkpoint(Path(cfg.out_dir) / "checkpoints") is not None


def test_rlsd_lambda_of_the_first_two_steps_follows_the_reference(tmp_path):
    # the reference counts training steps from 1: lambda = 0.5 (1 - 1/100), then 0.5 (1 - 2/100)
    cfg = smoke_cfg(tmp_path, **{"algo.method": "rlsd", "total_steps": 2})
    train(cfg)
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert [row["rlsd/lambda"] for row in rows] == pytest.approx([0.495, 0.49])


def test_keyword_skills_found_by_the_goal_reach_the_teacher_and_the_metrics(tmp_path):
    skills = tmp_path / "skills"
    skills.mkdir()
    (skills / "general_skills.md").write_text("1. Read the goal first.\n")
    (skills / "heating.md").write_text("1. Heat the object before placing it.\n")
    (skills / "skill_mapping.json").write_text(json.dumps({
        "general": ["general_skills.md"], "skill_files": {"heating": "heating.md"},
        "task_to_skill": {"some_other_task": "heating"}, "task_keywords": {"heating": ["hot"]},
    }))
    cfg = smoke_cfg(tmp_path, **{"teacher.source": "skills", "teacher.skills_dir": str(skills), "total_steps": 1,
                                 "env.task_types": ["pick_heat_then_place"]})
    last = train(cfg)
    assert last["skills/selected/heating"] == 1.0 and last["skills/none"] == 0.0


def test_training_changes_every_parameter(tmp_path):
    cfg = smoke_cfg(tmp_path, **{"total_steps": 1, "optim.lr": 1e-2})
    from sdar.models import load_model

    before = {k: v.clone() for k, v in load_model("tiny-random").state_dict().items()}
    train(cfg)
    state, _ = load_checkpoint(latest_checkpoint(Path(cfg.out_dir) / "checkpoints"))
    changed = [k for k, v in before.items() if not torch.equal(v, state["model"][k])]
    assert len(changed) == len(before), set(before) - set(changed)


def _final_params(out_dir: Path) -> dict[str, torch.Tensor]:
    state, _ = load_checkpoint(latest_checkpoint(out_dir / "checkpoints"), restore_rng=False)
    return state["model"]


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = smoke_cfg(tmp_path / "a", **{"total_steps": 3, "save_every": 1})
    train(full)
    part = smoke_cfg(tmp_path / "b", **{"total_steps": 2, "save_every": 1})
    train(part)
    resumed = smoke_cfg(tmp_path / "b", **{"total_steps": 3, "save_every": 1, "resume": True})
    train(resumed)
    rows_a = read_metrics(Path(full.out_dir) / "metrics.jsonl")
    rows_b = read_metrics(Path(resumed.out_dir) / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == [0, 1, 2]
    for key in ("rollout/reward", "train/loss", "train/grad_norm", "sdar/gate_mean", "rollout/response_tokens"):
        assert rows_b[2][key] == pytest.approx(rows_a[2][key], rel=1e-5, abs=1e-7), key
    pa, pb = _final_params(Path(full.out_dir)), _final_params(Path(resumed.out_dir))
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=1e-6)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    cfg = smoke_cfg(tmp_path, **{"total_steps": 1, "resume": True})
    train(cfg)
    assert [r["step"] for r in read_metrics(Path(cfg.out_dir) / "metrics.jsonl")] == [0]


def test_all_invalid_turns_give_penalties_not_a_crash(tmp_path):
    # the random model never writes the <think>/<action> format: every turn is invalid
    cfg = smoke_cfg(tmp_path, **{"total_steps": 1, "env.invalid_penalty": 0.5})
    last = train(cfg)
    assert last["rollout/invalid_ratio"] == 1.0
    assert last["rollout/reward"] == pytest.approx(-0.5 * last["rollout/episode_len"])
    # every episode of a group has the same return: advantages are all zero and nothing is NaN
    assert last["pg/pg_loss"] == 0.0
    assert math.isfinite(last["train/loss"])


def test_evaluation_runs_on_a_fixed_panel(tmp_path):
    cfg = smoke_cfg(tmp_path, **{"total_steps": 2, "eval_every": 1, "eval_tasks": 3})
    train(cfg)
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert all(r["eval/episodes"] == 3.0 for r in rows)
    assert rows[0]["eval/response_tokens"] == pytest.approx(rows[0]["eval/response_tokens"])


def test_report_summarises_the_run(tmp_path):
    cfg = smoke_cfg(tmp_path, **{"total_steps": 2})
    train(cfg)
    text = run_report(cfg, 12.0)
    assert "steps trained        : 2" in text and "teacher-student gap" in text and str(cfg.out_dir) in text


def test_config_is_written_next_to_the_run(tmp_path):
    cfg = smoke_cfg(tmp_path, **{"total_steps": 1})
    train(cfg)
    assert "method: sdar" in (Path(cfg.out_dir) / "config.yaml").read_text()
    json.loads((Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()[0])


def test_environment_workers_give_the_same_run_as_in_process(tmp_path):
    a = smoke_cfg(tmp_path / "a", **{"total_steps": 1})
    b = smoke_cfg(tmp_path / "b", **{"total_steps": 1, "env.num_workers": 2})
    ra, rb = train(a), train(b)
    for key in ("rollout/reward", "rollout/episode_len", "train/loss", "sdar/gate_mean"):
        assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), key


def test_spread_rows_covers_the_batch_evenly():
    from sdar.scoring import spread_rows

    assert spread_rows(10, 3) == [0, 4, 9] or spread_rows(10, 3) == [0, 5, 9]
    assert spread_rows(5, 8) == [0, 1, 2, 3, 4]
    assert spread_rows(7, 1) == [0]
    assert spread_rows(7, 0) == [] and spread_rows(0, 4) == []


def test_sampler_vs_learner_logprobs_are_measured_each_step(tmp_path):
    # fp32, the generator is the policy: the old log-probs come from the rollout and a sample of rows is re-scored
    cfg = smoke_cfg(tmp_path, **{"algo.method": "grpo", "total_steps": 2, "algo.logprob_check_rows": 4})
    train(cfg)
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    for row in rows:
        assert 0 < row["rollout/logprob_diff_tokens"]
        assert 0 <= row["rollout/logprob_diff_mean"] <= row["rollout/logprob_diff_p99"] <= row["rollout/logprob_diff_max"]
        assert row["rollout/logprob_diff_max"] < 1e-3  # same weights, same fp32 kernels: agreement to rounding
    off = smoke_cfg(tmp_path / "off", **{"algo.method": "grpo", "total_steps": 1, "algo.logprob_check_rows": 0})
    train(off)
    assert "rollout/logprob_diff_mean" not in read_metrics(Path(off.out_dir) / "metrics.jsonl")[0]
    # recomputed old log-probs: every row is measured
    rec = smoke_cfg(tmp_path / "rec", **{"algo.method": "grpo", "total_steps": 1, "algo.old_logprobs": "recompute"})
    train(rec)
    assert read_metrics(Path(rec.out_dir) / "metrics.jsonl")[0]["rollout/logprob_diff_tokens"] > 0


def test_auto_switches_to_recompute_when_the_sampler_disagrees(tmp_path, caplog):
    # a tolerance below the rounding difference stands in for a sampler that disagrees with the learner
    cfg = smoke_cfg(tmp_path, **{"algo.method": "grpo", "total_steps": 2, "algo.logprob_tolerance": 1e-12,
                                 "algo.logprob_check_rows": 64})
    with caplog.at_level("WARNING"):
        train(cfg)
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert rows[0]["rollout/logprob_diff_p99"] > 1e-12, "needs some rounding difference to trigger"
    assert "mismatch/logprob_abs_diff_mean" not in rows[0]  # step 0: still the rollout's log-probs
    assert "mismatch/logprob_abs_diff_mean" in rows[1]  # step 1: recomputed
    assert any("recomputed from the next step on" in r.getMessage() for r in caplog.records)
