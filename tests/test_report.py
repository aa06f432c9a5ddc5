"""`sdar report`: summary numbers read back from metrics.jsonl, plots drawn or skipped, a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdar.config import load_config
from sdar.report import final_and_best, gap_position_keys, gap_turn_keys, last_n_means, load_rows, main, stage_seconds, write_report

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
    from sdar.train import train

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
