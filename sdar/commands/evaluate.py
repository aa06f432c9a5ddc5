"""`sdar eval`: a checkpoint or base model on the fixed evaluation panel, over sampling seeds, with 95% intervals.

The panel is the runtime's ``eval_requests()``: ``eval_tasks`` tasks of the eval split, taken round-robin over task
types, with fixed episode seeds, identical for every method, checkpoint and sampling seed. Episodes are rolled out by
the training collector with the evaluation settings of the config (``eval_temperature``; 0 = greedy), only the
sampling seed varies.
Metrics are percentages, as in the paper's Table 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from sdar.config import ConfigError, RunConfig, dump_yaml, from_dict, load_config, nest_dotted, validate
from sdar.envs.registry import find_env_spec
from sdar.envs.spec import EpisodeScores, EvalColumns
from sdar.intervals import (
    BOOTSTRAP_RESAMPLES,
    Z_95,
    Interval,
    bootstrap_interval,
    markdown_table,
    seed_interval,
    wilson_interval,
)

if TYPE_CHECKING:
    from sdar.records import Trajectory

__all__ = [
    "EVAL_FILE",
    "EpisodeOutcome",
    "EvalResult",
    "ci_note",
    "config_digest",
    "legacy_config_digest",
    "episode_intervals",
    "eval_config",
    "evaluate_model",
    "main",
    "metrics_of",
    "outcome_of",
    "panel_hash",
    "parse_overrides",
    "read_result",
    "resolve_target",
    "summarise_seeds",
    "table_columns",
    "write_result",
]

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
"""Name of the JSON result written next to ``eval.md``."""

PanelEntry = tuple[str, str, int]
"""(task id, task type, episode seed) of one panel episode."""


def _columns(env: str) -> EvalColumns:
    """What ``env`` measures and how its table looks (its spec's ``eval_columns``; success only for a name no
    spec describes)."""
    spec = find_env_spec(env)
    return spec.eval_columns if spec is not None else EvalColumns()


# ----------------------------------------------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class EpisodeOutcome:
    """What one evaluation episode achieved (the per-episode data behind every metric)."""

    task_id: str
    task_type: str
    seed: int
    won: bool
    turns: int
    score: float | None = None
    """WebShop score in [0, 1]; None for other environments."""
    em: float | None = None
    """Search-QA exact match (0 or 1); None for other environments."""
    f1: float | None = None
    """Search-QA token F1 in [0, 1]; None for other environments."""
    failed: bool = False
    """The environment broke during the episode (it counts as a failure)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EpisodeOutcome:
        return cls(**data)


def outcome_of(traj: Trajectory, env: str) -> EpisodeOutcome:
    """The outcome of one episode, graded by the environment's ``EvalColumns.episode_scores``: WebShop's score
    comes from the last step, Search-QA's EM/F1 are recomputed from the episode's answer and gold answers (an
    episode that broke before its first step scores 0)."""
    grade = _columns(env).episode_scores
    scores = grade(traj) if grade is not None else EpisodeScores()
    return EpisodeOutcome(traj.task_id, traj.task_type, traj.seed, bool(traj.won), len(traj.turns), scores.score,
                          scores.em, scores.f1, traj.failed)


@dataclass(frozen=True)
class _Metric:
    groups: tuple[tuple[float, ...], ...]
    """Per-episode values (percent), one tuple per group; the metric is the mean of the group means."""
    binary: bool
    """Values are 0 or 100 (binomial interval) rather than continuous (normal interval)."""


def _by_type(outcomes: Sequence[EpisodeOutcome]) -> dict[str, list[EpisodeOutcome]]:
    groups: dict[str, list[EpisodeOutcome]] = {}
    for o in outcomes:
        groups.setdefault(o.task_type or "all", []).append(o)
    return dict(sorted(groups.items()))


def _metric_groups(outcomes: Sequence[EpisodeOutcome], env: str) -> dict[str, _Metric]:
    """Every metric of an evaluation: ``success`` (overall), ``success/<type>``, WebShop ``score`` and ``acc``,
    Search-QA ``em/<source>``, ``f1/<source>`` and their unweighted means over sources ``em/avg``, ``f1/avg``."""
    if not outcomes:
        return {}
    kind = _columns(env).metrics
    out = {"success": _Metric((tuple(100.0 * o.won for o in outcomes),), True)}
    by_type = _by_type(outcomes)
    if kind == "qa":
        em = {s: tuple(100.0 * (o.em or 0.0) for o in outs) for s, outs in by_type.items()}
        f1 = {s: tuple(100.0 * (o.f1 or 0.0) for o in outs) for s, outs in by_type.items()}
        for source in by_type:
            out[f"em/{source}"] = _Metric((em[source],), True)
            out[f"f1/{source}"] = _Metric((f1[source],), False)
        out["em/avg"] = _Metric(tuple(em.values()), True)
        out["f1/avg"] = _Metric(tuple(f1.values()), False)
        return out
    for task_type, outs in by_type.items():
        out[f"success/{task_type}"] = _Metric((tuple(100.0 * o.won for o in outs),), True)
    if kind == "score":
        out["score"] = _Metric((tuple(100.0 * (o.score or 0.0) for o in outcomes),), False)
        out["acc"] = out["success"]
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def metrics_of(outcomes: Sequence[EpisodeOutcome], env: str) -> dict[str, float]:
    """Every metric of one evaluation (one sampling seed), in percent."""
    return {k: _mean([_mean(g) for g in m.groups]) for k, m in _metric_groups(outcomes, env).items()}


def _standard_error(values: Sequence[float], binary: bool) -> float:
    n = len(values)
    mean = _mean(values)
    if binary:  # normal approximation to the binomial, in percent: sqrt(p (100 - p) / n)
        return math.sqrt(mean * (100.0 - mean) / n)
    if n < 2:
        return float("nan")
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def episode_intervals(outcomes: Sequence[EpisodeOutcome], env: str) -> dict[str, Interval]:
    """95% intervals across the episodes of one evaluation: ±1.96·SE, with SE from the binomial (success, EM) or
    the episode standard deviation (score, F1); a mean over k groups has SE = sqrt(Σ SE_i²) / k."""
    out = {}
    for key, m in _metric_groups(outcomes, env).items():
        se = math.sqrt(sum(_standard_error(g, m.binary) ** 2 for g in m.groups)) / len(m.groups)
        out[key] = Interval(_mean([_mean(g) for g in m.groups]), Z_95 * se, sum(len(g) for g in m.groups),
                            "binomial" if m.binary else "normal")
    return out


def summarise_seeds(per_seed: Sequence[Sequence[EpisodeOutcome]], env: str, *,
                    bounded: bool = False) -> dict[str, Interval]:
    """Mean and 95% interval of every metric (metrics every seed has).

    Default: a t-interval over seeds for two or more seeds, the across-episode interval of
    :func:`episode_intervals` for one. ``bounded=True`` keeps every interval within the metric's range [0, 100]:
    a percentile bootstrap over the seeds and the episodes within each seed (:func:`~sdar.intervals.bootstrap_interval`;
    a mean over groups, such as ``em/avg``, resamples the episodes of each group separately), or, for one seed and a
    0/1 metric of one group (success, a task type, EM of one source), the Wilson score interval of its episodes.
    """
    if not bounded:
        if len(per_seed) == 1:
            return episode_intervals(per_seed[0], env)
        metrics = [metrics_of(outs, env) for outs in per_seed]
        keys = [k for k in metrics[0] if all(k in m for m in metrics)] if metrics else []
        return {k: seed_interval([m[k] for m in metrics]) for k in keys}
    groups = [_metric_groups(outs, env) for outs in per_seed]
    keys = [k for k in groups[0] if all(k in g for g in groups)] if groups else []
    out = {}
    for key in keys:
        runs = [g[key] for g in groups]
        if len(runs) == 1 and runs[0].binary and len(runs[0].groups) == 1:
            values = runs[0].groups[0]
            out[key] = wilson_interval(round(sum(values) / 100.0), len(values), scale=100.0)
        else:
            out[key] = bootstrap_interval([m.groups for m in runs], bounds=(0.0, 100.0))
    return out


def table_columns(env: str, keys: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(metric key, header)`` of the paper's Table 1 for ``env``, restricted to the metrics in ``keys``.

    ALFWorld: Pick … Pick2 and the overall success (ALF Avg, not the mean of the types); WebShop: Score and Acc;
    Search-QA: EM per data set and their mean (SQA Avg); the built-in game: success per type and overall.
    """
    present = set(keys)
    layout = _columns(env)
    cols: list[tuple[str, str]] = []
    if layout.group_prefix:
        prefix = layout.group_prefix + "/"
        totals = {key for key, _ in layout.totals}
        groups = [k[len(prefix):] for k in present if k.startswith(prefix) and k not in totals]
        names = dict(layout.group_names)
        ordered = [g for g in names if g in groups] + sorted(g for g in groups if g not in names)
        cols = [(prefix + g, names.get(g, g)) for g in ordered]
    cols.extend(layout.totals)
    return [(k, h) for k, h in cols if k in present]


def ci_note(summary: Mapping[str, Interval]) -> str:
    """One sentence saying how the intervals of ``summary`` were computed."""
    methods = {iv.method for iv in summary.values()}
    if "t" in methods:
        n = max(iv.n for iv in summary.values())
        return f"mean ± 95% CI half-width, t-distribution over {n} seeds"

    def seeds(method: str) -> str:
        counts = sorted({iv.n for iv in summary.values() if iv.method == method})
        return f"{counts[0]} seeds" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds"

    bounded = []
    if "bootstrap" in methods:
        one = all(iv.n == 1 for iv in summary.values() if iv.method == "bootstrap")
        over = "over the episodes of the one seed" if one else f"over {seeds('bootstrap')} and the episodes within " \
            "each seed"
        bounded.append(f"percentile bootstrap {over} ({BOOTSTRAP_RESAMPLES} resamples, fixed random seed)")
    if "bootstrap_seeds" in methods:
        bounded.append(f"percentile bootstrap over {seeds('bootstrap_seeds')} ({BOOTSTRAP_RESAMPLES} resamples, "
                       "fixed random seed)")
    if "wilson" in methods:
        bounded.append("Wilson score interval over the episodes for success rates and EM")
    if bounded:
        return "mean [95% CI]: " + "; ".join(bounded) + "; the bounds stay within the metric's range"
    parts = []
    if "binomial" in methods:
        parts.append("normal approximation to the binomial for success and EM")
    if "normal" in methods:
        parts.append("normal interval from the episode standard deviation for score, F1 and averages")
    if not parts:
        return "single values (no interval)"
    return "one seed: 95% CI across episodes (" + "; ".join(parts) + ")"


def panel_hash(panel: Sequence[PanelEntry]) -> str:
    """A short digest of the panel; equal digests mean the same tasks with the same episode seeds."""
    return hashlib.sha256(json.dumps([list(p) for p in panel]).encode()).hexdigest()[:16]


TRAINING_ONLY = ("algo", "optim", "sft", "total_steps", "eval_every", "eval_at_start", "save_every",
                 "keep_checkpoints", "resume", "model.gradient_checkpointing")
"""Settings an evaluation of given weights does not read: they shape training only (the checkpoint identity covers
what training did), so a longer run of the same study reuses its base-model evaluations."""


def config_digest(cfg: RunConfig) -> str:
    """A short digest of what an evaluation depends on besides the weights and seeds: the configuration without
    ``TRAINING_ONLY`` settings."""
    data = yaml.safe_load(dump_yaml(cfg))
    for key in TRAINING_ONLY:
        section, _, name = key.rpartition(".")
        (data[section] if section else data).pop(name, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def legacy_config_digest(cfg: RunConfig) -> str:
    """The digest earlier versions wrote (the whole configuration), still accepted for results written by them."""
    return hashlib.sha256(dump_yaml(cfg).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvalResult:
    """Outcomes of every panel episode for every sampling seed, with the identity of what was evaluated."""

    label: str
    env: str
    model: str
    checkpoint: str | None
    step: int | None
    eval_with_skills: bool
    temperature: float
    panel: tuple[PanelEntry, ...]
    outcomes: Mapping[int, tuple[EpisodeOutcome, ...]]
    """Sampling seed -> one outcome per panel episode, in panel order."""
    config_digest: str = ""

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.outcomes)

    @property
    def panel_hash(self) -> str:
        return panel_hash(self.panel)

    def metrics_by_seed(self) -> dict[int, dict[str, float]]:
        return {seed: metrics_of(outs, self.env) for seed, outs in self.outcomes.items()}

    def summary(self) -> dict[str, Interval]:
        """Mean and 95% interval of every metric over the sampling seeds (over episodes with one seed)."""
        return summarise_seeds(list(self.outcomes.values()), self.env)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "env": self.env, "model": self.model, "checkpoint": self.checkpoint,
            "step": self.step, "eval_with_skills": self.eval_with_skills, "temperature": self.temperature,
            "seeds": list(self.seeds), "config_digest": self.config_digest, "panel_hash": self.panel_hash,
            "panel": [list(p) for p in self.panel],
            "summary": {k: iv.to_json() for k, iv in self.summary().items()},
            "per_seed": {str(s): m for s, m in self.metrics_by_seed().items()},
            "episodes": {str(s): [o.to_json() for o in outs] for s, outs in self.outcomes.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalResult:
        return cls(
            label=str(data["label"]), env=str(data["env"]), model=str(data["model"]),
            checkpoint=data.get("checkpoint"), step=data.get("step"),
            eval_with_skills=bool(data["eval_with_skills"]), temperature=float(data["temperature"]),
            panel=tuple((str(a), str(b), int(c)) for a, b, c in data["panel"]),
            outcomes={int(s): tuple(EpisodeOutcome.from_json(o) for o in outs)
                      for s, outs in data["episodes"].items()},
            config_digest=str(data.get("config_digest", "")),
        )

    def to_markdown(self) -> str:
        """A one-row Table-1-style table plus the protocol (panel, temperature, seeds, interval method)."""
        summary = self.summary()
        columns = table_columns(self.env, summary)
        decoding = "greedy" if self.temperature == 0 else f"temperature {self.temperature:g}"
        what = f"checkpoint `{self.checkpoint}` (step {self.step})" if self.checkpoint else f"base model `{self.model}`"
        lines = [
            f"# Evaluation: {self.label}",
            "",
            f"- evaluated: {what}; environment `{self.env}`",
            f"- panel: {len(self.panel)} episodes (digest `{self.panel_hash}`), {decoding}, "
            f"{'with' if self.eval_with_skills else 'without'} skills in the prompt",
            f"- sampling seeds: {', '.join(str(s) for s in self.seeds)}",
            f"- {ci_note(summary)}",
        ]
        if self.temperature == 0 and len(self.seeds) > 1:
            lines.append("- greedy decoding: the sampling seeds give the same episodes, so the interval is 0")
        lines += ["", markdown_table([(self.label, summary)], columns), ""]
        per_seed = self.metrics_by_seed()
        lines += ["Per sampling seed:", "",
                  markdown_table([(str(s), {k: Interval(v, float("nan"), 1, "none") for k, v in m.items()})
                                  for s, m in per_seed.items()], columns, first="Sampling seed"), ""]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ running
def eval_config(cfg: RunConfig, *, out_dir: str | Path, eval_with_skills: bool | None = None) -> RunConfig:
    """``cfg`` made quiet for evaluation: no metric files, no progress bar, no reference copy of the model."""
    overrides: dict[str, Any] = {"out_dir": str(out_dir), "log.jsonl": False, "log.tensorboard": False,
                                 "log.progress": False, "log.sample_every": 0, "algo.kl_coef": 0.0,
                                 "resume": False}
    if eval_with_skills is not None:
        overrides["eval_with_skills"] = eval_with_skills
    out = from_dict(RunConfig, nest_dotted(overrides), base=cfg)
    validate(out)
    return out


def load_policy_weights(model: Any, checkpoint: str | Path) -> int:
    """Load the weights of a ``step_XXXXXX`` checkpoint folder into ``model``; returns the checkpoint's step."""
    from sdar.learner.checkpoint import load_checkpoint

    state, extra = load_checkpoint(checkpoint, restore_rng=False)
    if "sharded_folder" in state:  # written by a torchrun (FSDP) run: gather the shards into full weights
        from sdar.distributed import consolidate_sharded

        model.load_state_dict(consolidate_sharded(checkpoint))
    else:
        model.load_state_dict(state["model"])
    return int(extra["step"])


def evaluate_model(cfg: RunConfig, *, checkpoint: str | Path | None = None, seeds: Sequence[int] | None = None,
                   label: str = "") -> EvalResult:
    """Roll out the panel once per sampling seed with the model of ``cfg`` (weights from ``checkpoint`` if given).

    Args:
        cfg: The run configuration (pass it through :func:`eval_config` first to keep the run folder untouched).
        checkpoint: A ``step_XXXXXX`` folder whose weights replace the freshly loaded ``cfg.model.name``.
        seeds: Sampling seeds (default: ``cfg.seed``); seed ``k`` samples as the in-training evaluation of a run
            with ``seed=k`` does.
        label: Row name in tables (default: the method name).
    """
    from sdar.metrics import RolloutProgress
    from sdar.rollout.collect import collect_episodes
    from sdar.rollout.plan import mix_seed
    from sdar.runtime import build

    seeds = list(seeds) if seeds else [cfg.seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sampling seeds must be distinct, got {seeds}")
    parts = build(cfg)
    try:
        step = None
        if checkpoint is not None:
            step = load_policy_weights(parts.learner.policy_module, checkpoint)
        requests = parts.collector.planner.panel().requests
        panel = tuple((r.task.task_id, r.task.task_type, r.seed) for r in requests)
        outcomes: dict[int, tuple[EpisodeOutcome, ...]] = {}
        base = parts.collector.eval_settings
        for seed in seeds:  # seed k samples as the in-training evaluation of a run with seed k
            settings = dataclasses.replace(base, sampling=dataclasses.replace(base.sampling, seed=mix_seed(seed, 0, 2)))
            progress = RolloutProgress(f"eval seed {seed}") if parts.dp.is_main else None
            trajs = collect_episodes(requests, parts.make_env, parts.generator, parts.tokenizer, settings,
                                     progress=progress)
            outcomes[seed] = tuple(outcome_of(t, cfg.env.name) for t in trajs)
            log.info("eval seed %d: success %.1f%%", seed, metrics_of(outcomes[seed], cfg.env.name)["success"])
    finally:
        parts.close()
    return EvalResult(label=label or cfg.algo.method, env=cfg.env.name, model=cfg.model.name,
                      checkpoint=str(checkpoint) if checkpoint is not None else None, step=step,
                      eval_with_skills=cfg.eval_with_skills, temperature=cfg.eval_temperature, panel=panel,
                      outcomes=outcomes, config_digest=config_digest(cfg))


def write_result(result: EvalResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / EVAL_FILE, out / "eval.md"
    js.write_text(json.dumps(result.to_json(), indent=1))
    md.write_text(result.to_markdown())
    return js, md


def read_result(path: str | Path) -> EvalResult:
    """An :class:`EvalResult` from an ``eval.json`` file (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / EVAL_FILE
    from sdar.errors import read_json

    return EvalResult.from_json(read_json(p, what="evaluation result"))


# ---------------------------------------------------------------------------------------------------------- CLI
def _value(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(text)
        except ValueError:
            return value
    return value


def parse_overrides(argv: Sequence[str], known: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Split ``argv`` into arguments for argparse and dotted config overrides.

    Every ``--name VALUE`` or ``--name=VALUE`` whose name is not in ``known`` (option names without dashes) is a
    config override, e.g. ``--model.name Qwen/Qwen2.5-3B-Instruct`` or ``--eval_temperature 0`` (dashes in the name
    read as underscores); values are read as YAML scalars.

    Raises:
        ConfigError: when an override has no value.
    """
    rest: list[str] = []
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if not name or name in known or arg in ("-h", "--help"):
            rest.append(arg)
            i += 1
            continue
        key = name.replace("-", "_")  # --rollout.group-size is --rollout.group_size, as in `sdar train`
        if "=" in arg:
            overrides[key] = _value(arg.split("=", 1)[1])
            i += 1
        elif i + 1 < len(argv):
            overrides[key] = _value(argv[i + 1])
            i += 2
        else:
            raise ConfigError(f"--{name} needs a value, e.g. --{name} VALUE")
    return rest, overrides


def resolve_target(path: str | Path) -> tuple[Path, Path]:
    """``(run folder, checkpoint folder)`` for a ``step_XXXXXX`` folder or a run folder (its latest checkpoint).

    Raises:
        FileNotFoundError: when ``path`` is neither, or the run has no complete checkpoint.
    """
    from sdar.learner.checkpoint import latest_checkpoint

    p = Path(path)
    if (p / "state.json").is_file():
        return p.parent.parent, p
    if (p / "checkpoints").is_dir():
        ckpt = latest_checkpoint(p / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(f"{p}/checkpoints holds no complete checkpoint; train the run first "
                                    "(checkpoints are written every save_every steps and at the end)")
        return p, ckpt
    raise FileNotFoundError(f"{p} is neither a checkpoint folder (step_XXXXXX with state.json) nor a run folder "
                            "(with checkpoints/); pass e.g. runs/sdar or runs/sdar/checkpoints/step_000149")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdar eval",
        description="Evaluate a checkpoint, a run's latest checkpoint, or a base model on the fixed panel. "
                    "Any other --section.key VALUE overrides the configuration (e.g. --model.name NAME, "
                    "--eval_temperature 0, --eval_tasks 128, --device cpu).")
    p.add_argument("target", nargs="?", default=None,
                   help="checkpoint folder or run folder; omit to evaluate the base model --model.name")
    p.add_argument("--config", default=None, help="preset for the environment and evaluation settings "
                   "(default: the run's config.yaml; required without a target)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="sampling seeds (default: the config's seed)")
    p.add_argument("--eval-with-skills", action="store_true",
                   help="retrieved skills in the prompt (the paper's starred rows, e.g. Skill-Prompt*)")
    p.add_argument("--out", type=Path, default=None, help="output folder for eval.json and eval.md "
                   "(default: <run>/eval/<checkpoint>, or runs/eval/<label> for a base model)")
    p.add_argument("--label", default=None, help="row name in tables (default: method, vanilla or skill_prompt)")
    p.add_argument("--overwrite", action="store_true", help="replace the eval.json and eval.md of an earlier "
                   "evaluation in the output folder (without it a non-empty output folder is refused)")
    return p


def _resolve_config(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[RunConfig, Path | None, Path | None]:
    """(config, run folder, checkpoint) from the parsed command line."""
    if args.target is None:
        if args.config is None and "env.name" not in overrides:
            raise ConfigError("give a checkpoint or run folder, or --config PRESET (and --model.name NAME) "
                              "to evaluate a base model")
        return load_config(args.config, overrides=overrides), None, None
    run_dir, ckpt = resolve_target(args.target)
    run_config = run_dir / "config.yaml"
    if not run_config.is_file():
        raise ConfigError(f"{run_config} is missing; pass --config PRESET with the run's settings")
    if args.config is None:
        return load_config(run_config, overrides=overrides), run_dir, ckpt
    model = load_config(run_config).model  # the weights belong to the run's model
    merged = {f"model.{k}": v for k, v in dataclasses.asdict(model).items()}
    merged.update(overrides)
    return load_config(args.config, overrides=merged), run_dir, ckpt


def main(argv: Sequence[str]) -> int:
    """Entry point of ``sdar eval``; returns the exit status."""
    known = ("config", "seeds", "eval-with-skills", "out", "label", "overwrite")
    parser = _build_parser()
    try:
        rest, overrides = parse_overrides(list(argv), known)
        args = parser.parse_args(rest)
        cfg, run_dir, ckpt = _resolve_config(args, overrides)
    except (ConfigError, FileNotFoundError) as e:
        sys.stderr.write(f"sdar eval: {e}\n")
        return 2
    with_skills = bool(args.eval_with_skills or cfg.eval_with_skills)
    if args.label:
        label = args.label
    elif ckpt is not None:
        label = cfg.algo.method + ("*" if with_skills else "")
    else:
        label = "skill_prompt" if with_skills else "vanilla"
    if args.out is not None:
        out = args.out
    elif run_dir is not None and ckpt is not None:
        out = run_dir / "eval" / (ckpt.name + ("_skills" if with_skills else ""))
    else:
        out = Path("runs") / "eval" / label
    from sdar.runfolder import EVAL_LAYOUT, prepare_folder

    try:
        prepare_folder(out, EVAL_LAYOUT, mode="overwrite" if args.overwrite else "new")
    except ConfigError as e:
        sys.stderr.write(f"{e}\n")
        return 2
    cfg = eval_config(cfg, out_dir=out, eval_with_skills=with_skills)
    result = evaluate_model(cfg, checkpoint=ckpt, seeds=args.seeds, label=label)
    js, md = write_result(result, out)
    sys.stdout.write(result.to_markdown() + f"\nwritten: {js} and {md}\n")
    return 0
