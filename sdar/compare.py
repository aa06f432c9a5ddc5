"""`sdar compare`: train methods × seeds on identical data, evaluate every final checkpoint on one panel, and
tabulate the results like the paper's Table 1 with training-curve plots.

Run ``DIR/<method>/seed<k>`` trains ``algo.method=<method>`` with ``seed=k`` and the same preset and overrides as
every other run, so all methods see the same training tasks at each step and the same evaluation panel. A finished
run (its metrics reach the last step and its final checkpoint exists) is not trained again, an interrupted one is
resumed, and an evaluation whose checkpoint and settings are unchanged is read back from its ``eval.json``.

Besides training methods, the rows ``vanilla`` (the base model) and ``skill_prompt`` (the base model with skills in
the prompt) are evaluated without training, and ``<method>*`` evaluates ``<method>``'s runs with skills in the
prompt (the paper's starred rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from sdar.config import ConfigError, RunConfig, dump_yaml, from_dict, load_config
from sdar.evaluate import (
    EVAL_FILE,
    EvalResult,
    ci_note,
    config_digest,
    eval_config,
    evaluate_model,
    parse_overrides,
    read_result,
    summarise_seeds,
    table_columns,
    write_result,
)
from sdar.report import Interval, final_and_best, load_rows, markdown_table, seed_interval, series

__all__ = [
    "DISPLAY_NAMES",
    "display_name",
    "RunPlan",
    "comparison_markdown",
    "ensure_evaluated",
    "ensure_trained",
    "main",
    "plan_runs",
    "run_compare",
    "run_state",
]

log = logging.getLogger(__name__)

BASE_ROWS = {"vanilla": False, "skill_prompt": True}
"""Rows evaluated on the untrained model -> whether skills are in the prompt."""
DISPLAY_NAMES = {
    "vanilla": "Vanilla", "skill_prompt": "Skill-Prompt*", "opsd": "OPSD", "grpo": "GRPO",
    "skill_grpo": "Skill-GRPO", "grpo_opsd": "GRPO+OPSD", "skill_sd": "Skill-SD", "rlsd": "RLSD", "sdar": "SDAR",
}
"""Row names of the paper's Table 1."""
RESERVED = ("algo.method", "seed", "out_dir", "resume")
"""Keys compare sets per run; they cannot be passed as overrides."""
CURVES = (("eval/success", 100.0, "success_vs_step.png", "Evaluation success", "success (%)"),
          ("rollout/success", 100.0, "train_success_vs_step.png", "Training-rollout success", "success (%)"),
          ("rollout/invalid_ratio", 100.0, "invalid_vs_step.png", "Invalid actions in training rollouts",
           "invalid actions (%)"),
          ("sdar/gate_mean", 1.0, "gate_mean.png", "SDAR gate mean", "gate mean"),
          ("sdar/gate_active_ratio", 1.0, "gate_active_ratio.png", "Gate-active ratio (g > 0.5)", "ratio"),
          ("sdar/gap_pre_mean", 1.0, "teacher_gap.png", "Mean teacher-student gap Δ", "mean Δ (nats per token)"))
"""(metric, scale, file, title, y label) of the per-method training-curve plots."""
NOT_TRAINING_KEYS = ("resume", "device", "log", "eval_tasks", "eval_temperature", "eval_with_skills")
"""Top-level config keys that do not change the trained weights (ignored when checking an existing run)."""
RunState = Literal["finished", "partial", "new"]


def display_name(method: str) -> str:
    star = method.endswith("*")
    name = DISPLAY_NAMES.get(method.rstrip("*"), method.rstrip("*"))
    return name + ("*" if star and not name.endswith("*") else "")


@dataclass(frozen=True)
class RunPlan:
    """One (row, seed) of the comparison."""

    method: str
    """Row as requested: a training method, ``<method>*``, ``vanilla`` or ``skill_prompt``."""
    seed: int
    cfg: RunConfig
    """The training configuration (for base-model rows: the configuration the model is evaluated with)."""
    run_dir: Path | None
    """Training run folder; None for base-model rows."""
    eval_dir: Path
    with_skills: bool


def plan_runs(preset: str | Path, methods: Sequence[str], seeds: Sequence[int], out: str | Path,
              overrides: Mapping[str, Any] | None = None) -> list[RunPlan]:
    """One plan per (row, seed), all sharing ``preset`` and ``overrides``.

    Raises:
        ConfigError: on an unknown method, a reserved override, repeated names, or an invalid configuration.
    """
    from sdar.config import MethodName

    overrides = dict(overrides or {})
    bad = [k for k in overrides if k in RESERVED]
    if bad:
        raise ConfigError(f"{', '.join(bad)} cannot be overridden in compare: use --methods and --seeds")
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"methods and seeds must not repeat (got {list(methods)} and {list(seeds)})")
    known = set(typing.get_args(MethodName))
    root = Path(out)
    plans = []
    for method in methods:
        base = method.rstrip("*")
        if base not in known and base not in BASE_ROWS:
            raise ConfigError(f"unknown method {method!r}; choose from {sorted(known) + sorted(BASE_ROWS)} "
                              "(append * to evaluate a method with skills in the prompt)")
        if base in BASE_ROWS and method.endswith("*"):
            raise ConfigError(f"{method!r}: base-model rows take no *; skill_prompt is the base model with skills")
        for seed in seeds:
            if base in BASE_ROWS:
                folder = root / base / f"seed{seed}"
                cfg = load_config(preset, overrides={**overrides, "seed": seed, "out_dir": str(folder)})
                plans.append(RunPlan(method, seed, cfg, None, folder, BASE_ROWS[base]))
                continue
            run_dir = root / base / f"seed{seed}"
            cfg = load_config(preset, overrides={**overrides, "algo.method": base, "seed": seed,
                                                 "out_dir": str(run_dir)})
            eval_dir = run_dir / ("eval_skills" if method.endswith("*") else "eval")
            plans.append(RunPlan(method, seed, cfg, run_dir, eval_dir, method.endswith("*")))
    return plans


def _checkpoint_step(path: Path | None) -> int | None:
    return int(path.name.split("_", 1)[1]) if path is not None else None


def run_state(cfg: RunConfig) -> RunState:
    """``finished``: the final checkpoint exists and metrics.jsonl has the last step (when it is written);
    ``partial``: something of the run exists; ``new``: nothing does."""
    from sdar.learner.checkpoint import latest_checkpoint

    run = Path(cfg.out_dir)
    last = cfg.total_steps - 1
    ckpt_step = _checkpoint_step(latest_checkpoint(run / "checkpoints"))
    logged = {int(r["step"]) for r in load_rows(run)}
    if ckpt_step == last and (last in logged or not cfg.log.jsonl):
        return "finished"
    if ckpt_step is not None or logged or (run / "config.yaml").is_file():
        return "partial"
    return "new"


def _check_same_config(cfg: RunConfig) -> None:
    path = Path(cfg.out_dir) / "config.yaml"
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    try:  # a run written before a setting existed got that setting's default: fill it in before comparing
        old = yaml.safe_load(dump_yaml(from_dict(RunConfig, old)))
    except (ConfigError, TypeError, ValueError):
        pass  # a setting was removed or renamed since: compare the raw files and report the difference
    new = yaml.safe_load(dump_yaml(cfg))
    for key in NOT_TRAINING_KEYS:
        old.pop(key, None)
        new.pop(key, None)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"{path} was trained with different settings (differences under: {', '.join(diff)}); "
                          "use another --out folder or delete that run folder")


def ensure_trained(plan: RunPlan) -> RunState:
    """Train the plan's run unless it finished; resume it when it was interrupted. Returns the state found."""
    import sdar.train as train_module

    _check_same_config(plan.cfg)
    state = run_state(plan.cfg)
    if state == "finished":
        log.info("%s: finished earlier, not trained again", plan.cfg.out_dir)
        return state
    log.info("%s: %s", plan.cfg.out_dir, "resuming" if state == "partial" else "training")
    train_module.train(dataclasses.replace(plan.cfg, resume=state == "partial"))
    if run_state(plan.cfg) != "finished":
        raise RuntimeError(f"{plan.cfg.out_dir}: training ended without a final checkpoint at step "
                           f"{plan.cfg.total_steps - 1}; see the training log")
    return state


def ensure_evaluated(plan: RunPlan) -> EvalResult:
    """Evaluate the plan's final checkpoint (or base model) with sampling seed = the plan's seed, reusing an
    ``eval.json`` whose checkpoint and evaluation settings are unchanged."""
    from sdar.learner.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(plan.run_dir / "checkpoints") if plan.run_dir is not None else None
    if plan.run_dir is not None and ckpt is None:
        raise FileNotFoundError(f"{plan.run_dir} has no checkpoint to evaluate; train it first")
    cfg = eval_config(plan.cfg, out_dir=plan.eval_dir, eval_with_skills=plan.with_skills)
    cached = plan.eval_dir / EVAL_FILE
    if cached.is_file():
        old = read_result(cached)
        same_ckpt = old.checkpoint == (str(ckpt) if ckpt is not None else None)
        if same_ckpt and old.config_digest == config_digest(cfg) and old.seeds == (plan.seed,):
            log.info("%s: evaluated earlier, result reused", cached)
            return dataclasses.replace(old, label=plan.method)
    result = evaluate_model(cfg, checkpoint=ckpt, seeds=[plan.seed], label=plan.method)
    write_result(result, plan.eval_dir)
    return result


# ------------------------------------------------------------------------------------------------------- tables
def method_summaries(results: Mapping[str, Sequence[EvalResult]]) -> dict[str, dict[str, Interval]]:
    """Per row: mean and 95% interval of every metric over its runs (each run evaluated with one sampling seed)."""
    out = {}
    for method, runs in results.items():
        env = runs[0].env
        out[method] = summarise_seeds([r.outcomes[r.seeds[0]] for r in runs], env)
    return out


def in_training_table(rows_by_method: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]) -> str | None:
    """Final and best of the in-training evaluations per method (mean ± t-interval over seeds); None if no run
    evaluated during training."""
    specs = (("eval/success", 100.0, "success"), ("eval/score", 1.0, "score"), ("eval/em", 1.0, "EM"))
    table_rows: list[tuple[str, dict[str, Interval]]] = []
    used: list[tuple[str, str]] = []
    for method, runs in rows_by_method.items():
        cells: dict[str, Interval] = {}
        for key, scale, name in specs:
            fbs = [final_and_best(rows, key, scale) for rows in runs]
            if not fbs or any(fb is None for fb in fbs):
                continue
            for part in ("final", "best", "best_step"):
                col = f"{key}:{part}"
                cells[col] = seed_interval([fb[part] for fb in fbs if fb is not None])
                header = {"final": f"final {name}", "best": f"best {name}", "best_step": "best at step"}[part]
                if (col, header) not in used:
                    used.append((col, header))
        if cells:
            table_rows.append((display_name(method), cells))
    return markdown_table(table_rows, used) if table_rows else None


def comparison_markdown(results: Mapping[str, Sequence[EvalResult]], *, title: str, notes: Sequence[str] = (),
                        in_training: str | None = None, plots: Sequence[tuple[str, str]] = ()) -> str:
    """The comparison page: a Table-1-shaped table of the final checkpoints, the in-training final/best table
    and the plots."""
    summaries = method_summaries(results)
    env = next(iter(results.values()))[0].env
    keys = [k for s in summaries.values() for k in s]
    table = markdown_table([(display_name(m), s) for m, s in summaries.items()], table_columns(env, keys))
    first = next(iter(results.values()))[0]
    decoding = "greedy" if first.temperature == 0 else f"temperature {first.temperature:g}"
    all_iv = {f"{m}/{k}": iv for m, s in summaries.items() for k, iv in s.items()}
    lines = [f"# {title}", "", *[f"- {n}" for n in notes],
             f"- evaluation panel: {len(first.panel)} episodes (digest `{first.panel_hash}`), {decoding}, "
             "the same for every row and seed",
             f"- {ci_note(all_iv)}; values in percent", "",
             "## Final checkpoints on the evaluation panel", "", table, ""]
    if in_training is not None:
        lines += ["## In-training evaluation: final and best", "",
                  "The best value is the maximum over the periodic evaluations (same panel); the final value is the "
                  "last of them.", "", in_training, ""]
    if plots:
        lines += ["## Training curves (mean over seeds, 95% t-band)", ""]
        lines += [f"![{t}]({f})" for t, f in plots]
    return "\n".join(lines) + "\n"


def _curve_plots(rows_by_method: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], out: Path) -> tuple[
        list[tuple[str, str]], list[str]]:
    """One PNG per curve metric with a line (and t-band over seeds) per method; returns (drawn, skipped)."""
    from sdar.plots import Series, line_chart

    drawn, skipped = [], []
    for key, scale, name, title, ylabel in CURVES:
        lines = []
        for method, runs in rows_by_method.items():
            per_run = [dict(zip(*series(rows, key, scale))) for rows in runs]
            if not per_run or not all(per_run):
                continue
            steps = sorted(set.intersection(*(set(d) for d in per_run)))
            ivs = [seed_interval([d[s] for d in per_run]) for s in steps]
            lines.append(Series(display_name(method), steps, [iv.mean for iv in ivs],
                                [iv.mean - iv.half_width for iv in ivs], [iv.mean + iv.half_width for iv in ivs]))
        if lines:
            line_chart(out / name, lines, title=title, xlabel="training step", ylabel=ylabel)
            drawn.append((title, name))
        else:
            skipped.append(f"{title}: no run logged {key}")
    return drawn, skipped


def _diagnostic_plots(runs_by_method: Mapping[str, Sequence[Path]],
                      rows_by_method: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], out: Path) -> tuple[
        list[tuple[str, str]], list[str]]:
    """The teacher-gap diagnostics per method, pooled over seeds and steps: Δ histogram (saved Δ samples), mean gap
    by turn index and by relative position in the response; returns (drawn, skipped)."""
    from sdar.plots import bar_chart, histograms
    from sdar.report import gap_position_keys, gap_turn_keys, load_delta_samples

    drawn: list[tuple[str, str]] = []
    skipped: list[str] = []
    deltas = []
    for method, dirs in runs_by_method.items():
        pooled = [v for d in dirs for v in ((load_delta_samples(d) or ([], None))[0])]
        if pooled:
            deltas.append((display_name(method), pooled))
    if deltas:
        histograms(out / "delta_hist.png", deltas, title="Teacher-student gap Δ (saved samples, all steps and seeds)",
                   xlabel="Δ = log π_T − log π_θ (nats)")
        drawn.append(("Histogram of Δ", "delta_hist.png"))
    else:
        skipped.append("histogram of Δ: no run saved Δ samples")
    for keys_of, file, title, xlabel in (
            (gap_turn_keys, "gap_by_turn.png", "Mean gap Δ by turn index", "turn index"),
            (gap_position_keys, "gap_by_position.png", "Mean gap Δ by relative position in the response",
             "part of the response (quarters of its tokens)")):
        all_rows = [r for runs in rows_by_method.values() for rows in runs for r in rows]
        keys = keys_of(all_rows)
        groups = []
        for method, runs in rows_by_method.items():
            rows = [r for rs in runs for r in rs]
            means = []
            for _, key in keys:
                values = [float(r[key]) for r in rows if key in r]
                means.append(sum(values) / len(values) if values else float("nan"))
            if any(any(key in r for r in rows) for _, key in keys):
                groups.append((display_name(method), means))
        if groups:
            bar_chart(out / file, [label for label, _ in keys], groups, title=title, xlabel=xlabel,
                      ylabel="mean Δ (nats per token)")
            drawn.append((title, file))
        else:
            skipped.append(f"{title}: no run logged it (no teacher)")
    return drawn, skipped


def run_compare(preset: str | Path, methods: Sequence[str], seeds: Sequence[int], out: str | Path,
                overrides: Mapping[str, Any] | None = None) -> Path:
    """Train, evaluate and tabulate; returns the path of ``table.md``."""
    root = Path(out)
    plans = plan_runs(preset, methods, seeds, root, overrides)
    for plan in plans:
        if plan.run_dir is not None:
            ensure_trained(plan)
    results: dict[str, list[EvalResult]] = {}
    for plan in plans:
        results.setdefault(plan.method, []).append(ensure_evaluated(plan))
    panels = {r.panel_hash for rs in results.values() for r in rs}
    if len(panels) != 1:
        raise RuntimeError(f"the evaluations used different panels ({sorted(panels)}); the runs in {root} do not "
                           "share their environment settings, so they cannot be compared")
    rows_by_method = {m: [load_rows(p.run_dir) for p in plans if p.method == m and p.run_dir is not None]
                      for m in methods if not m.endswith("*") and m not in BASE_ROWS}
    drawn, skipped = _curve_plots(rows_by_method, root)
    runs_by_method = {m: [p.run_dir for p in plans if p.method == m and p.run_dir is not None] for m in rows_by_method}
    more_drawn, more_skipped = _diagnostic_plots(runs_by_method, rows_by_method, root)
    drawn, skipped = drawn + more_drawn, skipped + more_skipped
    cfg = plans[0].cfg
    notes = [f"preset `{preset}`, overrides {dict(overrides or {})}", f"environment `{cfg.env.name}`, model "
             f"`{cfg.model.name}`, {cfg.total_steps} training steps, seeds {list(seeds)}",
             *[f"plot not drawn: {s}" for s in skipped]]
    text = comparison_markdown(results, title="Method comparison", notes=notes,
                               in_training=in_training_table(rows_by_method), plots=drawn)
    (root / "table.md").write_text(text)
    summaries = method_summaries(results)
    (root / "results.json").write_text(json.dumps(
        {m: {"summary": {k: iv.to_json() for k, iv in s.items()},
             "runs": [str(p.eval_dir / EVAL_FILE) for p in plans if p.method == m]} for m, s in summaries.items()},
        indent=1))
    return root / "table.md"


def main(argv: Sequence[str]) -> int:
    """Entry point of ``sdar compare``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="sdar compare",
        description="Train each method x seed with identical data and panels, evaluate the final checkpoints and "
                    "write DIR/table.md (Table-1 layout) with plots. Any other --section.key VALUE overrides the "
                    "preset for every run.")
    parser.add_argument("--config", required=True, help="preset shared by every run (e.g. configs/demo_cpu.yaml)")
    parser.add_argument("--methods", nargs="+", required=True,
                        help="training methods, vanilla, skill_prompt, or METHOD* (evaluated with skills)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="comparison folder: DIR/<method>/seed<k>")
    try:
        rest, overrides = parse_overrides(list(argv), ("config", "methods", "seeds", "out"))
        args = parser.parse_args(rest)
        path = run_compare(args.config, args.methods, args.seeds, args.out, overrides)
    except ConfigError as e:
        sys.stderr.write(f"sdar compare: {e}\n")
        return 2
    sys.stdout.write(path.read_text() + f"\nwritten: {path}\n")
    return 0
