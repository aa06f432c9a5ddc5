"""Statistics of a multi-seed study of methods, as `sdar compare` reports them: differences to a baseline paired by
seed (paired bootstrap interval and exact sign-flip permutation test), steps to reach a success threshold, and the
gate metrics averaged over the last logged steps.

Every function is pure: it reads the values or metric rows it is given and returns numbers; random draws use a
generator with a fixed seed, so the same input always gives the same result.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from sdar.intervals import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Interval, bootstrap_over_seeds
from sdar.metrics import last_n_means, series

__all__ = [
    "EXACT_SIGN_FLIP_MAX",
    "GATE_KEYS",
    "PairedComparison",
    "ThresholdResult",
    "default_threshold",
    "first_step_reaching",
    "gate_statistics",
    "paired_comparison",
    "paired_differences",
    "sign_flip_p_value",
    "steps_to_threshold",
]

EXACT_SIGN_FLIP_MAX = 16
"""Up to this many pairs the sign-flip test enumerates every one of the 2^n sign patterns."""
SIGN_FLIP_DRAWS = 100_000
"""Random sign patterns of the test for more pairs than :data:`EXACT_SIGN_FLIP_MAX`."""
GATE_KEYS = ("sdar/gate_mean", "sdar/gate_active_ratio", "sdar/gap_action_agree", "sdar/gap_action_disagree",
             "sdar/expert_agree_ratio")
"""Gate and teacher-informativeness metrics of the gate statistics table."""


# ------------------------------------------------------------------------------------------- paired differences
def paired_differences(values: Mapping[int, float], baseline: Mapping[int, float]) -> tuple[list[int], list[float]]:
    """``(seeds, values[seed] - baseline[seed])`` over the seeds present in both, in increasing seed order."""
    seeds = sorted(set(values) & set(baseline))
    return seeds, [values[s] - baseline[s] for s in seeds]


def sign_flip_p_value(diffs: Sequence[float], *, max_exact: int = EXACT_SIGN_FLIP_MAX,
                      draws: int = SIGN_FLIP_DRAWS, rng_seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided p-value of the paired sign-flip (permutation) test of "mean difference = 0".

    Under the null hypothesis each difference is as likely to have the opposite sign, so the observed |Σ d| is
    compared with |Σ ±d| over sign patterns: all 2^n of them for n <= ``max_exact`` (exact test), else ``draws``
    random ones (p = (1 + hits) / (1 + draws)). Example: [1, 2, 3] has sums ±6 only for the all-plus and all-minus
    patterns, so p = 2/8 = 0.25. The smallest p n pairs can give is 2 / 2^n (0.0625 for 5 seeds). NaN without pairs.
    """
    import numpy as np

    n = len(diffs)
    if n == 0:
        return float("nan")
    d = np.asarray(diffs, dtype=float)
    observed = abs(float(d.sum()))
    tol = 1e-9 * (float(np.abs(d).sum()) + 1.0)  # sums of the same numbers in another order differ by rounding
    if n <= max_exact:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # [2^n, n] of ±1
        return float(np.mean(np.abs(patterns @ d) >= observed - tol))
    signs = np.random.default_rng(rng_seed).choice(np.array([-1.0, 1.0]), size=(draws, n))
    hits = int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (1 + hits) / (1 + draws)


@dataclass(frozen=True)
class PairedComparison:
    """A method against the baseline row over their common seeds."""

    seeds: tuple[int, ...]
    """Seeds present in both rows."""
    diffs: tuple[float, ...]
    """Method minus baseline, one per seed."""
    interval: Interval
    """Mean difference with its paired bootstrap 95% interval (resampling seeds; none for one seed)."""
    p_value: float
    """Two-sided sign-flip permutation p-value (NaN without common seeds)."""
    exact: bool
    """Whether the p-value enumerated every sign pattern."""

    def to_json(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "diffs": list(self.diffs), "mean_diff": self.interval.to_json(),
                "p_value": self.p_value if math.isfinite(self.p_value) else None, "p_exact": self.exact,
                "test": "sign-flip permutation, two-sided"}


def paired_comparison(values: Mapping[int, float], baseline: Mapping[int, float], *,
                      resamples: int = BOOTSTRAP_RESAMPLES) -> PairedComparison:
    """Per-seed differences ``values - baseline`` (seeds of both only), their mean with a paired percentile
    bootstrap interval (seeds drawn with replacement, each carrying its difference) and the sign-flip p-value."""
    seeds, diffs = paired_differences(values, baseline)
    interval = bootstrap_over_seeds(diffs, resamples=resamples)
    if interval.method == "bootstrap_seeds":
        interval = Interval.from_bounds(interval.mean, interval.lo, interval.hi, interval.n, "bootstrap_paired")
    return PairedComparison(tuple(seeds), tuple(diffs), interval, sign_flip_p_value(diffs),
                            len(diffs) <= EXACT_SIGN_FLIP_MAX)


# -------------------------------------------------------------------------------------------- steps to threshold
def first_step_reaching(rows: Sequence[Mapping[str, Any]], threshold: float, key: str = "eval/success",
                        scale: float = 100.0) -> float | None:
    """The first step whose logged ``key`` × ``scale`` is at least ``threshold``; None if it never is."""
    for step, value in zip(*series(rows, key, scale)):
        if value >= threshold:
            return step
    return None


@dataclass(frozen=True)
class ThresholdResult:
    """How many runs of a method reached a threshold, and when."""

    steps: tuple[float | None, ...]
    """First step at the threshold per run; None for a run that never reached it."""

    @property
    def reached(self) -> int:
        return sum(s is not None for s in self.steps)

    @property
    def median_step(self) -> float | None:
        """Median first step among the runs that reached the threshold; None when none did."""
        done = [s for s in self.steps if s is not None]
        return float(statistics.median(done)) if done else None

    def cell(self) -> str:
        """``"3/5 seeds, median step 40"`` or ``"0/5 seeds"``."""
        text = f"{self.reached}/{len(self.steps)} seeds"
        median = self.median_step
        return text if median is None else f"{text}, median step {median:g}"

    def to_json(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "reached": self.reached, "runs": len(self.steps),
                "median_step": self.median_step}


def steps_to_threshold(runs: Sequence[Sequence[Mapping[str, Any]]], threshold: float, key: str = "eval/success",
                       scale: float = 100.0) -> ThresholdResult:
    """:func:`first_step_reaching` for every run (the metric rows of one seed each) of a method."""
    return ThresholdResult(tuple(first_step_reaching(rows, threshold, key, scale) for rows in runs))


def default_threshold(baseline_runs: Sequence[Sequence[Mapping[str, Any]]], fraction: float = 0.9,
                      key: str = "eval/success", scale: float = 100.0) -> float | None:
    """``fraction`` × the mean over the baseline's runs of their last logged ``key`` × ``scale`` (runs that never
    logged it are left out); None when no run logged it."""
    finals = [ys[-1] for ys in (series(rows, key, scale)[1] for rows in baseline_runs) if ys]
    return fraction * sum(finals) / len(finals) if finals else None


# ---------------------------------------------------------------------------------------------- gate statistics
def gate_statistics(runs: Sequence[Sequence[Mapping[str, Any]]], keys: Sequence[str] = GATE_KEYS,
                    last: int = 10) -> dict[str, tuple[float, int]]:
    """Per metric: (mean over runs of the run's mean over its last ``last`` logged values, number of runs that
    logged it); a metric no run logged is absent."""
    per_run = [last_n_means(rows, keys, last) for rows in runs]
    out = {}
    for key in keys:
        values = [m[key] for m in per_run if key in m]
        if values:
            out[key] = (sum(values) / len(values), len(values))
    return out
