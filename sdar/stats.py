"""Per-step statistics of rollouts and of the teacher-student gap (plain functions of records and tensors)."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import torch
from torch import Tensor

from sdar.records import Trajectory

GAP_TURN_BUCKETS = 10
"""Turn indices >= this share the last bucket in the gap-by-turn metrics."""
GAP_POSITION_BUCKETS = 4
"""The gap-by-position metrics split each response into this many equal parts of its tokens (quarters)."""
ACTION_OPEN, ACTION_CLOSE = "<action>", "</action>"


def row_scores(trajs: Sequence[Trajectory], invalid_penalty: float) -> Tensor:
    """Score of every turn row ([N], trajectory order): the episode return minus the invalid-action penalty of that
    turn only (as the reference puts the episode return on each step sample and subtracts that step's penalty). The
    rows of one episode therefore differ only where a turn was invalid."""
    scores: list[float] = []
    for t in trajs:
        ret = t.episode_return
        for turn in t.turns:
            scores.append(ret - (invalid_penalty if not turn.valid else 0.0))
    return torch.tensor(scores, dtype=torch.float32)


def episode_scores(trajs: Sequence[Trajectory], invalid_penalty: float) -> Tensor:
    """Score of every episode ([E], trajectory order): its return minus the penalties of all its invalid turns."""
    return torch.tensor([t.episode_return - invalid_penalty * t.num_invalid for t in trajs], dtype=torch.float32)


def rollout_metrics(trajs: Sequence[Trajectory], invalid_penalty: float) -> dict[str, float]:
    """Reward, success, length and validity statistics of a set of episodes (``rollout/*``)."""
    if not trajs:
        return {"rollout/episodes": 0.0}
    n = len(trajs)
    turns = sum(len(t.turns) for t in trajs)
    invalid = sum(t.num_invalid for t in trajs)
    rets = [t.episode_return - invalid_penalty * t.num_invalid for t in trajs]
    out = {
        "rollout/episodes": float(n),
        "rollout/reward": sum(rets) / n,
        "rollout/env_return": sum(t.episode_return for t in trajs) / n,
        "rollout/success": sum(t.won for t in trajs) / n,
        "rollout/episode_len": turns / n,
        "rollout/invalid_ratio": invalid / max(turns, 1),
        "rollout/failed_episodes": float(sum(t.failed for t in trajs)),
        "rollout/truncated_responses": float(sum(tr.finish_reason == "length" for t in trajs for tr in t.turns)),
        "rollout/response_tokens": sum(len(tr.response_ids) for t in trajs for tr in t.turns) / max(turns, 1),
    }
    for key, name in (("score", "score"), ("em", "em"), ("f1", "f1")):
        values = [float(t.final_extra[key]) for t in trajs if key in t.final_extra]
        if values:  # WebShop Score (x100) and Search-QA EM/F1, as the paper reports them
            out[f"rollout/{name}"] = 100.0 * sum(values) / len(trajs)
    by_type: dict[str, list[bool]] = defaultdict(list)
    for t in trajs:
        by_type[t.task_type or "all"].append(t.won)
    for task_type, wins in sorted(by_type.items()):
        out[f"rollout/success/{task_type}"] = sum(wins) / len(wins)
    return out


def gap_by_turn(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor, turn_ids: Tensor) -> dict[str, float]:
    """Mean teacher-student gap Δ = log π_T − log π_θ (at the rollout weights), overall and by turn index.

    Args:
        teacher_logprobs, student_logprobs, mask: [N, A].
        turn_ids: [N] turn index of each row.
    """
    gap = torch.where(mask, teacher_logprobs - student_logprobs, torch.zeros_like(teacher_logprobs))  # [N, A]
    m = mask.float()
    out = {
        "sdar/gap_pre_mean": float(gap.sum() / m.sum().clamp(min=1)),
        "sdar/gap_pre_positive_ratio": float(((gap > 0) & mask).sum() / m.sum().clamp(min=1)),
    }
    bucket = turn_ids.clamp(max=GAP_TURN_BUCKETS)
    for b in sorted(set(bucket.tolist())):
        rows = bucket == b
        tokens = m[rows].sum()
        if tokens > 0:
            name = f"{b}" if b < GAP_TURN_BUCKETS else f"{GAP_TURN_BUCKETS}plus"
            out[f"sdar/gap_by_turn/{name}"] = float(gap[rows].sum() / tokens)
    return out


def gap_by_position(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean gap Δ by relative position of the token in its response: ``sdar/gap_by_pos/q1`` (first quarter of the
    row's loss tokens) … ``q4`` (last quarter).

    Token ``j`` of a row with ``L`` loss tokens falls in part ``floor(GAP_POSITION_BUCKETS * j / L)``.

    Args:
        teacher_logprobs, student_logprobs, mask: [N, A].
    """
    gap = (teacher_logprobs - student_logprobs).float()  # [N, A]
    rank = mask.long().cumsum(-1) - 1  # [N, A] index of each loss token among its row's loss tokens
    length = mask.long().sum(-1, keepdim=True).clamp(min=1)  # [N, 1]
    part = torch.div(rank * GAP_POSITION_BUCKETS, length, rounding_mode="floor")  # [N, A]
    out = {}
    for b in range(GAP_POSITION_BUCKETS):
        sel = mask & (part == b)
        if sel.any():
            out[f"sdar/gap_by_pos/q{b + 1}"] = float(gap[sel].mean())
    return out


def action_token_mask(responses: Sequence[Sequence[int]], decode: Callable[[Sequence[int]], str], width: int) -> Tensor:
    """Which response tokens spell the action: the text between the last ``<action>`` and the ``</action>`` after it.

    A token counts when any character it decodes to lies inside that span; rows without the two tags have none.

    Args:
        responses: N response id sequences (the rows' response tokens, in row order).
        decode: ids -> text (``tokenizer.decode``); prefixes are decoded to find where each token ends.
        width: A, the batch's response width.

    Returns:
        [N, A] bool.
    """
    out = torch.zeros(len(responses), width, dtype=torch.bool)
    for i, ids in enumerate(responses):
        ids = list(ids)
        text = decode(ids)
        start = text.rfind(ACTION_OPEN)
        stop = text.find(ACTION_CLOSE, start + len(ACTION_OPEN)) if start >= 0 else -1
        if stop < 0:
            continue
        lo, hi = start + len(ACTION_OPEN), stop  # the action's characters: [lo, hi)
        # token k spans [end(k-1), end(k)) with end(k) = len(decode(ids[:k+1])), non-decreasing in k; the tokens
        # overlapping [lo, hi) are first(end > lo) ... first(end >= hi), found by bisection (O(log A) decodes)
        first = _first_token(ids, decode, lambda end: end > lo)
        last = _first_token(ids, decode, lambda end: end >= hi)
        out[i, first: min(last + 1, width)] = True
    return out


def _first_token(ids: list[int], decode: Callable[[Sequence[int]], str], ok: Callable[[int], bool]) -> int:
    """Smallest k with ``ok(len(decode(ids[:k + 1])))`` (``len(ids)`` when none); ``ok`` must be monotone in k."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(len(decode(ids[: mid + 1]))):
            hi = mid
        else:
            lo = mid + 1
    return lo


def gap_on_tokens(teacher_logprobs: Tensor, student_logprobs: Tensor, select: Tensor, name: str) -> dict[str, float]:
    """Mean gap and share of positive gaps over the ``select`` tokens ([N, A] each): ``sdar/gap_<name>_mean``,
    ``sdar/gap_<name>_positive_ratio`` (nothing when no token is selected)."""
    if not select.any():
        return {}
    gap = (teacher_logprobs - student_logprobs)[select].float()
    return {f"sdar/gap_{name}_mean": float(gap.mean()), f"sdar/gap_{name}_positive_ratio": float((gap > 0).float().mean())}


def gap_by_agreement(teacher_logprobs: Tensor, student_logprobs: Tensor, action: Tensor, agree: Tensor,
                     known: Tensor) -> dict[str, float]:
    """Mean gap Δ on action tokens, split by whether the row's sampled action is the expert's next action.

    Args:
        teacher_logprobs, student_logprobs: [N, A].
        action: [N, A] bool, the action tokens of each row.
        agree: [N] bool, the row's (valid) action equals the expert's.
        known: [N] bool, the row has an expert action to compare with (rows without one are left out).

    Returns:
        ``sdar/gap_action_agree``, ``sdar/gap_action_disagree`` (token means; a side with no token is absent), their
        difference ``sdar/gap_action_agree_minus_disagree`` when both exist, and ``sdar/expert_agree_ratio`` (share
        of rows with a known expert action whose action agrees).
    """
    out: dict[str, float] = {}
    if not known.any():
        return out
    gap = (teacher_logprobs - student_logprobs).float()
    for name, rows in (("agree", agree & known), ("disagree", ~agree & known)):
        sel = action & rows[:, None]
        if sel.any():
            out[f"sdar/gap_action_{name}"] = float(gap[sel].mean())
    if "sdar/gap_action_agree" in out and "sdar/gap_action_disagree" in out:
        out["sdar/gap_action_agree_minus_disagree"] = out["sdar/gap_action_agree"] - out["sdar/gap_action_disagree"]
    out["sdar/expert_agree_ratio"] = float((agree & known).sum()) / float(known.sum())
    return out


def delta_sample(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor, k: int, seed: int) -> list[float]:
    """Up to ``k`` gap values Δ drawn uniformly without replacement from the ``mask`` tokens (for histograms)."""
    gap = (teacher_logprobs - student_logprobs)[mask].float()  # [M]
    if gap.numel() > k:
        pick = torch.randperm(gap.numel(), generator=torch.Generator().manual_seed(seed))[:k]
        gap = gap[pick.sort().values]
    return [round(v, 5) for v in gap.tolist()]


def sample_turns_text(trajs: Sequence[Trajectory], k: int) -> list[str]:
    """A few decoded turns for the console (the first turn of the first ``k`` episodes with a response)."""
    out = []
    for t in trajs[: max(k, 0)]:
        if not t.turns:
            continue
        turn = t.turns[0]
        out.append(f"[{t.task_id} {'won' if t.won else 'lost'}] obs: {turn.context.observation[:200]!r}\n"
                   f"  response: {turn.response_text[:300]!r}\n  action: {turn.action!r} valid={turn.valid}")
    return out
