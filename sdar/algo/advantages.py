"""Group-relative advantages (GRPO, Dr.GRPO, RLOO, multi-turn step GRPO, GiGPO) as vectorised tensor functions.

Every function takes 1-D tensors with one entry per sample (an episode, or a step/turn sample) and returns a 1-D float
tensor of advantages, one per sample; the caller broadcasts them over the sample's tokens.

Differences from verl / verl-agent:
- A group with a single member gets advantage 0 everywhere (verl uses mean 0 and std 1 there, i.e. the raw score).
  A lone sample has no baseline to compare with, and pushing it by its raw reward would bias the update.
- A group whose members are all equal gets exactly 0 (no NaN): ``0 / (0 + eps)``.
- ``step_grpo_advantages(stats="episodes")`` takes one value per episode as the mean of its step values (verl-agent
  takes the episode's first row); both agree when every step carries the episode's return.
- ``rloo_advantages`` on turn rows leaves out the whole episode (its baseline is the mean over the group's other
  episodes), not the single row, so an episode's other turns never enter the baseline of its own rows.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "discounted_returns",
    "gigpo_advantages",
    "gigpo_step_advantages",
    "grpo_advantages",
    "rloo_advantages",
    "step_grpo_advantages",
]


def _check_1d(**tensors: Tensor) -> int:
    """Check that all tensors are 1-D with the same length and return that length."""
    lengths = {name: tuple(t.shape) for name, t in tensors.items()}
    if any(len(shape) != 1 for shape in lengths.values()) or len({shape[0] for shape in lengths.values()}) > 1:
        raise ValueError(f"expected 1-D tensors of equal length, got shapes {lengths}")
    return next(iter(lengths.values()))[0]


def _group_index(*keys: Tensor) -> Tensor:
    """Dense group index ``[M]`` in ``0..K-1`` for rows sharing all ``keys`` (each ``[M]``)."""
    if len(keys) == 1:
        return torch.unique(keys[0], return_inverse=True)[1]
    stacked = torch.stack([k.to(torch.long) for k in keys], dim=1)  # [M, len(keys)]
    return torch.unique(stacked, dim=0, return_inverse=True)[1]


def _group_normalise(values: Tensor, index: Tensor, *, scale_by_std: bool, eps: float) -> Tensor:
    """``(x - mean_g) / (std_g + eps)`` per group with unbiased std; singleton groups give 0.

    Args:
        values: ``[M]`` float.
        index: ``[M]`` dense group index.

    Returns:
        ``[M]`` float.
    """
    x = values.to(torch.promote_types(values.dtype, torch.float32))
    if x.numel() == 0:
        return x.clone()
    n_groups = int(index.max()) + 1
    count = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, index, torch.ones_like(x))
    mean = torch.zeros_like(count).index_add_(0, index, x) / count
    centered = x - mean[index]
    # a group whose values are all identical gets exactly 0: the float mean of equal values can be off by an ulp,
    # and dividing that rounding error by (std + eps) would turn it into a spurious advantage of order 1e-2
    lo = torch.full_like(count, float("inf")).scatter_reduce_(0, index, x, reduce="amin")
    hi = torch.full_like(count, float("-inf")).scatter_reduce_(0, index, x, reduce="amax")
    flat = (count[index] < 2) | (lo[index] == hi[index])
    if scale_by_std:
        var = torch.zeros_like(count).index_add_(0, index, centered.square()) / (count - 1).clamp(min=1.0)
        centered = centered / (var.sqrt()[index] + eps)
    return torch.where(flat, torch.zeros_like(centered), centered)


def grpo_advantages(scores: Tensor, group_ids: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO: ``(score - group mean) / (group std + eps)``; ``scale_by_std=False`` gives Dr.GRPO's ``score - mean``.

    The std is the unbiased one (``torch.std``). Singleton groups get 0 (see the module notes); all-equal groups get 0.

    Args:
        scores: ``[M]`` scalar score per sample.
        group_ids: ``[M]`` integer id of each sample's group (samples of the same task/prompt).

    Returns:
        ``[M]`` float advantages.
    """
    _check_1d(scores=scores, group_ids=group_ids)
    return _group_normalise(scores, _group_index(group_ids), scale_by_std=scale_by_std, eps=eps)


def step_grpo_advantages(
    step_returns: Tensor,
    group_ids: Tensor,
    episode_ids: Tensor,
    *,
    stats: Literal["steps", "episodes"] = "steps",
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO for multi-turn agents trained one step (turn) per sample.

    Each step sample carries its episode's return (possibly minus a per-step penalty).

    - ``stats="steps"`` (the reference's ``compute_mean_std_cross_steps=True``): mean and std over all step samples of
      the group, so long episodes weigh more in the statistics.
    - ``stats="episodes"``: mean and std over the group's episodes, one value per episode (the mean of its steps);
      every step is then normalised with its group's episode statistics.

    Args:
        step_returns: ``[M]`` value of each step sample.
        group_ids: ``[M]`` group of the step's episode.
        episode_ids: ``[M]`` episode of the step (unique within a group).

    Returns:
        ``[M]`` float advantages; a group with a single episode (or single step for ``"steps"``) gets 0.
    """
    _check_1d(step_returns=step_returns, group_ids=group_ids, episode_ids=episode_ids)
    if stats == "steps":
        return grpo_advantages(step_returns, group_ids, scale_by_std=scale_by_std, eps=eps)
    if stats != "episodes":
        raise ValueError(f"stats must be 'steps' or 'episodes', got {stats!r}")
    x = step_returns.to(torch.promote_types(step_returns.dtype, torch.float32))
    if x.numel() == 0:
        return x.clone()
    episode, ep_value, ep_group, ep_count = _episode_means(x, group_ids, episode_ids)
    mean = torch.zeros_like(ep_count).index_add_(0, ep_group, ep_value) / ep_count  # [G]
    group_of_step = ep_group[episode]  # [M]
    centered = x - mean[group_of_step]
    if scale_by_std:
        ep_dev = (ep_value - mean[ep_group]).square()
        var = torch.zeros_like(ep_count).index_add_(0, ep_group, ep_dev) / (ep_count - 1).clamp(min=1.0)
        centered = centered / (var.sqrt()[group_of_step] + eps)
    return torch.where(ep_count[group_of_step] < 2, torch.zeros_like(centered), centered)


def _episode_means(x: Tensor, group_ids: Tensor, episode_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row scores ``x`` [M] folded into episodes: (row -> episode slot [M], episode mean score [E],
    episode -> group slot [E], episodes per group [G])."""
    episode = _group_index(group_ids, episode_ids)  # [M] -> episode slot
    n_eps = int(episode.max()) + 1
    rows = torch.zeros(n_eps, dtype=x.dtype, device=x.device).index_add_(0, episode, torch.ones_like(x))
    ep_value = torch.zeros_like(rows).index_add_(0, episode, x) / rows  # [E]
    ep_group = torch.zeros(n_eps, dtype=torch.long, device=x.device).index_copy_(0, episode, _group_index(group_ids))
    n_groups = int(ep_group.max()) + 1
    count = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, ep_group, torch.ones_like(ep_value))
    return episode, ep_value, ep_group, count


def rloo_advantages(scores: Tensor, group_ids: Tensor, episode_ids: Tensor | None = None) -> Tensor:
    """RLOO: each score minus the mean score of the *other episodes* of its group (a lone episode gets 0).

    With one row per episode (``episode_ids=None``) this is plain leave-one-out over the rows. With several rows per
    episode (one per turn) the left-out unit is the whole episode, never a single turn: an episode's score is the mean
    of its rows' scores (the same rule as ``step_grpo_advantages(stats="episodes")``). With per-turn scores of
    "episode return minus this turn's invalid-action penalty", a row's advantage is therefore its own score minus the
    mean over the group's other episodes of (return minus their penalties averaged over their turns); the other rows of
    the same episode never enter its baseline.

    Args:
        scores: ``[M]`` score of each row.
        group_ids: ``[M]`` group of each row.
        episode_ids: ``[M]`` episode of each row (unique within its group); None = every row is its own episode.

    Returns:
        ``[M]`` float advantages.
    """
    if episode_ids is None:
        _check_1d(scores=scores, group_ids=group_ids)
        episode_ids = torch.arange(scores.numel(), device=scores.device)
    _check_1d(scores=scores, group_ids=group_ids, episode_ids=episode_ids)
    x = scores.to(torch.promote_types(scores.dtype, torch.float32))
    if x.numel() == 0:
        return x.clone()
    episode, ep_value, ep_group, count = _episode_means(x, group_ids, episode_ids)
    total = torch.zeros_like(count).index_add_(0, ep_group, ep_value)  # [G] sum of episode scores
    group = ep_group[episode]  # [M]
    n = count[group]
    others_mean = (total[group] - ep_value[episode]) / (n - 1).clamp(min=1.0)
    return torch.where(n < 2, torch.zeros_like(x), x - others_mean)


def discounted_returns(rewards: Tensor, episode_ids: Tensor, *, gamma: float) -> Tensor:
    """Discounted reward-to-go ``G_t = r_t + gamma * G_{t+1}`` within each episode.

    Args:
        rewards: ``[M]`` per-step rewards. The rows of one episode appear in turn order (they may be interleaved with
            other episodes' rows).
        episode_ids: ``[M]`` episode of each row (globally unique).
        gamma: Discount factor in ``[0, 1]``.

    Returns:
        ``[M]`` float returns, aligned with ``rewards``.
    """
    _check_1d(rewards=rewards, episode_ids=episode_ids)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    x = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    if x.numel() == 0:
        return x.clone()
    episode = _group_index(episode_ids)  # [M]
    n_eps = int(episode.max()) + 1
    # position of each row within its episode: stable sort keeps turn order
    order = torch.sort(episode, stable=True).indices  # [M]
    sorted_ep = episode[order]
    counts = torch.bincount(episode, minlength=n_eps)  # [E]
    starts = torch.cumsum(counts, 0) - counts  # first sorted slot of each episode
    position = torch.empty_like(episode)
    position[order] = torch.arange(len(order), device=x.device) - starts[sorted_ep]
    horizon = int(position.max()) + 1
    table = torch.zeros(n_eps, horizon + 1, dtype=x.dtype, device=x.device)  # [E, L + 1]; last column stays 0
    table[episode, position] = x
    for t in range(horizon - 1, -1, -1):  # L vector ops; L = max turns per episode
        table[:, t] = table[:, t] + gamma * table[:, t + 1]
    return table[episode, position]


def gigpo_step_advantages(
    step_rewards_to_go: Tensor,
    group_ids: Tensor,
    anchor_ids: Tensor,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """GiGPO step-level advantage: normalise discounted returns within anchor-state groups.

    Step samples are grouped when they share the task group *and* the anchor state (an identical environment state
    reached by several trajectories). ``scale_by_std=False`` is verl-agent's ``mean_norm`` mode.

    Args:
        step_rewards_to_go: ``[M]`` discounted return from each step (see :func:`discounted_returns`).
        group_ids: ``[M]`` task group.
        anchor_ids: ``[M]`` integer id of the step's anchor state (equal ids = identical state).

    Returns:
        ``[M]`` float advantages; a step whose anchor group has one member gets 0.
    """
    _check_1d(step_rewards_to_go=step_rewards_to_go, group_ids=group_ids, anchor_ids=anchor_ids)
    if step_rewards_to_go.numel() == 0:
        return step_rewards_to_go.to(torch.promote_types(step_rewards_to_go.dtype, torch.float32)).clone()
    return _group_normalise(
        step_rewards_to_go, _group_index(group_ids, anchor_ids), scale_by_std=scale_by_std, eps=eps
    )


def gigpo_advantages(episode_adv: Tensor, step_adv: Tensor, *, omega: float = 1.0) -> Tensor:
    """GiGPO's combined advantage ``A = A_E + omega * A_S`` (verl-agent ``step_advantage_w``).

    Args:
        episode_adv: ``[M]`` episode-level advantage of each step sample.
        step_adv: ``[M]`` step-level (anchor-group) advantage.

    Returns:
        ``[M]`` float.
    """
    _check_1d(episode_adv=episode_adv, step_adv=step_adv)
    return episode_adv + omega * step_adv
