"""`sdar compare`: identical plans per method, Table-1 layout over seeds, skipping finished runs, resuming."""

from __future__ import annotations

from pathlib import Path

import pytest

import sdar.commands.compare as compare
import sdar.commands.train
from sdar.commands.compare import comparison_markdown, ensure_trained, main, plan_runs, run_state
from sdar.config import ConfigError
from sdar.commands.evaluate import EpisodeOutcome, EvalResult, parse_overrides

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


def _cells(text: str, row: str) -> list[tuple[float, float, float]]:
    """(mean, lo, hi) of every "mean [lo, hi]" cell of a table row."""
    line = next(l for l in text.splitlines() if l.startswith(f"| {row} |"))
    out = []
    for cell in line.strip("|").split("|")[1:]:
        mean, bounds = cell.strip().split(" [")
        lo, hi = bounds.rstrip("]").split(", ")
        out.append((float(mean), float(lo), float(hi)))
    return out


def test_table_rows_are_methods_with_bounded_intervals_over_seeds():
    # GRPO: seeds win 2/4 and 3/4 -> 50, 75: mean 62.5 (the old t-interval, 62.5 ± 158.8, left [0, 100]);
    # Pick (even episodes): 50 and 100 -> 75; Look: 50 and 50 -> 50. SDAR: every episode won -> 100 [100, 100]
    results = {"grpo": [_result("alfworld", "grpo", 0, [True, True, False, False]),
                        _result("alfworld", "grpo", 1, [True, True, True, False])],
               "sdar": [_result("alfworld", "sdar", s, [True] * 4) for s in (0, 1)]}
    text = comparison_markdown(results, title="T")
    assert "| Method | Pick | Look | ALF Avg |" in text
    grpo = _cells(text, "GRPO")
    assert [m for m, _, _ in grpo] == [75.0, 50.0, 62.5]
    assert all(0.0 <= lo <= m <= hi <= 100.0 for m, lo, hi in grpo)
    assert "| SDAR | 100.0 [100.0, 100.0] | 100.0 [100.0, 100.0] | 100.0 [100.0, 100.0] |" in text
    assert "percentile bootstrap over 2 seeds and the episodes within each seed" in text
    # paired by seed: SDAR - GRPO = 50, 25 -> mean 37.5; resampled means 25, 37.5, 50 -> [25, 50];
    # sign flips of [50, 25]: |sum| >= 75 in 2 of 4 patterns -> p = 0.5
    assert "## Paired differences vs GRPO" in text
    assert "| SDAR | 2 | +37.5 | [+25.0, +50.0] | 0.500 |" in text
    assert "smallest possible p is 2/2^n (0.5000 for n = 2)" in text
    one = comparison_markdown({"grpo": results["grpo"][:1]}, title="T")
    assert "Wilson score interval" in one and "Paired differences" not in one


def _fake_rows(successes: list[float], gate: float | None = None) -> list[dict]:
    """Metric rows with eval/success at steps 0, 5, 10, 15 and, for a gated method, the gate metrics every step."""
    rows = []
    for step in range(16):
        row: dict = {"step": step, "rollout/success": successes[step // 5], "rollout/reward": float(step)}
        if step % 5 == 0:
            row["eval/success"] = successes[step // 5]
        if gate is not None:
            row.update({"sdar/gate_mean": gate, "sdar/gate_active_ratio": gate / 2, "sdar/expert_agree_ratio": 0.5})
        rows.append(row)
    return rows


def test_comparison_of_fake_runs_has_every_section(tmp_path):
    import json

    # final in-training success of GRPO: 0.5, 0.6, 0.4 -> mean 50 %, threshold 90% of it = 45 %
    # GRPO reaches 45 % at steps 10, 10 and never -> "2/3 seeds, median step 10"
    # SDAR at steps 5, 10, 0 -> "3/3 seeds, median step 5"
    grpo = [_fake_rows([0.2, 0.4, 0.5, 0.5]), _fake_rows([0.2, 0.3, 0.5, 0.6]), _fake_rows([0.1, 0.3, 0.4, 0.4])]
    sdar_rows = [_fake_rows([0.3, 0.5, 0.7, 0.8], gate=0.4), _fake_rows([0.2, 0.3, 0.6, 0.9], gate=0.6),
                 _fake_rows([0.5, 0.6, 0.6, 0.6], gate=0.5)]
    # final checkpoints: GRPO wins 1, 2, 2 of 4 (25, 50, 50 %); SDAR 3, 4, 3 of 4 and a seed 3 GRPO lacks
    results = {"grpo": [_result("toy", "grpo", s, [i < k for i in range(4)]) for s, k in ((0, 1), (1, 2), (2, 2))],
               "sdar": [_result("toy", "sdar", s, [i < k for i in range(4)]) for s, k in ((0, 3), (1, 4), (2, 3),
                                                                                        (3, 0))]}
    path = compare.write_comparison(tmp_path, results, {"grpo": grpo, "sdar": sdar_rows})
    text = path.read_text()
    for heading in ("## Final checkpoints on the evaluation panel", "## Paired differences vs GRPO",
                    "## In-training evaluation: final and best", "## Sample efficiency: steps to threshold",
                    "## Gate statistics (mean over seeds of the last 10 logged steps)", "## Training curves"):
        assert heading in text, heading
    # paired over seeds 0-2 only: 75-25, 100-50, 75-50 = 50, 50, 25 -> mean 41.7; all positive -> p = 2/8
    assert "| SDAR | 3 | +41.7 | [+25.0, +50.0] | 0.250 |" in text
    assert "percentile bootstrap over 3–4 seeds and the episodes within each seed" in text
    assert "only 2–4 seeds" in text
    assert "reaches 45.0% (90% of GRPO's mean final in-training success)" in text
    assert "| GRPO | 2/3 seeds, median step 10 |" in text and "| SDAR | 3/3 seeds, median step 5 |" in text
    # gate mean over seeds: (0.4 + 0.6 + 0.5) / 3 = 0.5, active ratio half of it; GRPO has no gate
    assert "| Method | gate_mean | gate_active_ratio | gap_action_agree | gap_action_disagree | expert_agree_ratio |" \
        in text
    assert "| SDAR | 0.500 | 0.250 | – | – | 0.500 |" in text and "| GRPO | – | – | – | – | – |" in text
    for _, lo, hi in _cells(text, "SDAR")[:1]:
        assert 0.0 <= lo <= hi <= 100.0
    data = json.loads((tmp_path / "results.json").read_text())
    paired = data["sdar"]["paired_vs_baseline"]
    assert paired["baseline"] == "grpo" and paired["seeds"] == [0, 1, 2] and paired["p_value"] == 0.25
    assert data["sdar"]["steps_to_threshold"]["steps"] == [5.0, 10.0, 0.0]
    assert data["grpo"]["steps_to_threshold"]["reached"] == 2 and "paired_vs_baseline" not in data["grpo"]
    assert data["sdar"]["gate"]["sdar/gate_mean"] == pytest.approx(0.5)
    assert data["grpo"]["summary"]["success"]["method"] == "bootstrap" and "lo" in data["grpo"]["summary"]["success"]
    assert data["sdar"]["final_success_by_seed"] == {"0": 75.0, "1": 100.0, "2": 75.0, "3": 0.0}
    assert (tmp_path / "success_vs_step.png").read_bytes()[:8] == PNG_MAGIC
    # another baseline and a given threshold: 65 % -> SDAR at steps 10 and 15, GRPO never
    text = compare.write_comparison(tmp_path, results, {"grpo": grpo, "sdar": sdar_rows}, baseline="sdar",
                                    threshold=65.0).read_text()
    assert "## Paired differences vs SDAR" in text and "| GRPO | 3 | -41.7 |" in text
    assert "reaches 65.0% (given with --threshold)" in text
    assert "| SDAR | 2/3 seeds, median step 12.5 |" in text and "| GRPO | 0/3 seeds |" in text


def test_curve_band_stays_within_the_range():
    # success of two seeds at one step: 0 and 100 %; the t-band would be 50 ± 635
    band = compare.curve_interval("eval/success", 100.0, [0.0, 100.0])
    assert band.method == "bootstrap_seeds" and 0.0 <= band.lower <= band.upper <= 100.0
    reward = compare.curve_interval("rollout/reward", 1.0, [0.0, 1.0])
    assert reward.method == "t" and reward.lower < 0.0


def test_unknown_baseline_is_refused(tmp_path, capsys):
    argv = ["--config", SMOKE, "--methods", "grpo", "sdar", "--out", str(tmp_path), "--baseline", "rlsd",
            "--threshold", "50"]
    assert main(argv) == 2
    assert "--baseline 'rlsd' is not one of --methods" in capsys.readouterr().err
    assert compare.default_baseline(["sdar", "grpo"]) == "grpo" and compare.default_baseline(["sdar", "rlsd"]) == "sdar"


def test_interrupted_run_is_resumed(tmp_path, monkeypatch):
    plan = plan_runs(SMOKE, ["grpo"], [0], tmp_path)[0]
    assert run_state(plan.cfg) == "new"
    plan.run_dir.mkdir(parents=True)
    (plan.run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    assert run_state(plan.cfg) == "partial"
    seen = []
    monkeypatch.setattr(sdar.commands.train, "train", lambda cfg: seen.append(cfg))
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

    monkeypatch.setattr(sdar.commands.train, "train", forbidden)
    monkeypatch.setattr(compare, "evaluate_model", forbidden)
    assert main(argv) == 0
    assert (out / "table.md").read_text() == first
    changed = argv[:-2] + ["--log.sample_every", "0", "--optim.lr", "0.5"]
    assert main(changed) == 2  # a finished run trained with other settings is not silently reused
    assert compare._extends({"total_steps": 8, "optim": {"warmup_ratio": 0.0}}, {"total_steps": 16, "optim": {}})
    assert not compare._extends({"total_steps": 8}, {"total_steps": 4})  # fewer steps: not the same run
    assert not compare._extends({"total_steps": 8, "optim": {"warmup_ratio": 0.1}},  # the warm-up grows with it
                                {"total_steps": 16, "optim": {"warmup_ratio": 0.1}})
    longer = argv[:-2] + ["--total_steps", "3"]  # more steps: the finished runs are resumed, not refused
    seen = []
    monkeypatch.setattr(sdar.commands.train, "train", lambda cfg: seen.append(cfg))
    with pytest.raises(RuntimeError, match="without a final checkpoint"):
        main(longer)
    assert seen and seen[0].resume and seen[0].total_steps == 3
    monkeypatch.setattr(sdar.commands.train, "train", forbidden)
    saved = out / "grpo" / "seed0" / "config.yaml"  # a run written before a setting existed had its default
    saved.write_text(saved.read_text().replace("  strategy: auto\n", ""))
    assert "strategy" not in saved.read_text()
    assert main(argv) == 0


def test_evaluation_digest_ignores_training_only_settings():
    import dataclasses

    from sdar.commands.evaluate import config_digest, legacy_config_digest
    from sdar.config import load_config

    cfg = load_config(SMOKE)
    same = [dataclasses.replace(cfg, total_steps=cfg.total_steps * 2, save_every=3, eval_every=7),
            dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=0.5)),
            dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, gradient_checkpointing=True))]
    for other in same:
        assert config_digest(other) == config_digest(cfg)
        assert legacy_config_digest(other) != legacy_config_digest(cfg)  # the old digest took everything
    different = [dataclasses.replace(cfg, eval_temperature=0.9), dataclasses.replace(cfg, eval_tasks=5),
                 dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, max_new_tokens=3)),
                 dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lora_rank=4)),
                 dataclasses.replace(cfg, seed=cfg.seed + 1)]
    assert len({config_digest(c) for c in [cfg, *different]}) == 1 + len(different)


def test_longer_study_reuses_the_base_model_evaluation(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["--config", SMOKE, "--methods", "vanilla", "--seeds", "0", "--out", str(out), *FAST]
    assert main(argv) == 0
    saved = (out / "vanilla" / "seed0" / "eval.json").read_text()

    def forbidden(*args, **kwargs):
        raise AssertionError("the base model was evaluated again")

    monkeypatch.setattr(compare, "evaluate_model", forbidden)
    assert main(argv[:-2] + ["--log.sample_every", "0", "--total_steps", "5"]) == 0  # only the step count differs
    with pytest.raises(AssertionError, match="evaluated again"):  # the sampling changed: evaluated again
        main(argv[:-2] + ["--log.sample_every", "0", "--eval_temperature", "0.9"])
    import json

    from sdar.commands.evaluate import legacy_config_digest
    from sdar.commands.evaluate import eval_config
    from sdar.commands.evaluate import parse_overrides as parse

    data = json.loads(saved)  # a result written by an earlier version carries the whole-config digest
    _, overrides = parse(FAST, ())
    (plan,) = plan_runs(SMOKE, ["vanilla"], [0], out, overrides)
    data["config_digest"] = legacy_config_digest(eval_config(plan.cfg, out_dir=plan.eval_dir, eval_with_skills=False))
    (out / "vanilla" / "seed0" / "eval.json").write_text(json.dumps(data))
    assert main(argv) == 0
