"""`sdar compare`: train methods × seeds on identical data, evaluate every final checkpoint on one panel, and
tabulate the results like the paper's Table 1 with training-curve plots.

Run ``DIR/<method>/seed<k>`` trains ``algo.method=<method>`` with ``seed=k`` and the same preset and overrides as
every other run, so all methods see the same training tasks at each step and the same evaluation panel. A finished
run (its metrics reach the last step and its final checkpoint exists) is not trained again, an interrupted one is
resumed, and an evaluation whose checkpoint and settings are unchanged is read back from its ``eval.json``.

Besides training methods, the rows ``vanilla`` (the base model) and ``skill_prompt`` (the base model with skills in
the prompt) are evaluated without training, and ``<method>*`` evaluates ``<method>``'s runs with skills in the
prompt (the paper's starred rows).

``table.md`` holds: the final checkpoints on the panel (mean and 95% interval kept within [0, 100]: a percentile
bootstrap over seeds and the episodes within each seed, or the Wilson interval for one seed); the difference of each
row's final success to a baseline row paired by seed (paired bootstrap interval, exact sign-flip test); the
in-training final and best evaluations; the steps each method needed to reach a success threshold; the gate
statistics of the last 10 steps; and the training curves with bands within the metric's range.
``results.json`` holds the same numbers.
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
from sdar.commands.evaluate import (
    EVAL_FILE,
    EvalResult,
    ci_note,
    config_digest,
    legacy_config_digest,
    eval_config,
    evaluate_model,
    metrics_of,
    parse_overrides,
    read_result,
    summarise_seeds,
    table_columns,
    write_result,
)
from sdar.intervals import Interval, bootstrap_over_seeds, markdown_table, metric_range, seed_interval
from sdar.metrics import final_and_best, load_rows, series
from sdar.study_stats import (
    GATE_KEYS,
    PairedComparison,
    ThresholdResult,
    default_threshold,
    gate_statistics,
    paired_comparison,
    steps_to_threshold,
)

__all__ = [
    "DISPLAY_NAMES",
    "display_name",
    "RunPlan",
    "comparison_markdown",
    "default_baseline",
    "ensure_evaluated",
    "ensure_trained",
    "main",
    "paired_vs_baseline",
    "plan_runs",
    "run_compare",
    "run_state",
    "write_comparison",
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
NOT_TRAINING_KEYS = ("resume", "device", "log", "eval_tasks", "eval_temperature", "eval_with_skills", "sft")
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
    if _extends(old, new):  # a longer run whose first steps are the finished run's: resume it
        old.pop("total_steps")
        new.pop("total_steps")
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"{path} was trained with different settings (differences under: {', '.join(diff)}); "
                          "use another --out folder or delete that run folder")


def _extends(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether ``new`` only adds steps to ``old``: more ``total_steps``, and nothing that the step count shapes (the
    RL lr is constant after a warm-up of ``optim.warmup_ratio × total_steps`` steps, so only a zero warm-up keeps
    the first steps the same)."""
    steps_old, steps_new = old.get("total_steps"), new.get("total_steps")
    if not isinstance(steps_old, int) or not isinstance(steps_new, int) or steps_new < steps_old:
        return False
    return all((d.get("optim") or {}).get("warmup_ratio", 0.0) == 0 for d in (old, new))


def ensure_trained(plan: RunPlan) -> RunState:
    """Train the plan's run unless it finished; resume it when it was interrupted. Returns the state found."""
    import sdar.commands.train as train_module

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
        same_cfg = old.config_digest in (config_digest(cfg), legacy_config_digest(cfg))
        if same_ckpt and same_cfg and old.seeds == (plan.seed,):
            log.info("%s: evaluated earlier, result reused", cached)
            return dataclasses.replace(old, label=plan.method)
    result = evaluate_model(cfg, checkpoint=ckpt, seeds=[plan.seed], label=plan.method)
    write_result(result, plan.eval_dir)
    return result


# ------------------------------------------------------------------------------------------------------- tables
PAIRED_METRIC = "success"
"""Metric of the final checkpoints compared to the baseline row, per seed (percent)."""
CurveRows = Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]
"""Method -> the metrics.jsonl rows of each of its runs."""


def default_baseline(methods: Sequence[str]) -> str:
    """The row the others are compared with: ``grpo`` when it is a row, else the first row."""
    return "grpo" if "grpo" in methods else methods[0]


def method_summaries(results: Mapping[str, Sequence[EvalResult]]) -> dict[str, dict[str, Interval]]:
    """Per row: mean and 95% interval of every metric over its runs (each run evaluated with one sampling seed),
    kept within [0, 100] (bootstrap over seeds and episodes; Wilson for one seed)."""
    out = {}
    for method, runs in results.items():
        env = runs[0].env
        out[method] = summarise_seeds([r.outcomes[r.seeds[0]] for r in runs], env, bounded=True)
    return out


def final_by_seed(runs: Sequence[EvalResult], key: str = PAIRED_METRIC) -> dict[int, float]:
    """Training seed (= the run's sampling seed) -> the final checkpoint's ``key`` in percent."""
    out = {}
    for r in runs:
        metrics = metrics_of(r.outcomes[r.seeds[0]], r.env)
        if key in metrics:
            out[r.seeds[0]] = metrics[key]
    return out


def paired_vs_baseline(results: Mapping[str, Sequence[EvalResult]], baseline: str) -> dict[str, PairedComparison]:
    """Every other row against ``baseline``: final success differences paired by seed (same training tasks and
    evaluation panel); rows without a common seed are left out."""
    base = final_by_seed(results[baseline])
    out = {}
    for method, runs in results.items():
        if method != baseline:
            paired = paired_comparison(final_by_seed(runs), base)
            if paired.seeds:
                out[method] = paired
    return out


def paired_markdown(paired: Mapping[str, PairedComparison], baseline: str) -> str:
    """The table of :func:`paired_vs_baseline` with a sentence on the methods."""
    lines = ["| Method | seeds | mean difference (pp) | 95% CI (paired bootstrap) | p (sign-flip) |",
             "|---|---:|---:|---:|---:|"]
    for method, pc in paired.items():
        iv = pc.interval
        ci = f"[{iv.lo:+.1f}, {iv.hi:+.1f}]" if iv.has_bounds else "–"
        p = f"{pc.p_value:.3f}" + ("" if pc.exact else " (sampled)")
        lines.append(f"| {display_name(method)} | {len(pc.seeds)} | {iv.mean:+.1f} | {ci} | {p} |")
    n = max((len(pc.seeds) for pc in paired.values()), default=0)
    note = (f"Final success of each row minus {display_name(baseline)}'s, per seed (same seed = same training tasks "
            "and evaluation panel; only seeds both rows have count). Interval: percentile bootstrap of the mean "
            "difference over seeds; p: two-sided sign-flip permutation test, exact (all 2^n sign patterns) up to 16 "
            f"seeds. With n seeds the smallest possible p is 2/2^n ({2 / 2 ** n:.4f} for n = {n}).")
    return note + "\n\n" + "\n".join(lines)


def in_training_table(rows_by_method: CurveRows) -> str | None:
    """Final and best of the in-training evaluations per method (mean with a bootstrap interval over seeds within
    [0, 100] for the metrics, t-interval for the step of the best); None if no run evaluated during training."""
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
                values = [fb[part] for fb in fbs if fb is not None]
                cells[col] = seed_interval(values) if part == "best_step" else \
                    bootstrap_over_seeds(values, bounds=(0.0, 100.0))
                header = {"final": f"final {name}", "best": f"best {name}", "best_step": "best at step"}[part]
                if (col, header) not in used:
                    used.append((col, header))
        if cells:
            table_rows.append((display_name(method), cells))
    return markdown_table(table_rows, used) if table_rows else None


def threshold_results(rows_by_method: CurveRows, baseline: str, threshold: float | None = None) -> tuple[
        float | None, dict[str, ThresholdResult]]:
    """``(threshold in percent, method -> steps to reach it)`` of the in-training ``eval/success``; the threshold is
    ``threshold`` or 90% of the baseline's mean final in-training success (None when the baseline has none)."""
    if threshold is None:
        base_rows = rows_by_method.get(baseline.rstrip("*"))
        threshold = default_threshold(base_rows) if base_rows else None
    if threshold is None:
        return None, {}
    return threshold, {m: steps_to_threshold(runs, threshold) for m, runs in rows_by_method.items()}


def threshold_markdown(threshold: float | None, results: Mapping[str, ThresholdResult], baseline: str,
                       given: bool) -> str:
    """The steps-to-threshold section body."""
    if threshold is None:
        return (f"No threshold: the baseline {display_name(baseline)} has no in-training evaluation (eval/success); "
                "pass --threshold PERCENT.")
    origin = "given with --threshold" if given else f"90% of {display_name(baseline)}'s mean final in-training success"
    lines = [f"First training step at which the in-training eval/success reaches {threshold:.1f}% ({origin}); runs "
             "that never reached it count as not reached.", "", "| Method | reached |", "|---|---:|"]
    lines += [f"| {display_name(m)} | {r.cell()} |" for m, r in results.items()]
    return "\n".join(lines)


def gate_markdown(rows_by_method: CurveRows) -> str | None:
    """Mean over seeds of each run's mean over its last 10 logged steps of the gate metrics; None when no run
    logged any."""
    stats = {m: gate_statistics(runs) for m, runs in rows_by_method.items()}
    if not any(stats.values()):
        return None
    rows = [(display_name(m), {k: Interval(v, float("nan"), n, "none") for k, (v, n) in s.items()})
            for m, s in stats.items()]
    return markdown_table(rows, [(k, k.removeprefix("sdar/")) for k in GATE_KEYS], digits=3)


def comparison_markdown(results: Mapping[str, Sequence[EvalResult]], *, title: str, notes: Sequence[str] = (),
                        in_training: str | None = None, plots: Sequence[tuple[str, str]] = (),
                        baseline: str | None = None, efficiency: str | None = None,
                        gates: str | None = None) -> str:
    """The comparison page: a Table-1-shaped table of the final checkpoints with bounded intervals, the paired
    differences to ``baseline`` (default :func:`default_baseline`; shown with two or more rows), and, when given,
    the in-training final/best table, the steps-to-threshold and gate sections and the plots."""
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
             f"- {ci_note(all_iv)}; values in percent",
             *(["- a row has only 2–4 seeds: a percentile bootstrap over so few seeds is too narrow, read its "
                "interval as a rough range"] if any(1 < len(runs) < 5 for runs in results.values()) else []), "",
             "## Final checkpoints on the evaluation panel", "", table, ""]
    baseline = baseline or default_baseline(list(results))
    paired = paired_vs_baseline(results, baseline) if len(results) > 1 else {}
    if paired:
        lines += [f"## Paired differences vs {display_name(baseline)}", "", paired_markdown(paired, baseline), ""]
    if in_training is not None:
        lines += ["## In-training evaluation: final and best", "",
                  "The best value is the maximum over the periodic evaluations (same panel); the final value is the "
                  "last of them. Mean [95% percentile bootstrap over seeds] (no interval for one seed); best at "
                  "step: mean ± t-interval.", "", in_training, ""]
    if efficiency is not None:
        lines += ["## Sample efficiency: steps to threshold", "", efficiency, ""]
    if gates is not None:
        lines += ["## Gate statistics (mean over seeds of the last 10 logged steps)", "", gates, ""]
    if plots:
        lines += ["## Training curves", "", "Mean over seeds with a 95% band: percentile bootstrap over seeds kept "
                  "within the metric's range for success rates, gate values and ratios; t-interval otherwise.", ""]
        lines += [f"![{t}]({f})" for t, f in plots]
    return "\n".join(lines) + "\n"


def curve_interval(key: str, scale: float, values: Sequence[float]) -> Interval:
    """The band of a learning curve at one step from one value per seed: bootstrap over seeds clipped to the
    metric's range for a bounded metric (:func:`~sdar.commands.report.metric_range`), t-interval otherwise."""
    bounds = metric_range(key, scale)
    return bootstrap_over_seeds(values, bounds=bounds) if bounds is not None else seed_interval(values)


def _curve_plots(rows_by_method: CurveRows, out: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """One PNG per curve metric with a line and a band over seeds (:func:`curve_interval`) per method; returns
    (drawn, skipped)."""
    from sdar.plots import Series, line_chart

    drawn, skipped = [], []
    for key, scale, name, title, ylabel in CURVES:
        lines = []
        for method, runs in rows_by_method.items():
            per_run = [dict(zip(*series(rows, key, scale))) for rows in runs]
            if not per_run or not all(per_run):
                continue
            steps = sorted(set.intersection(*(set(d) for d in per_run)))
            ivs = [curve_interval(key, scale, [d[s] for d in per_run]) for s in steps]
            lines.append(Series(display_name(method), steps, [iv.mean for iv in ivs], [iv.lower for iv in ivs],
                                [iv.upper for iv in ivs]))
        if lines:
            line_chart(out / name, lines, title=title, xlabel="training step", ylabel=ylabel)
            drawn.append((title, name))
        else:
            skipped.append(f"{title}: no run logged {key}")
    return drawn, skipped


def _diagnostic_plots(runs_by_method: Mapping[str, Sequence[Path]], rows_by_method: CurveRows, out: Path) -> tuple[
        list[tuple[str, str]], list[str]]:
    """The teacher-gap diagnostics per method, pooled over seeds and steps: Δ histogram (saved Δ samples), mean gap
    by turn index and by relative position in the response; returns (drawn, skipped)."""
    from sdar.plots import bar_chart, histograms
    from sdar.commands.report import gap_position_keys, gap_turn_keys, load_delta_samples

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


def write_comparison(root: Path, results: Mapping[str, Sequence[EvalResult]], rows_by_method: CurveRows, *,
                     run_dirs: Mapping[str, Sequence[Path]] | None = None,
                     eval_files: Mapping[str, Sequence[str]] | None = None, notes: Sequence[str] = (),
                     baseline: str | None = None, threshold: float | None = None) -> Path:
    """Draw the plots and write ``root/table.md`` and ``root/results.json`` from evaluated rows (``results``) and
    the metric rows of the training runs (``rows_by_method``); returns table.md's path.

    Args:
        run_dirs: Run folders per training method (for the saved Δ samples of the diagnostic plots).
        eval_files: The eval.json files behind each row, listed in results.json.
        baseline: Row the others are compared with (default :func:`default_baseline`).
        threshold: Success (percent) of the steps-to-threshold table (default: 90% of the baseline's mean final
            in-training success).
    """
    baseline = baseline or default_baseline(list(results))
    drawn, skipped = _curve_plots(rows_by_method, root)
    more_drawn, more_skipped = _diagnostic_plots(run_dirs or {}, rows_by_method, root)
    drawn, skipped = drawn + more_drawn, skipped + more_skipped
    level, reached = threshold_results(rows_by_method, baseline, threshold)
    text = comparison_markdown(
        results, title="Method comparison", notes=[*notes, *[f"plot not drawn: {s}" for s in skipped]],
        in_training=in_training_table(rows_by_method), plots=drawn, baseline=baseline,
        efficiency=threshold_markdown(level, reached, baseline, threshold is not None) if rows_by_method else None,
        gates=gate_markdown(rows_by_method))
    (root / "table.md").write_text(text)
    summaries = method_summaries(results)
    paired = paired_vs_baseline(results, baseline)
    data: dict[str, Any] = {}
    for m, summary in summaries.items():
        entry: dict[str, Any] = {"summary": {k: iv.to_json() for k, iv in summary.items()},
                                 "final_success_by_seed": {str(k): v for k, v in final_by_seed(results[m]).items()},
                                 "runs": list((eval_files or {}).get(m, []))}
        if m in paired:
            entry["paired_vs_baseline"] = {"baseline": baseline, "metric": PAIRED_METRIC, **paired[m].to_json()}
        if m in reached:
            entry["steps_to_threshold"] = {"threshold": level, "metric": "eval/success", **reached[m].to_json()}
        if m in rows_by_method:
            entry["gate"] = {k: v for k, (v, _) in gate_statistics(rows_by_method[m]).items()}
        data[m] = entry
    (root / "results.json").write_text(json.dumps(data, indent=1))
    return root / "table.md"


def run_compare(preset: str | Path, methods: Sequence[str], seeds: Sequence[int], out: str | Path,
                overrides: Mapping[str, Any] | None = None, *, baseline: str | None = None,
                threshold: float | None = None) -> Path:
    """Train, evaluate and tabulate (see :func:`write_comparison`); returns the path of ``table.md``.

    Raises:
        ConfigError: on a bad plan (see :func:`plan_runs`) or a ``baseline`` that is not one of ``methods``.
    """
    if baseline is not None and baseline not in methods:
        raise ConfigError(f"--baseline {baseline!r} is not one of --methods {list(methods)}")
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
    run_dirs = {m: [p.run_dir for p in plans if p.method == m and p.run_dir is not None] for m in rows_by_method}
    eval_files = {m: [str(p.eval_dir / EVAL_FILE) for p in plans if p.method == m] for m in results}
    cfg = plans[0].cfg
    notes = [f"preset `{preset}`, overrides {dict(overrides or {})}", f"environment `{cfg.env.name}`, model "
             f"`{cfg.model.name}`, {cfg.total_steps} training steps, seeds {list(seeds)}"]
    return write_comparison(root, results, rows_by_method, run_dirs=run_dirs, eval_files=eval_files, notes=notes,
                            baseline=baseline, threshold=threshold)


def main(argv: Sequence[str]) -> int:
    """Entry point of ``sdar compare``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="sdar compare",
        description="Train each method x seed with identical data and panels, evaluate the final checkpoints and "
                    "write DIR/table.md (Table-1 layout with bounded 95% intervals, paired differences to a baseline, "
                    "steps to a success threshold, gate statistics) and DIR/results.json with plots. Any other "
                    "--section.key VALUE overrides the preset for every run.")
    parser.add_argument("--config", required=True, help="preset shared by every run (e.g. configs/demo_cpu.yaml)")
    parser.add_argument("--methods", nargs="+", required=True,
                        help="training methods, vanilla, skill_prompt, or METHOD* (evaluated with skills)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="comparison folder: DIR/<method>/seed<k>")
    parser.add_argument("--baseline", default=None, help="row the others are compared with, paired by seed "
                        "(default: grpo when it is among --methods, else the first method)")
    parser.add_argument("--threshold", type=float, default=None, help="success in percent for the steps-to-"
                        "threshold table (default: 90%% of the baseline's mean final in-training success)")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier comparison in DIR (its runs, "
                        "evaluations, table and plots) first; without it a comparison folder is reused (finished runs "
                        "kept, interrupted ones resumed) and a folder holding anything else is refused")
    known = ("config", "methods", "seeds", "out", "baseline", "threshold", "overwrite")
    try:
        rest, overrides = parse_overrides(list(argv), known)
        args = parser.parse_args(rest)
        from sdar.runfolder import COMPARE_LAYOUT, prepare_folder

        prepare_folder(args.out, COMPARE_LAYOUT, mode="overwrite" if args.overwrite else "own")
        path = run_compare(args.config, args.methods, args.seeds, args.out, overrides, baseline=args.baseline,
                           threshold=args.threshold)
    except ConfigError as e:
        message = str(e)
        sys.stderr.write((message if message.startswith("sdar compare:") else f"sdar compare: {message}") + "\n")
        return 2
    sys.stdout.write(path.read_text() + f"\nwritten: {path}\n")
    return 0
