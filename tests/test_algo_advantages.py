"""Group-relative advantages by hand (incl. singleton and all-equal groups) and against loop references."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import pytest
import torch

from sdar.algo import (
    discounted_returns,
    gigpo_advantages,
    gigpo_step_advantages,
    grpo_advantages,
    rloo_advantages,
    step_grpo_advantages,
)


def _close(actual: torch.Tensor, expected: object, atol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------------------- by hand


def test_grpo_by_hand_with_a_singleton_group() -> None:
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0])
    groups = torch.tensor([7, 7, 7, 7, 9])
    # group 7: mean 0.5, unbiased var (4 * 0.25) / 3 = 1/3, std 0.57735 -> +-0.5 / 0.57735 = +-0.86603
    # group 9 has one member -> 0 (verl would give the raw score 5 there)
    _close(grpo_advantages(scores, groups), [0.86603, -0.86603, -0.86603, 0.86603, 0.0])


def test_dr_grpo_only_centres() -> None:
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0])
    groups = torch.tensor([7, 7, 7, 7, 9])
    _close(grpo_advantages(scores, groups, scale_by_std=False), [0.5, -0.5, -0.5, 0.5, 0.0])


def test_all_equal_group_gives_exact_zeros_not_nan() -> None:
    adv = grpo_advantages(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([0, 0, 0]))
    assert torch.equal(adv, torch.zeros(3))
    adv = step_grpo_advantages(torch.ones(4), torch.zeros(4), torch.tensor([0, 0, 1, 1]), stats="episodes")
    assert torch.equal(adv, torch.zeros(4))


def test_grpo_interleaved_groups_and_integer_scores() -> None:
    # groups interleaved; integer scores are promoted to float
    scores = torch.tensor([1, 3, 0, 5])
    groups = torch.tensor([4, 2, 4, 2])
    # group 4: [1, 0] mean 0.5 std 0.70711 -> [0.70711, -0.70711]; group 2: [3, 5] -> [-0.70711, 0.70711]
    adv = grpo_advantages(scores, groups)
    assert adv.dtype == torch.float32
    _close(adv, [0.70711, -0.70711, -0.70711, 0.70711])


def test_step_grpo_steps_vs_episodes_by_hand() -> None:
    # group 0: episode 10 has three steps (return 1), episode 11 one step (return 0)
    returns = torch.tensor([1.0, 1.0, 1.0, 0.0])
    groups = torch.zeros(4, dtype=torch.long)
    episodes = torch.tensor([10, 10, 10, 11])
    # "steps": stats over 4 samples: mean 0.75, unbiased var (3 * 0.0625 + 0.5625) / 3 = 0.25, std 0.5
    #          -> (1 - 0.75) / 0.5 = 0.5, (0 - 0.75) / 0.5 = -1.5
    _close(step_grpo_advantages(returns, groups, episodes, stats="steps"), [0.5, 0.5, 0.5, -1.5])
    # "episodes": one value per episode [1, 0]: mean 0.5, std sqrt(0.5) = 0.70711 -> +-0.70711, broadcast to steps
    _close(step_grpo_advantages(returns, groups, episodes, stats="episodes"), [0.70711, 0.70711, 0.70711, -0.70711])


def test_step_grpo_episodes_with_per_step_penalty_by_hand() -> None:
    # episode 0 steps carry [1, 0.9] (an invalid-action penalty of 0.1 on step 2), episode 1 carries [0]
    returns = torch.tensor([1.0, 0.9, 0.0])
    episodes = torch.tensor([0, 0, 1])
    # episode values: mean of steps [0.95, 0]; group mean 0.475; std sqrt(2 * 0.475^2 / 1) = 0.671751
    # steps normalised with the episode statistics: 0.525 / 0.671751, 0.425 / 0.671751, -0.475 / 0.671751
    want = [0.525 / 0.671751, 0.425 / 0.671751, -0.475 / 0.671751]
    _close(step_grpo_advantages(returns, torch.zeros(3), episodes, stats="episodes"), want)


def test_step_grpo_single_episode_group_is_zero_in_episodes_mode_only() -> None:
    returns = torch.tensor([1.0, 0.9])
    groups, episodes = torch.zeros(2), torch.zeros(2)
    assert torch.equal(step_grpo_advantages(returns, groups, episodes, stats="episodes"), torch.zeros(2))
    # "steps" sees two different step values: mean 0.95, std 0.070711 -> +-0.70711
    _close(step_grpo_advantages(returns, groups, episodes, stats="steps"), [0.70711, -0.70711])


def test_rloo_by_hand() -> None:
    scores = torch.tensor([1.0, 2.0, 6.0, 3.0])
    groups = torch.tensor([0, 0, 0, 1])
    # 1 - (2 + 6)/2 = -3; 2 - (1 + 6)/2 = -1.5; 6 - (1 + 2)/2 = 4.5; singleton -> 0
    _close(rloo_advantages(scores, groups), [-3.0, -1.5, 4.5, 0.0])


def test_rloo_on_turn_rows_leaves_out_whole_episodes_by_hand() -> None:
    # one group of three episodes with 2, 1 and 3 turns, and a lone one-turn episode in another group.
    # Row scores differ within an episode only by invalid-action penalties; an episode's score is the mean of its rows
    scores = torch.tensor([6.0, 4.0, 0.0, 3.0, 3.0, 0.0, 7.0])
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 1])
    episodes = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    # episode scores: A = 5, B = 0, C = 2. Baselines: A (0 + 2)/2 = 1, B (5 + 2)/2 = 3.5, C (5 + 0)/2 = 2.5
    want = [5.0, 3.0, -3.5, 0.5, 0.5, -2.5, 0.0]
    _close(rloo_advantages(scores, groups, episodes), want)
    # rows may come interleaved: the baseline depends on episode membership, not on row order
    order = torch.tensor([6, 3, 0, 2, 5, 1, 4])
    _close(rloo_advantages(scores[order], groups[order], episodes[order]), torch.tensor(want)[order])
    # a group of one episode (however many turns) has no other episode to compare with
    _close(rloo_advantages(torch.tensor([1.0, 2.0]), torch.zeros(2), torch.zeros(2)), [0.0, 0.0])
    # without episode ids every row is its own episode (one row per episode)
    _close(rloo_advantages(scores[:3], torch.zeros(3)), rloo_advantages(scores[:3], torch.zeros(3), torch.arange(3)))


def test_discounted_returns_by_hand_with_interleaved_episodes() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    episodes = torch.tensor([0, 1, 0, 1, 0])
    # episode 0 rows (1, 3, 5): G = 1 + .5*3 + .25*5 = 3.75, 3 + .5*5 = 5.5, 5; episode 1 rows (2, 4): 2 + .5*4 = 4, 4
    _close(discounted_returns(rewards, episodes, gamma=0.5), [3.75, 4.0, 5.5, 4.0, 5.0])
    # gamma 1: suffix sums; gamma 0: the rewards themselves
    _close(discounted_returns(rewards, episodes, gamma=1.0), [9.0, 6.0, 8.0, 4.0, 5.0])
    _close(discounted_returns(rewards, episodes, gamma=0.0), rewards)


def test_gigpo_step_advantages_by_hand() -> None:
    returns = torch.tensor([1.0, 2.0, 7.0, 3.0, 4.0])
    groups = torch.tensor([0, 0, 0, 0, 1])
    anchors = torch.tensor([5, 5, 6, 5, 5])
    # (group 0, anchor 5): [1, 2, 3] mean 2, std 1 -> [-1, 0, 1]
    # (group 0, anchor 6): singleton -> 0; (group 1, anchor 5): same anchor id in another group, singleton -> 0
    _close(gigpo_step_advantages(returns, groups, anchors), [-1.0, 0.0, 0.0, 1.0, 0.0])
    _close(gigpo_step_advantages(returns, groups, anchors, scale_by_std=False), [-1.0, 0.0, 0.0, 1.0, 0.0])


def test_gigpo_combined_by_hand() -> None:
    # A = A_E + omega * A_S: 0.5 + 0.5 * (-1) = 0, -0.5 + 0.5 * 2 = 0.5
    _close(gigpo_advantages(torch.tensor([0.5, -0.5]), torch.tensor([-1.0, 2.0]), omega=0.5), [0.0, 0.5])
    _close(gigpo_advantages(torch.tensor([0.5, -0.5]), torch.tensor([-1.0, 2.0])), [-0.5, 1.5])


def test_empty_inputs_give_empty_outputs() -> None:
    e = torch.zeros(0)
    el = torch.zeros(0, dtype=torch.long)
    assert grpo_advantages(e, el).shape == (0,)
    assert step_grpo_advantages(e, el, el, stats="episodes").shape == (0,)
    assert rloo_advantages(e, el).shape == (0,)
    assert discounted_returns(e, el, gamma=0.9).shape == (0,)
    assert gigpo_step_advantages(e, el, el).shape == (0,)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(torch.zeros(2), torch.zeros(2), gamma=1.5)
    with pytest.raises(ValueError, match="stats"):
        step_grpo_advantages(torch.zeros(2), torch.zeros(2), torch.zeros(2), stats="turns")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- loop references (seeded)


def _loop_normalise(values: list[float], keys: list[object], scale_by_std: bool, eps: float) -> list[float]:
    members: dict[object, list[float]] = defaultdict(list)
    for v, k in zip(values, keys):
        members[k].append(v)
    out = []
    for v, k in zip(values, keys):
        group = members[k]
        if len(group) < 2:
            out.append(0.0)
            continue
        centred = v - statistics.fmean(group)
        out.append(centred / (statistics.stdev(group) + eps) if scale_by_std else centred)
    return out


def _random_batch(seed: int, n: int = 60) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "scores": torch.randint(0, 4, (n,), generator=gen).float() / 2 + torch.rand(n, generator=gen) * (seed % 2),
        "groups": torch.randint(0, 6, (n,), generator=gen),
        "episodes": torch.randint(0, 4, (n,), generator=gen),
        "anchors": torch.randint(0, 3, (n,), generator=gen),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_vectorised_matches_loop_reference(seed: int, scale_by_std: bool) -> None:
    b = _random_batch(seed)
    s, g, e, a = (b[k].tolist() for k in ("scores", "groups", "episodes", "anchors"))

    want = _loop_normalise(s, g, scale_by_std, 1e-6)
    _close(grpo_advantages(b["scores"], b["groups"], scale_by_std=scale_by_std), want, atol=1e-5)

    want = _loop_normalise(s, list(zip(g, a)), scale_by_std, 1e-6)
    got = gigpo_step_advantages(b["scores"], b["groups"], b["anchors"], scale_by_std=scale_by_std)
    _close(got, want, atol=1e-5)

    # step GRPO, episode statistics: one value (mean of its steps) per (group, episode)
    steps: dict[tuple[int, int], list[float]] = defaultdict(list)
    for v, gi, ei in zip(s, g, e):
        steps[(gi, ei)].append(v)
    ep_values: dict[int, list[float]] = defaultdict(list)
    for (gi, _), vals in steps.items():
        ep_values[gi].append(statistics.fmean(vals))
    want = []
    for v, gi in zip(s, g):
        vals = ep_values[gi]
        if len(vals) < 2:
            want.append(0.0)
        else:
            c = v - statistics.fmean(vals)
            want.append(c / (statistics.stdev(vals) + 1e-6) if scale_by_std else c)
    got = step_grpo_advantages(b["scores"], b["groups"], b["episodes"], stats="episodes", scale_by_std=scale_by_std)
    _close(got, want, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_rloo_and_discounted_returns_match_loop_reference(seed: int) -> None:
    b = _random_batch(seed)
    s, g = b["scores"].tolist(), b["groups"].tolist()
    want = []
    for i, (v, gi) in enumerate(zip(s, g)):
        others = [s[j] for j in range(len(s)) if j != i and g[j] == gi]
        want.append(v - statistics.fmean(others) if others else 0.0)
    _close(rloo_advantages(b["scores"], b["groups"]), want, atol=1e-5)

    episodes = b["groups"].tolist()  # use groups as episode ids: rows interleave, turn order = row order
    gamma = 0.9
    want_ret = [0.0] * len(s)
    running: dict[int, float] = {}
    for i in range(len(s) - 1, -1, -1):
        running[episodes[i]] = s[i] + gamma * running.get(episodes[i], 0.0)
        want_ret[i] = running[episodes[i]]
    _close(discounted_returns(b["scores"], b["groups"], gamma=gamma), want_ret, atol=1e-4)
    assert math.isfinite(sum(want_ret))


def test_groups_of_identical_values_get_exactly_zero_even_when_the_float_mean_rounds():
    # 0.1 is not representable: the float32 mean of seven copies of -0.1 is off by 7.45e-9, and without an equality
    # guard (x - mean) / (std + 1e-6) would turn that rounding error into advantages of about 7e-3
    scores = torch.full((7,), -0.1, dtype=torch.float32)
    group = torch.zeros(7, dtype=torch.long)
    mean = torch.zeros(1).index_add_(0, group, scores) / 7
    assert (scores - mean).abs().max() > 0  # the rounding this test is about does occur
    assert torch.equal(grpo_advantages(scores, group), torch.zeros(7))
    assert torch.equal(step_grpo_advantages(scores, group, torch.arange(7)), torch.zeros(7))
    # a group with a real spread next to it is unaffected
    mixed = torch.cat([scores, torch.tensor([1.0, 0.0])])
    out = grpo_advantages(mixed, torch.tensor([0] * 7 + [1, 1]))
    assert torch.equal(out[:7], torch.zeros(7)) and out[7] > 0 > out[8]
