"""Statistics of a multi-seed study: paired differences, sign-flip test, steps to threshold, gate statistics."""

from __future__ import annotations

import math

import pytest

from sdar.study_stats import (
    default_threshold,
    first_step_reaching,
    gate_statistics,
    paired_comparison,
    paired_differences,
    sign_flip_p_value,
    steps_to_threshold,
)


def test_sign_flip_p_value_by_hand():
    # [1, 2, 3]: the 8 sign patterns give sums 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6 twice -> 2/8
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == 0.25
    # five equal positive differences: only all-plus and all-minus reach |sum| = 5 -> 2/32, the smallest p of 5 seeds
    assert sign_flip_p_value([1.0] * 5) == pytest.approx(2 / 32)
    # [2, -2]: sums 0, 4, -4, 0 -> observed 0, every pattern is as extreme
    assert sign_flip_p_value([2.0, -2.0]) == 1.0
    assert sign_flip_p_value([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(sign_flip_p_value([]))
    # rounding: 0.1 + 0.2 - 0.3 sums to 5.6e-17, not 0, yet every pattern counts as at least as extreme
    assert sign_flip_p_value([0.1, 0.2, -0.3]) == 1.0


def test_sign_flip_sampled_above_the_exact_limit():
    p = sign_flip_p_value([1.0, 2.0, 3.0], max_exact=2, draws=20_000)  # random patterns instead of all 8
    assert p == pytest.approx(0.25, abs=0.015)
    assert p == sign_flip_p_value([1.0, 2.0, 3.0], max_exact=2, draws=20_000)  # fixed generator seed


def test_paired_comparison_uses_common_seeds_only():
    seeds, diffs = paired_differences({0: 60.0, 1: 80.0, 7: 10.0}, {0: 50.0, 1: 60.0, 2: 90.0})
    assert seeds == [0, 1] and diffs == [10.0, 20.0]
    pc = paired_comparison({0: 60.0, 1: 80.0, 7: 10.0}, {0: 50.0, 1: 60.0, 2: 90.0})
    # mean (10 + 20) / 2 = 15; resampled means are 10, 15, 20 -> percentiles 10 and 20;
    # sign flips of [10, 20]: sums 30, 10, -10, -30 -> |sum| >= 30 in 2 of 4 patterns -> p = 0.5
    assert pc.seeds == (0, 1) and pc.diffs == (10.0, 20.0)
    assert (pc.interval.mean, pc.interval.lo, pc.interval.hi) == (15.0, 10.0, 20.0)
    assert pc.interval.method == "bootstrap_paired" and pc.p_value == 0.5 and pc.exact
    data = pc.to_json()
    assert data["p_value"] == 0.5 and data["mean_diff"]["lo"] == 10.0 and data["seeds"] == [0, 1]
    one = paired_comparison({3: 70.0}, {3: 50.0})
    assert one.interval.mean == 20.0 and not one.interval.has_bounds and one.p_value == 1.0
    none = paired_comparison({3: 70.0}, {4: 50.0})
    assert none.seeds == () and math.isnan(none.p_value)


def _rows(successes: list[float], every: int = 5) -> list[dict]:
    return [{"step": i * every, "eval/success": v} for i, v in enumerate(successes)]


def test_steps_to_threshold_by_hand():
    runs = [_rows([0.1, 0.5, 0.7]), _rows([0.2, 0.3, 0.6]), _rows([0.1, 0.2, 0.3])]
    assert first_step_reaching(runs[0], 50.0) == 5.0  # 0.5 × 100 = 50 >= 50 at step 5
    assert first_step_reaching(runs[2], 50.0) is None
    result = steps_to_threshold(runs, 50.0)
    assert result.steps == (5.0, 10.0, None) and result.reached == 2
    assert result.median_step == 7.5 and result.cell() == "2/3 seeds, median step 7.5"
    assert steps_to_threshold(runs, 95.0).cell() == "0/3 seeds"
    assert steps_to_threshold(runs, 95.0).to_json() == {"steps": [None] * 3, "reached": 0, "runs": 3,
                                                         "median_step": None}
    # finals 0.7, 0.6 and 0.3 -> mean 53.33 %, 90% of it = 48 %; a run without eval/success is left out
    assert default_threshold([*runs, [{"step": 0}]]) == pytest.approx(48.0)
    assert default_threshold([[{"step": 0}]]) is None


def test_gate_statistics_by_hand():
    # run 1 logs gate_mean 0..11 -> the last 10 are 2..11, mean 6.5; run 2 logs 1.0 twice -> mean 1.0
    run1 = [{"step": s, "sdar/gate_mean": float(s), "sdar/expert_agree_ratio": 0.25} for s in range(12)]
    run2 = [{"step": s, "sdar/gate_mean": 1.0} for s in range(2)]
    stats = gate_statistics([run1, run2])
    assert stats["sdar/gate_mean"] == (pytest.approx((6.5 + 1.0) / 2), 2)
    assert stats["sdar/expert_agree_ratio"] == (0.25, 1)
    assert "sdar/gap_action_agree" not in stats
    assert gate_statistics([[{"step": 0, "rollout/reward": 1.0}]]) == {}
