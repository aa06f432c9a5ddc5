"""`sdar demo`: prepare the offline model if needed, train with a CPU preset, and report what happened.

The default preset trains the testbed policy (a small model warm-started on the built-in game, shipped in
``assets/testbed_warmstart``) with SDAR for a few minutes, evaluating a fixed held-out panel before training and every
few steps, and ends with the success rate before and after and a PNG learning curve (``sdar report``).

Each demo starts afresh: the run files of an earlier demo in the same folder (config, metrics, checkpoints, report)
are deleted first, as ``sdar train --overwrite`` does; a folder that holds anything else is refused."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from sdar.config import RunConfig
from sdar.metrics import read_metrics

DEFAULT_PRESET = "configs/testbed/demo.yaml"


def _fmt(rows: list[dict[str, float]], key: str, fmt: str = "{:.3f}") -> str:
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(vals[0])} -> {fmt.format(vals[-1])} (mean {fmt.format(sum(vals) / len(vals))})"


def run_report(cfg: RunConfig, seconds: float) -> str:
    """A short plain-text account of a finished run, read back from its metrics file."""
    out = Path(cfg.out_dir)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if int(r.get("step", 0)) >= 0 or "eval/success" in r]
    stages = sorted({k for r in rows for k in r if k.startswith("timing/") and k != "timing/step_s"})
    evals = [r for r in rows if r.get("eval/success") is not None]
    lines = [
        f"sdar run report — {cfg.algo.method} on {cfg.env.name} with {cfg.model.name}",
        f"  steps trained        : {sum(1 for r in rows if int(r.get('step', 0)) >= 0)} (seed {cfg.seed}, {cfg.rollout.tasks_per_step} tasks x "
        f"{cfg.rollout.group_size} episodes per step)",
        f"  wall time            : {seconds / 60:.1f} min",
        f"  reward (first->last) : {_fmt(rows, 'rollout/reward')}",
        f"  success rate         : {_fmt(rows, 'rollout/success')}",
        *(["  held-out success     : " + " -> ".join(f"{100 * r['eval/success']:.1f}% (after {int(r['step']) + 1})"
                                                    for r in evals) + f"  [{cfg.eval_tasks} tasks]"] if evals else []),
        f"  invalid-action ratio : {_fmt(rows, 'rollout/invalid_ratio')}",
        f"  episode length       : {_fmt(rows, 'rollout/episode_len', '{:.2f}')}",
        f"  teacher-student gap  : {_fmt(rows, 'sdar/gap_pre_mean', '{:+.4f}')}  (teacher source: {cfg.teacher.source})",
        f"  gate mean / active   : {_fmt(rows, 'sdar/gate_mean')} / {_fmt(rows, 'sdar/gate_active_ratio')}",
        f"  policy loss          : {_fmt(rows, 'pg/pg_loss', '{:+.4f}')}",
        f"  grad norm            : {_fmt(rows, 'train/grad_norm', '{:.4f}')}",
        "  seconds per stage    : " + ", ".join(
            f"{s.removeprefix('timing/').removesuffix('_s')} {sum(r.get(s, 0.0) for r in rows) / max(len(rows), 1):.1f}"
            for s in stages),
        f"  run folder           : {out} (config.yaml, metrics.jsonl, tensorboard/, checkpoints/)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdar demo", description="Short CPU training run with a report.")
    parser.add_argument("--config", default=DEFAULT_PRESET, help=f"preset to run (default {DEFAULT_PRESET})")
    parser.add_argument("--out-dir", default=None, help="run folder (default: the preset's); an earlier demo's files "
                        "in it are replaced")
    args = parser.parse_args(list(argv))
    from sdar.config import load_config
    from sdar.models import KNOWN_MODELS, prepare_model
    from sdar.commands.train import train

    overrides = {"out_dir": args.out_dir} if args.out_dir else None
    cfg = load_config(args.config, overrides=overrides)
    if cfg.model.name in KNOWN_MODELS:
        sys.stdout.write(f"preparing {cfg.model.name} (converted once, then cached)...\n")
        prepare_model(cfg.model.name)
    t0 = time.perf_counter()
    train(cfg, folder="overwrite")  # a second demo replaces the first instead of appending to it
    report = run_report(cfg, time.perf_counter() - t0)
    try:  # plots need matplotlib (part of the dev and report extras)
        from sdar.commands.report import write_report

        page = write_report(cfg.out_dir)
        report += f"  plots and summary    : {page} (learning curve: {page.parent / 'reward_success.png'})\n"
    except ImportError as err:
        report += f"  plots                : not drawn ({err}); pip install 'sdar[report]'\n"
    (Path(cfg.out_dir) / "report.txt").write_text(report)
    sys.stdout.write("\n" + report)
    return 0
