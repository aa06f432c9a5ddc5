"""`sdar report`: summary numbers read back from metrics.jsonl, plots drawn or skipped, a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdar.config import load_config
from sdar.metrics import final_and_best, last_n_means, load_rows, stage_seconds
from sdar.commands.report import gap_position_keys, gap_turn_keys, main, write_report

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path


def write_run(folder: Path, *, sdar: bool = True, steps: int = 12) -> Path:
    """A synthetic run: reward = step, eval at steps 4, 9 and 11 with success 0.25, 0.5, 0.375."""
    folder.mkdir(parents=True)
    evals = {4: 0.25, 9: 0.5, 11: 0.375}
    rows = []
    for s in range(steps):
        row = {"step": s, "time": 0.0, "rollout/reward": float(s), "rollout/success": s / 20,
               "timing/rollout_s": 3.0, "timing/update_s": 1.0, "timing/step_s": 4.0}
        if sdar:
            row.update({"sdar/gate_mean": 0.4 + s / 100, "sdar/gate_active_ratio": 0.3, "sdar/gap_pre_mean": -0.1,
                        "sdar/gap_by_turn/0": -0.1, "sdar/gap_by_turn/1": -0.2, "sdar/gap_by_turn/10plus": -0.3,
                        "sdar/gap_by_pos/q1": 0.1, "sdar/gap_by_pos/q2": -0.1, "sdar/gap_by_pos/q4": 0.2})
        if s in evals:
            row.update({"eval/success": evals[s], "eval/reward": 1.0})
        rows.append(row)
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "config.yaml").write_text("algo: {method: sdar}\nenv: {name: toy}\nmodel: {name: tiny-random}\n"
                                        "seed: 0\ntotal_steps: 12\n")
    return folder


def test_summary_numbers_by_hand(tmp_path):
    rows = load_rows(write_run(tmp_path / "run"))
    assert final_and_best(rows, "eval/success", 100.0) == {"final": 37.5, "final_step": 11.0, "best": 50.0,
                                                           "best_step": 9.0}
    assert final_and_best(rows, "eval/score") is None
    assert last_n_means(rows, ["rollout/reward"]) == {"rollout/reward": pytest.approx(6.5)}  # mean of 2..11
    assert stage_seconds(rows) == {"rollout": 3.0, "step": 4.0, "update": 1.0}
    assert [label for label, _ in gap_turn_keys(rows)] == ["0", "1", "10+"]
    assert gap_position_keys(rows) == [("q1", "sdar/gap_by_pos/q1"), ("q2", "sdar/gap_by_pos/q2"),
                                       ("q4", "sdar/gap_by_pos/q4")]


def test_resumed_steps_keep_their_last_row(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 0, "x": 1.0}, {"step": 1, "x": 2.0}, {"step": 1, "x": 3.0}, {"step": 2, "x": 4.0}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    assert [(r["step"], r["x"]) for r in load_rows(run)] == [(0, 1.0), (1, 3.0), (2, 4.0)]


def test_report_with_every_plot(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "delta_samples.json").write_text(json.dumps([-0.5, -0.1, 0.0, 0.2, -0.3]))
    path = write_report(run)
    assert path == run / "report" / "report.md"
    text = path.read_text()
    assert "| success (%) | 37.50 | 11 | 50.00 | 9 |" in text
    assert "| rollout/reward | 6.5 |" in text
    assert "| rollout | 3.00 | 75% |" in text and "| whole step | 4.00 | 100% |" in text
    for name in ("reward_success", "sdar_gate", "teacher_gap", "gap_by_turn", "gap_by_position", "delta_hist"):
        assert_png(run / "report" / f"{name}.png")
        assert f"({name}.png)" in text
    assert "Not drawn" not in text


def test_absent_metrics_are_skipped_and_said(tmp_path):
    run = write_run(tmp_path / "run", sdar=False)
    text = write_report(run).read_text()
    assert_png(run / "report" / "reward_success.png")
    for name in ("sdar_gate", "teacher_gap", "gap_by_turn", "gap_by_position", "delta_hist"):
        assert not (run / "report" / f"{name}.png").exists()
    assert "SDAR gate: no sdar/gate_mean" in text and "saved no Δ samples" in text


def test_missing_metrics_file(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err


def test_report_on_a_tiny_run(tmp_path):
    from sdar.commands.train import train

    run = tmp_path / "run"
    train(load_config(SMOKE, overrides={"env.max_turns": 1, "rollout.max_new_tokens": 4, "rollout.tasks_per_step": 1,
                                        "eval_tasks": 1, "eval_every": 1, "total_steps": 1, "log.sample_every": 0,
                                        "out_dir": str(run)}))
    assert main([str(run)]) == 0
    text = (run / "report" / "report.md").read_text()
    assert "# Run report: sdar on toy with tiny-random" in text and "| success (%) |" in text
    for name in ("reward_success", "sdar_gate", "teacher_gap", "gap_by_turn", "gap_by_position", "delta_hist"):
        assert_png(run / "report" / f"{name}.png")  # the trainer saved Δ samples and the gap by position


def test_overlaid_histograms_write_a_png_and_reject_empty_input(tmp_path):
    from sdar.plots import histograms

    path = histograms(tmp_path / "h.png", [("A", [0.0, 0.1, -0.2]), ("B", [0.3, 0.3]), ("C", [])], title="t",
                      xlabel="x")
    assert_png(path)
    with pytest.raises(ValueError, match="non-empty"):
        histograms(tmp_path / "e.png", [("A", [])], title="t", xlabel="x")


# ------------------------------------------------------------------------------------------- bounded intervals
def test_wilson_interval_by_hand():
    from sdar.intervals import Z_95, normal_quantile, wilson_interval

    assert normal_quantile(0.975) == pytest.approx(Z_95, abs=1e-9)
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)
    # k = 3, n = 10, z = 1.959964: p = 0.3, z²/n = 3.841459 / 10 = 0.3841459, 1 + z²/n = 1.3841459
    # centre = (0.3 + 0.3841459 / 2) / 1.3841459 = 0.4920730 / 1.3841459 = 0.355507
    # half = 1.959964 * sqrt(0.3 * 0.7 / 10 + 3.841459 / 400) / 1.3841459
    #      = 1.959964 * sqrt(0.021 + 0.00960365) / 1.3841459 = 1.959964 * 0.174939 / 1.3841459 = 0.247715
    # bounds: 0.355507 - 0.247715 = 0.107792 and 0.355507 + 0.247715 = 0.603222
    iv = wilson_interval(3, 10)
    assert iv.mean == pytest.approx(0.3)
    assert (iv.lo, iv.hi) == (pytest.approx(0.107792, abs=1e-5), pytest.approx(0.603222, abs=1e-5))
    assert (iv.n, iv.method) == (10, "wilson")
    pct = wilson_interval(3, 10, scale=100.0)
    assert pct.cell() == "30.0 [10.8, 60.3]"
    # k = 0 of 4: centre = half = (z²/2n) / (1 + z²/n), so the lower bound is exactly 0 (and k = n gives 1)
    assert wilson_interval(0, 4).lo == 0.0 and wilson_interval(4, 4).hi == 1.0
    assert 0.0 < wilson_interval(0, 4).hi < 1.0 and 0.0 < wilson_interval(4, 4).lo < 1.0
    assert wilson_interval(0, 0).method == "none"
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_two_level_bootstrap_stays_within_zero_and_one():
    from sdar.intervals import bootstrap_seeds_episodes

    zeros = bootstrap_seeds_episodes([[0] * 64 for _ in range(5)])
    ones = bootstrap_seeds_episodes([[1] * 64 for _ in range(5)])
    assert (zeros.mean, zeros.lo, zeros.hi) == (0.0, 0.0, 0.0) and zeros.method == "bootstrap" and zeros.n == 5
    assert (ones.mean, ones.lo, ones.hi) == (1.0, 1.0, 1.0)
    two = bootstrap_seeds_episodes([[1, 1, 0, 0], [1, 1, 1, 0]])  # the case whose t-interval was 62.5 ± 158.8 %
    assert two.mean == pytest.approx(0.625)
    assert 0.0 <= two.lo <= two.mean <= two.hi <= 1.0 and two.hi - two.lo < 1.0
    assert two == bootstrap_seeds_episodes([[1, 1, 0, 0], [1, 1, 1, 0]])  # fixed generator seed: deterministic
    # the estimate weighs seeds equally: (mean of [1, 1] + mean of [0, 0, 0, 0]) / 2 = 0.5, not the pooled 2/6
    assert bootstrap_seeds_episodes([[1, 1], [0, 0, 0, 0]]).mean == pytest.approx(0.5)


def test_bootstrap_resamples_episodes_within_each_seed_and_group():
    from sdar.intervals import bootstrap_interval

    # one seed, so only episodes vary: groups [1, 0] and [1, 1, 1, 0] -> (0.5 + 0.75) / 2 = 0.625
    iv = bootstrap_interval([[[1.0, 0.0], [1.0, 1.0, 1.0, 0.0]]], bounds=(0.0, 1.0))
    assert iv.mean == pytest.approx(0.625) and 0.0 <= iv.lo < iv.mean < iv.hi <= 1.0 and iv.n == 1
    # constant episodes within each seed: only the seeds vary, resampled means lie in {0.2, 0.5, 0.8}, whose
    # 2.5% and 97.5% percentiles are 0.2 and 0.8 (each end has probability 1/4 among 2000 draws)
    iv = bootstrap_interval([[[0.2] * 8], [[0.8] * 8]])
    assert (iv.lo, iv.hi) == (pytest.approx(0.2), pytest.approx(0.8))
    with pytest.raises(ValueError):
        bootstrap_interval([[[1.0]], [[1.0], [0.0]]])


def test_bootstrap_over_seeds_by_hand():
    from sdar.intervals import bootstrap_over_seeds

    # [50, 75]: resampled means are 50, 62.5 or 75 with probabilities 1/4, 1/2, 1/4 -> percentiles 50 and 75
    iv = bootstrap_over_seeds([50.0, 75.0], bounds=(0.0, 100.0))
    assert (iv.mean, iv.lo, iv.hi, iv.method) == (62.5, 50.0, 75.0, "bootstrap_seeds")
    assert iv.cell() == "62.5 [50.0, 75.0]"
    one = bootstrap_over_seeds([40.0], bounds=(0.0, 100.0))
    assert one.method == "none" and one.cell() == "40.0"


def test_interval_bounds_and_old_json():
    from sdar.intervals import Interval

    iv = Interval.from_bounds(62.5, 55.1, 69.4, 5, "bootstrap")
    assert iv.cell() == "62.5 [55.1, 69.4]" and iv.half_width == pytest.approx(7.15)
    assert (iv.lower, iv.upper) == (55.1, 69.4)
    back = Interval.from_json(json.loads(json.dumps(iv.to_json())))
    assert (back.mean, back.lo, back.hi, back.n, back.method) == (62.5, 55.1, 69.4, 5, "bootstrap")
    old = Interval.from_json({"mean": 84.44, "half_width": 2.06, "n": 3, "method": "t"})  # written before lo/hi
    assert old.cell() == "84.4 ± 2.1" and not old.has_bounds
    assert (old.lower, old.upper) == (pytest.approx(82.38), pytest.approx(86.5))
    assert "lo" not in old.to_json()
    none = Interval.from_json({"mean": 1.0, "half_width": None, "n": 1, "method": "none"})
    assert none.cell() == "1.0"


def test_metric_range():
    from sdar.intervals import metric_range

    assert metric_range("eval/success", 100.0) == (0.0, 100.0)
    assert metric_range("success/pick_and_place_simple", 100.0) == (0.0, 100.0)
    assert metric_range("em/nq", 100.0) == (0.0, 100.0) and metric_range("eval/score") == (0.0, 1.0)
    assert metric_range("rollout/invalid_ratio") == (0.0, 1.0) and metric_range("sdar/gate_mean") == (0.0, 1.0)
    assert metric_range("rollout/reward") is None and metric_range("sdar/gap_pre_mean") is None
    assert metric_range("sdar/gap_action_agree") is None
