"""`sdar compare`: identical plans per method, Table-1 layout over seeds, skipping finished runs, resuming."""

from __future__ import annotations

from pathlib import Path

import pytest

import sdar.compare as compare
import sdar.train
from sdar.compare import comparison_markdown, ensure_trained, main, plan_runs, run_state
from sdar.config import ConfigError
from sdar.evaluate import EpisodeOutcome, EvalResult, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_tiny.yaml")
FAST = ["--total_steps", "1", "--eval_every", "1", "--eval_tasks", "1", "--env.max_turns", "1",
        "--rollout.max_new_tokens", "4", "--rollout.tasks_per_step", "1", "--log.sample_every", "0"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plans_share_everything_but_method_and_seed(tmp_path):
    plans = plan_runs(SMOKE, ["grpo", "sdar", "sdar*", "vanilla"], [0, 1], tmp_path, {"eval_tasks": 3})
    assert [(p.method, p.seed) for p in plans] == [(m, s) for m in ("grpo", "sdar", "sdar*", "vanilla") for s in (0, 1)]
    by = {(p.method, p.seed): p for p in plans}
    assert by["grpo", 1].run_dir == tmp_path / "grpo" / "seed1" and by["grpo", 1].cfg.algo.method == "grpo"
    assert by["sdar*", 0].run_dir == by["sdar", 0].run_dir and by["sdar*", 0].with_skills
    assert by["sdar*", 0].eval_dir == tmp_path / "sdar" / "seed0" / "eval_skills"
    assert by["vanilla", 0].run_dir is None and not by["vanilla", 0].with_skills
    for seed in (0, 1):
        same = [p.cfg for p in plans if p.seed == seed]
        assert all(c.seed == seed and c.eval_tasks == 3 and c.rollout == same[0].rollout for c in same)


@pytest.mark.parametrize("methods, overrides, match", [
    (["ppo"], {}, "unknown method"),
    (["grpo"], {"seed": 3}, "cannot be overridden"),
    (["grpo", "grpo"], {}, "must not repeat"),
    (["vanilla*"], {}, "skill_prompt is the base model"),
])
def test_bad_plans(tmp_path, methods, overrides, match):
    with pytest.raises(ConfigError, match=match):
        plan_runs(SMOKE, methods, [0], tmp_path, overrides)


def _result(env: str, label: str, seed: int, wins: list[bool]) -> EvalResult:
    types = ["pick_and_place_simple", "look_at_obj_in_light"]
    outs = tuple(EpisodeOutcome(f"t{i}", types[i % 2], 100 + i, w, 1) for i, w in enumerate(wins))
    return EvalResult(label, env, "m", None, None, False, 0.4, tuple((o.task_id, o.task_type, o.seed) for o in outs),
                      {seed: outs})


def test_table_rows_are_methods_with_intervals_over_seeds():
    # GRPO: seeds win 2/4 and 3/4 -> 50, 75: mean 62.5, sd 17.68, half-width 12.706 * 17.68 / sqrt(2) = 158.8
    # GRPO Pick (even episodes): 50 and 100 -> 75, sd 35.36, half-width 12.7062 * 35.36 / sqrt(2) = 317.655;
    # Look: 50 and 50 -> 50 ± 0. SDAR: every episode won in both seeds -> 100 ± 0
    results = {"grpo": [_result("alfworld", "grpo", 0, [True, True, False, False]),
                        _result("alfworld", "grpo", 1, [True, True, True, False])],
               "sdar": [_result("alfworld", "sdar", s, [True] * 4) for s in (0, 1)]}
    text = comparison_markdown(results, title="T")
    assert "| Method | Pick | Look | ALF Avg |" in text
    assert "| GRPO | 75.0 ± 317.7 | 50.0 ± 0.0 | 62.5 ± 158.8 |" in text
    assert "| SDAR | 100.0 ± 0.0 | 100.0 ± 0.0 | 100.0 ± 0.0 |" in text
    assert "t-distribution over 2 seeds" in text


def test_interrupted_run_is_resumed(tmp_path, monkeypatch):
    plan = plan_runs(SMOKE, ["grpo"], [0], tmp_path)[0]
    assert run_state(plan.cfg) == "new"
    plan.run_dir.mkdir(parents=True)
    (plan.run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    assert run_state(plan.cfg) == "partial"
    seen = []
    monkeypatch.setattr(sdar.train, "train", lambda cfg: seen.append(cfg))
    with pytest.raises(RuntimeError, match="without a final checkpoint"):
        ensure_trained(plan)
    assert len(seen) == 1 and seen[0].resume and seen[0].out_dir == str(plan.run_dir)


def test_compare_end_to_end_then_skips_finished_runs(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["--config", SMOKE, "--methods", "grpo", "sdar", "--seeds", "0", "--out", str(out), *FAST]
    assert main(argv) == 0
    text = (out / "table.md").read_text()
    assert "| Method | pick_and_place | Avg |" in text  # the one-task panel has one task type
    assert "\n| GRPO | " in text and "\n| SDAR | " in text
    assert "## In-training evaluation: final and best" in text and "| GRPO | 0.0 | 0.0 | 0.0 |" in text
    for name in ("success_vs_step", "train_success_vs_step", "invalid_vs_step", "gate_mean", "gate_active_ratio",
                 "teacher_gap", "delta_hist", "gap_by_turn", "gap_by_position"):  # the last three: SDAR's saved gaps
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    _, overrides = parse_overrides(FAST, ())
    assert [run_state(p.cfg) for p in plan_runs(SMOKE, ["grpo", "sdar"], [0], out, overrides)] == ["finished"] * 2
    first = text

    def forbidden(*args, **kwargs):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr(sdar.train, "train", forbidden)
    monkeypatch.setattr(compare, "evaluate_model", forbidden)
    assert main(argv) == 0
    assert (out / "table.md").read_text() == first
    changed = argv[:-2] + ["--log.sample_every", "0", "--optim.lr", "0.5"]
    assert main(changed) == 2  # a finished run trained with other settings is not silently reused
    saved = out / "grpo" / "seed0" / "config.yaml"  # a run written before a setting existed had its default
    saved.write_text(saved.read_text().replace("  strategy: auto\n", ""))
    assert "strategy" not in saved.read_text()
    assert main(argv) == 0
