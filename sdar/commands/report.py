"""`sdar report`: a run's metrics.jsonl as a one-page markdown summary with PNG plots (intervals from
:mod:`sdar.intervals`, run rows from :mod:`sdar.metrics`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from sdar.metrics import final_and_best, last_n_means, load_rows, series, stage_seconds

__all__ = ["REPORT_DIR", "gap_position_keys", "gap_turn_keys", "load_delta_samples", "main", "write_report"]

log = logging.getLogger(__name__)

REPORT_DIR = "report"
"""Folder inside the run folder that receives report.md and the plots."""
MAIN_METRICS = (
    "rollout/reward", "rollout/success", "rollout/invalid_ratio", "rollout/episode_len", "rollout/response_tokens",
    "train/loss", "train/grad_norm", "pg/clip_frac", "kl/kl", "entropy/entropy", "sdar/gate_mean",
    "sdar/gate_active_ratio", "sdar/gap_pre_mean", "sdar/sdar_loss", "perf/tokens_per_s",
)
"""Training metrics summarised over the last steps (those a run does not log are left out)."""
EVAL_METRICS = (("eval/success", 100.0, "success (%)"), ("eval/score", 1.0, "WebShop score"),
                ("eval/em", 1.0, "exact match (%)"), ("eval/reward", 1.0, "reward"))
"""(metric, factor to the reported unit, name) of the in-training evaluation."""


def gap_turn_keys(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(turn label, metric key)`` of the ``sdar/gap_by_turn/<k>`` metrics in turn order (``<K>plus`` last)."""
    prefix = "sdar/gap_by_turn/"
    names = {k[len(prefix):] for r in rows for k in r if k.startswith(prefix)}

    def order(name: str) -> tuple[int, str]:
        digits = name.removesuffix("plus")
        return (int(digits) + (1 if name.endswith("plus") else 0), name) if digits.isdigit() else (10**9, name)

    return [(name.replace("plus", "+"), prefix + name) for name in sorted(names, key=order)]


def gap_position_keys(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(label, metric key)`` of the ``sdar/gap_by_pos/q<k>`` metrics in order (q1 = first quarter of a response)."""
    prefix = "sdar/gap_by_pos/q"
    parts = sorted({int(k[len(prefix):]) for r in rows for k in r if k.startswith(prefix) and k[len(prefix):].isdigit()})
    return [(f"q{p}", f"{prefix}{p}") for p in parts]


def load_delta_samples(run_dir: str | Path) -> tuple[list[float], Path] | None:
    """Saved samples of the teacher-student gap Δ: ``delta_samples*.json`` / ``.jsonl`` (lists of numbers, or
    objects with a ``delta`` list) or ``delta_samples*.pt`` (a tensor) in the run folder; None when there are none."""
    files = sorted(p for p in Path(run_dir).glob("delta_samples*") if p.suffix in (".json", ".jsonl", ".pt"))
    values: list[float] = []
    for path in files:
        if path.suffix == ".pt":
            import torch

            values.extend(float(v) for v in torch.load(path, weights_only=True).flatten().tolist())
            continue
        texts = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        for text in texts:
            if text.strip():
                item = json.loads(text)
                values.extend(float(v) for v in (item["delta"] if isinstance(item, dict) else item))
    return (values, files[0]) if values else None


# -------------------------------------------------------------------------------------------------------- report
def _plots(rows: Sequence[Mapping[str, Any]], run_dir: Path, out: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw every plot whose metrics exist; returns ((title, file name) drawn, reasons for those skipped)."""
    from sdar.plots import Panel, Series, bar_chart, histogram, line_chart, panels_chart

    drawn: list[tuple[str, str]] = []
    skipped: list[str] = []

    def lines(*specs: tuple[str, str, float]) -> list[Series]:
        out_series = []
        for key, label, scale in specs:
            xs, ys = series(rows, key, scale)
            if xs:
                out_series.append(Series(label, xs, ys))
        return out_series

    reward = lines(("rollout/reward", "train", 1.0), ("eval/reward", "eval", 1.0))
    success = lines(("rollout/success", "train", 100.0), ("eval/success", "eval", 100.0))
    if reward or success:
        panels = [p for p in (Panel("Reward", "reward per episode", reward),
                              Panel("Success rate", "success (%)", success)) if p.series]
        panels_chart(out / "reward_success.png", panels, xlabel="training step")
        drawn.append(("Reward and success vs step", "reward_success.png"))
    else:
        skipped.append("reward/success vs step: no rollout/reward, rollout/success or eval/* metrics")
    gate = lines(("sdar/gate_mean", "gate mean", 1.0), ("sdar/gate_active_ratio", "gate-active ratio (g > 0.5)", 1.0))
    if gate:
        line_chart(out / "sdar_gate.png", gate, title="SDAR gate", xlabel="training step", ylabel="value")
        drawn.append(("SDAR gate mean and gate-active ratio", "sdar_gate.png"))
    else:
        skipped.append("SDAR gate: no sdar/gate_mean or sdar/gate_active_ratio metrics (the method has no gate)")
    gap = lines(("sdar/gap_pre_mean", "at the rollout weights", 1.0), ("sdar/gap_mean", "in the loss", 1.0))
    if gap:
        line_chart(out / "teacher_gap.png", gap, title="Mean teacher-student gap Δ", xlabel="training step",
                   ylabel="mean Δ (nats per token)")
        drawn.append(("Mean teacher-student gap", "teacher_gap.png"))
    else:
        skipped.append("teacher-student gap: no sdar/gap_pre_mean metrics (the method has no teacher)")
    for keys, file, title, xlabel, what in (
            (gap_turn_keys(rows), "gap_by_turn.png", "Mean gap Δ by turn index", "turn index", "gap_by_turn/<k>"),
            (gap_position_keys(rows), "gap_by_position.png", "Mean gap Δ by relative position in the response",
             "part of the response (quarters of its tokens)", "gap_by_pos/q<k>")):
        if not keys:
            skipped.append(f"{title[0].lower() + title[1:]}: no sdar/{what} metrics")
            continue
        groups = []
        spans = (("mean over all steps", None), ("last 10 steps", 10)) if len(rows) > 10 else (("mean", None),)
        for name, n in spans:
            means = []
            for _, key in keys:
                _, ys = series(rows, key)
                ys = ys[-n:] if n else ys
                means.append(sum(ys) / len(ys) if ys else float("nan"))
            groups.append((name, means))
        bar_chart(out / file, [label for label, _ in keys], groups, title=title, xlabel=xlabel,
                  ylabel="mean Δ (nats per token)")
        drawn.append((title, file))
    delta = load_delta_samples(run_dir)
    if delta is not None:
        histogram(out / "delta_hist.png", delta[0], title=f"Δ samples ({delta[1].name})", xlabel="Δ")
        drawn.append(("Histogram of Δ", "delta_hist.png"))
    else:
        skipped.append("histogram of Δ: the run saved no Δ samples (delta_samples*.json/.jsonl/.pt)")
    return drawn, skipped


def _header(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    import yaml

    cfg: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    method = cfg.get("algo", {}).get("method", "?")
    env = cfg.get("env", {}).get("name", "?")
    model = cfg.get("model", {}).get("name", "?")
    steps = f"{len(rows)} steps logged (step {int(rows[0]['step'])} to {int(rows[-1]['step'])})" if rows else \
        "no steps logged"
    planned = f" of {cfg['total_steps']} planned" if "total_steps" in cfg else ""
    return [f"# Run report: {method} on {env} with {model}", "",
            f"Run folder `{run_dir}`, seed {cfg.get('seed', '?')}; {steps}{planned}.", ""]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.md`` and the plots into ``out_dir`` (default ``run_dir/report``); returns report.md's path.

    Raises:
        FileNotFoundError: when the run folder has no metrics.jsonl.
    """
    run = Path(run_dir)
    if not (run / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run}/metrics.jsonl does not exist; pass a run folder written by `sdar train` "
                                "with log.jsonl=true")
    out = Path(out_dir) if out_dir is not None else run / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(run)
    lines = _header(run, rows)
    lines += ["## Evaluation on the fixed panel", ""]
    evals = [(name, final_and_best(rows, key, scale)) for key, scale, name in EVAL_METRICS]
    evals = [(name, fb) for name, fb in evals if fb is not None]
    if evals:
        lines += ["| metric | final | at step | best | at step |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {fb['final']:.2f} | {fb['final_step']:.0f} | {fb['best']:.2f} | {fb['best_step']:.0f} |"
                  for name, fb in evals]
    else:
        lines.append("No evaluation in metrics.jsonl (eval_every was 0); `sdar eval RUN_DIR` evaluates the latest "
                     "checkpoint.")
    means = last_n_means(rows, MAIN_METRICS)
    lines += ["", "## Training: mean of the last 10 steps", ""]
    if means:
        lines += ["| metric | mean |", "|---|---:|"] + [f"| {k} | {v:.4g} |" for k, v in means.items()]
    else:
        lines.append("No training metrics logged.")
    stages = stage_seconds(rows)
    total = stages.pop("step", sum(stages.values()))
    lines += ["", "## Time per step by stage", ""]
    if stages:
        lines += ["| stage | seconds per step | share |", "|---|---:|---:|"]
        lines += [f"| {s} | {v:.2f} | {100 * v / total if total > 0 else 0:.0f}% |" for s, v in stages.items()]
        lines.append(f"| whole step | {total:.2f} | 100% |")
    else:
        lines.append("No timing metrics logged.")
    drawn, skipped = _plots(rows, run, out)
    lines += ["", "## Plots", ""] + [f"### {title}\n\n![{title}]({name})\n" for title, name in drawn]
    if skipped:
        lines += ["Not drawn:", ""] + [f"- {reason}" for reason in skipped]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str]) -> int:
    """Entry point of ``sdar report RUN_DIR``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="sdar report", description="Summarise a run folder: report.md and PNG "
                                     "plots in RUN_DIR/report/.")
    parser.add_argument("run_dir", type=Path, help="run folder written by `sdar train` (with metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/report)")
    args = parser.parse_args(list(argv))
    try:
        path = write_report(args.run_dir, args.out)
    except FileNotFoundError as e:
        sys.stderr.write(f"sdar report: {e}\n")
        return 2
    sys.stdout.write(f"written: {path}\n")
    return 0
