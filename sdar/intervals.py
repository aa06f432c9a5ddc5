"""Interval arithmetic and markdown tables shared by the run, evaluation and comparison reports.

Intervals: :func:`seed_interval` (t-interval over seeds, for unbounded metrics), :func:`wilson_interval` (k successes
of n episodes), :func:`bootstrap_interval` / :func:`bootstrap_seeds_episodes` (percentile bootstrap that resamples
seeds, then episodes within each resampled seed) and :func:`bootstrap_over_seeds` (one value per seed). The last
three never leave the range of the data, so a success rate's interval stays within [0, 1] (or [0, 100] in percent);
:func:`metric_range` says which metrics are bounded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "Z_95",
    "Interval",
    "bootstrap_interval",
    "bootstrap_over_seeds",
    "bootstrap_seeds_episodes",
    "markdown_table",
    "metric_range",
    "normal_quantile",
    "seed_interval",
    "t_quantile",
    "wilson_interval",
]

Z_95 = 1.959963984540054
"""The 0.975 quantile of the standard normal distribution."""
BOOTSTRAP_RESAMPLES = 2000
"""Resamples of every bootstrap interval."""
BOOTSTRAP_SEED = 0
"""Seed of the bootstrap's random generator (fixed, so a report is reproducible)."""

# -------------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Interval:
    """A mean with its 95% confidence interval: symmetric (``mean ± half_width``) or with its own bounds
    ``[lo, hi]`` (an interval kept within a metric's range is usually asymmetric)."""

    mean: float
    half_width: float
    """NaN when no interval can be computed (e.g. one value); for an interval with bounds, (hi - lo) / 2."""
    n: int
    """Number of values (seeds) or episodes behind the interval."""
    method: str
    """``t`` (t-distribution over seeds), ``binomial`` (normal approximation to the binomial over episodes),
    ``normal`` (normal interval from the episode standard deviation), ``wilson`` (Wilson score interval over
    episodes), ``bootstrap`` (percentile bootstrap over seeds and the episodes within each seed),
    ``bootstrap_seeds`` (percentile bootstrap over one value per seed) or ``none``."""
    lo: float = field(default=float("nan"))
    """Lower bound of an interval with its own bounds; NaN for a symmetric one."""
    hi: float = field(default=float("nan"))
    """Upper bound of an interval with its own bounds; NaN for a symmetric one."""

    @classmethod
    def from_bounds(cls, mean: float, lo: float, hi: float, n: int, method: str) -> Interval:
        """An interval with its own bounds (its half-width is half the distance between them)."""
        return cls(mean, (hi - lo) / 2.0, n, method, lo, hi)

    @property
    def has_bounds(self) -> bool:
        """Whether the interval has its own (possibly asymmetric) bounds."""
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def lower(self) -> float:
        """Lower end: ``lo``, else ``mean - half_width`` (NaN when there is no interval)."""
        return self.lo if self.has_bounds else self.mean - self.half_width

    @property
    def upper(self) -> float:
        """Upper end: ``hi``, else ``mean + half_width`` (NaN when there is no interval)."""
        return self.hi if self.has_bounds else self.mean + self.half_width

    def cell(self, digits: int = 1) -> str:
        """``"62.5 [55.1, 69.4]"`` for an interval with bounds, ``"84.4 ± 2.1"`` for a symmetric one, or the mean
        alone when there is no interval."""
        if not math.isfinite(self.mean):
            return "n/a"
        if self.has_bounds:
            return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"
        if not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"

    def to_json(self) -> dict[str, Any]:
        """``{"mean", "half_width", "n", "method"}``, plus ``"lo"`` and ``"hi"`` for an interval with bounds."""
        hw = self.half_width if math.isfinite(self.half_width) else None
        out: dict[str, Any] = {"mean": self.mean, "half_width": hw, "n": self.n, "method": self.method}
        if self.has_bounds:
            out.update(lo=self.lo, hi=self.hi)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Interval:
        """Reads both layouts of :meth:`to_json` (files written before bounds existed have only ``half_width``)."""
        def num(key: str) -> float:
            value = data.get(key)
            return float("nan") if value is None else float(value)

        return cls(float(data["mean"]), num("half_width"), int(data["n"]), str(data["method"]), num("lo"), num("hi"))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz evaluation)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t-distribution with ``df`` degrees of freedom (e.g. (0.975, 2) -> 4.303).

    Uses P(T > t) = I_{df/(df+t²)}(df/2, 1/2) / 2 for t > 0 and solves it by bisection on x = df/(df+t²).
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    tail = 1.0 - p if p > 0.5 else p  # one-sided tail mass beyond |t|
    lo, hi = 0.0, 1.0  # I_x grows with x; x near 0 is a large |t|
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * _betainc(df / 2.0, 0.5, mid) < tail:
            lo = mid
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    t = math.sqrt(df * (1.0 - x) / x)
    return t if p > 0.5 else -t


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval half-width t(1-α/2, n-1)·sd/√n over independent runs (sd with n-1 in the denominator).

    Example: [0.5, 0.7, 0.6] -> mean 0.6, sd 0.1, t(0.975, 2) = 4.303, half-width 4.303·0.1/√3 = 0.2484.
    """
    n = len(values)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0, "none")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, float("nan"), 1, "none")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n), n, "t")


def normal_quantile(p: float) -> float:
    """The ``p`` quantile of the standard normal distribution (bisection on the error function; 0.975 -> 1.95996)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def wilson_interval(successes: int, episodes: int, confidence: float = 0.95, scale: float = 1.0) -> Interval:
    """Wilson score interval of a proportion: ``successes`` of ``episodes``, values multiplied by ``scale``
    (100 for percent). With p = k/n and z the normal quantile, the centre is (p + z²/2n) / (1 + z²/n) and the
    half-width z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n); the bounds always lie within [0, scale].

    Example: 3 of 10 -> [0.1078, 0.6032] around the observed 0.3.

    Raises:
        ValueError: unless 0 <= successes <= episodes.
    """
    if not 0 <= successes <= episodes:
        raise ValueError(f"need 0 <= successes <= episodes, got {successes} of {episodes}")
    if episodes == 0:
        return Interval(float("nan"), float("nan"), 0, "none")
    z = normal_quantile(0.5 + confidence / 2.0)
    p = successes / episodes
    z2n = z * z / episodes
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / episodes + z2n / (4.0 * episodes)) / (1.0 + z2n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return Interval.from_bounds(p * scale, lo * scale, hi * scale, episodes, "wilson")


def _clip(value: float, bounds: tuple[float, float] | None) -> float:
    return value if bounds is None else min(max(value, bounds[0]), bounds[1])


def _percentile_bounds(stats: Any, confidence: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    import numpy as np

    alpha = 1.0 - confidence
    lo, hi = np.quantile(np.asarray(stats, dtype=float), [alpha / 2.0, 1.0 - alpha / 2.0])
    return _clip(float(lo), bounds), _clip(float(hi), bounds)


def bootstrap_interval(runs: Sequence[Sequence[Sequence[float]]], *, bounds: tuple[float, float] | None = None,
                       confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       rng_seed: int = BOOTSTRAP_SEED) -> Interval:
    """Two-level percentile bootstrap of the mean over runs (seeds) of a per-run metric.

    ``runs[s][g]`` holds the episode values of group ``g`` (e.g. a data source) in run ``s``; a run's metric is the
    mean over its groups of the group means (one group: the mean of its episodes), and the estimate is the mean of the
    run metrics. Each resample draws the runs with replacement, then, inside every drawn run, the episodes of each
    group with replacement; the interval is the (α/2, 1-α/2) percentiles of the resampled estimates, clipped to
    ``bounds``. A percentile interval cannot leave the range of the data, so 0/1 outcomes give bounds in [0, 1].
    The generator is seeded with ``rng_seed``: the same input always gives the same interval.

    Raises:
        ValueError: when the runs have different numbers of groups or a group is empty.
    """
    import numpy as np

    if not runs:
        return Interval(float("nan"), float("nan"), 0, "none")
    n_groups = len(runs[0])
    if n_groups == 0 or any(len(run) != n_groups for run in runs) or any(len(g) == 0 for run in runs for g in run):
        raise ValueError("every run needs the same number of groups, each with at least one value")
    data = [[np.asarray(g, dtype=float) for g in run] for run in runs]
    per_run = [sum(float(g.mean()) for g in run) / n_groups for run in data]
    mean = _clip(sum(per_run) / len(per_run), bounds)
    rng = np.random.default_rng(rng_seed)
    picks = rng.integers(0, len(runs), size=(resamples, len(runs)))  # [B, S] drawn runs
    stats = np.zeros((resamples, len(runs)))
    for s, run in enumerate(data):
        rows, cols = np.nonzero(picks == s)
        if rows.size == 0:
            continue
        total = np.zeros(rows.size)
        for values in run:
            total += values[rng.integers(0, values.size, size=(rows.size, values.size))].mean(axis=1)
        stats[rows, cols] = total / n_groups
    lo, hi = _percentile_bounds(stats.mean(axis=1), confidence, bounds)
    return Interval.from_bounds(mean, lo, hi, len(runs), "bootstrap")


def bootstrap_seeds_episodes(runs: Sequence[Sequence[float]], *, bounds: tuple[float, float] | None = (0.0, 1.0),
                             confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                             rng_seed: int = BOOTSTRAP_SEED) -> Interval:
    """:func:`bootstrap_interval` with one group per run: ``runs[s]`` lists the episode outcomes (e.g. 0/1
    success) of seed ``s``; the estimate is the mean over seeds of each seed's mean, kept within ``bounds``."""
    return bootstrap_interval([[list(r)] for r in runs], bounds=bounds, confidence=confidence, resamples=resamples,
                              rng_seed=rng_seed)


def bootstrap_over_seeds(values: Sequence[float], *, bounds: tuple[float, float] | None = None,
                         confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                         rng_seed: int = BOOTSTRAP_SEED) -> Interval:
    """Percentile bootstrap of the mean of one value per seed (for a learning curve at one step), clipped to
    ``bounds``; no interval (method ``none``) for fewer than two values."""
    import numpy as np

    n = len(values)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0, "none")
    mean = _clip(sum(values) / n, bounds)
    if n == 1:
        return Interval(mean, float("nan"), 1, "none")
    data = np.asarray(values, dtype=float)
    picks = np.random.default_rng(rng_seed).integers(0, n, size=(resamples, n))
    lo, hi = _percentile_bounds(data[picks].mean(axis=1), confidence, bounds)
    return Interval.from_bounds(mean, lo, hi, n, "bootstrap_seeds")


UNIT_METRICS = ("success", "acc", "em", "f1", "score", "gate_mean", "clip_frac")
"""Metric names (a part of a ``/``-separated key) whose raw values lie in [0, 1]; so does any ``*_ratio``."""


def metric_range(key: str, scale: float = 1.0) -> tuple[float, float] | None:
    """``(0, scale)`` for a metric known to lie in [0, 1] before scaling (success, accuracy, EM, F1, WebShop score,
    gate values and ``*_ratio`` shares: e.g. ``eval/success``, ``success/pick``, ``em/nq``,
    ``sdar/gate_active_ratio``); None for an unbounded one (reward, loss, gaps)."""
    parts = key.split("/")
    if any(part in UNIT_METRICS for part in parts) or parts[-1].endswith("_ratio"):
        return (0.0, scale)
    return None


def markdown_table(rows: Sequence[tuple[str, Mapping[str, Interval]]], columns: Sequence[tuple[str, str]], *,
                   first: str = "Method", digits: int = 1) -> str:
    """A markdown table: one row per ``(name, metric -> Interval)``, one column per ``(metric key, header)``;
    a metric a row lacks shows as ``–``."""
    head = "| " + " | ".join([first, *(h for _, h in columns)]) + " |"
    rule = "|---|" + "".join("---:|" for _ in columns)
    body = ["| " + " | ".join([name, *(values[k].cell(digits) if k in values else "–" for k, _ in columns)]) + " |"
            for name, values in rows]
    return "\n".join([head, rule, *body])
