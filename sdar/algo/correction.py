"""Rollout-vs-trainer log-prob mismatch: truncated (TIS) or masked (MIS) importance weights, drift metrics, modes.

A token ``y`` is sampled by the generator with probability ``p_roll(y)``, while the PPO ratio is taken against the
trainer's recomputed ``p_old(y)``. When the two differ (another inference engine, other kernels or precision, a
stale copy of the weights) the sample is off-policy for the trainer, and the policy-gradient term needs the extra
weight ``w = p_old / p_roll``. Left untruncated, a handful of tokens with a huge ``w`` dominate the gradient, so:

- ``tis``: ``w = min(p_old / p_roll, cap)`` (truncated importance sampling);
- ``mis``: ``w = p_old / p_roll`` when it is at most ``cap``, else 0 (the token or row is dropped from the PG term).

``level="sequence"`` uses one ratio per row, the product of its token ratios, broadcast over the row's tokens.
Weights are computed in log space and capped before ``exp``, so no intermediate overflows.

:func:`resolve_correction` and :func:`resolve_old_logprobs` turn the ``auto`` settings into concrete modes from
facts about the set-up (is the generator the training model itself, are its log-probs exact).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor

from sdar.algo.ops import check_mask, masked_mean, where_mask

__all__ = [
    "CORRECTION_SETTINGS",
    "OLD_LOGPROB_SETTINGS",
    "CorrectionMode",
    "logprob_diff_stats",
    "MismatchLevel",
    "mismatch_weights",
    "resolve_correction",
    "resolve_old_logprobs",
]

MismatchLevel = Literal["token", "sequence"]
CorrectionMode = Literal["tis", "mis"]
CORRECTION_SETTINGS: tuple[str, ...] = ("auto", "off", "tis", "mis")
OLD_LOGPROB_SETTINGS: tuple[str, ...] = ("auto", "recompute", "rollout")

# exp() of float32 overflows just above 88; ratios are reported up to exp(_MAX_LOG_RATIO) (about 5e34)
_MAX_LOG_RATIO = 80.0


def mismatch_weights(
    trainer_old_logprobs: Tensor,
    rollout_logprobs: Tensor,
    mask: Tensor,
    *,
    level: MismatchLevel = "token",
    mode: CorrectionMode = "tis",
    cap: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Importance weights ``p_old / p_roll`` (truncated or masked at ``cap``) and how far the two policies drift.

    Args:
        trainer_old_logprobs: ``[N, A]`` log-probs of the sampled tokens recomputed by the trainer (``p_old``).
        rollout_logprobs: ``[N, A]`` log-probs the generator sampled them with (``p_roll``).
        mask: ``[N, A]`` bool, True = a sampled token that is trained on.
        level: ``"token"`` (one ratio per token) or ``"sequence"`` (one ratio per row: the product of the row's
            token ratios, i.e. ``exp`` of the summed log ratios, broadcast over its tokens).
        mode: ``"tis"``: ``min(ratio, cap)``; ``"mis"``: ``ratio`` where ``ratio <= cap``, else 0.
        cap: Ratio threshold, ``>= 1`` (verl's default is 2).

    Returns:
        ``(weights, metrics)``. ``weights`` is ``[N, A]``, detached, float32, 0 where ``mask`` is False.
        ``metrics`` (detached scalar tensors, over tokens for ``level="token"`` and over rows with at least one
        trained token for ``level="sequence"``): ``ratio_mean``, ``ratio_max``, ``ratio_min`` (raw ratios, capped
        at ``exp(80)`` for reporting), ``truncated_frac`` (share above ``cap``), ``weight_mean`` (over tokens);
        and, over tokens whatever the level, ``logprob_abs_diff_mean`` / ``logprob_abs_diff_max``
        (``|log p_old - log p_roll|``), ``kl_k1`` (``mean(log p_roll - log p_old)``) and ``kl_k3``
        (``mean(r - 1 - log r)`` with ``r = p_old / p_roll``): two estimates of ``KL(p_roll || p_old)`` from the
        generator's own samples. All are 0 for an empty mask.

    Raises:
        ValueError: shapes differ, ``cap < 1``, or an unknown ``level`` / ``mode``.
    """
    check_mask(mask)
    if trainer_old_logprobs.shape != rollout_logprobs.shape or trainer_old_logprobs.shape != mask.shape:
        raise ValueError(
            f"trainer_old_logprobs {tuple(trainer_old_logprobs.shape)}, rollout_logprobs "
            f"{tuple(rollout_logprobs.shape)} and mask {tuple(mask.shape)} must have the same [N, A] shape"
        )
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    if mode not in ("tis", "mis"):
        raise ValueError(f"mode must be 'tis' or 'mis', got {mode!r}")
    if not cap >= 1.0:
        raise ValueError(f"cap must be >= 1 (a cap below 1 would cut down tokens the two policies agree on), got {cap}")

    old = trainer_old_logprobs.detach().float()
    roll = rollout_logprobs.detach().float()
    token_log_ratio = where_mask(old - roll, mask)  # [N, A] log(p_old / p_roll); 0 off the mask
    log_cap = math.log(cap)
    if level == "token":
        log_ratio = token_log_ratio  # [N, A]
        unit_mask = mask  # [N, A]
    else:
        log_ratio = token_log_ratio.sum(dim=-1, keepdim=True)  # [N, 1] log of the product of token ratios
        unit_mask = mask.any(dim=-1, keepdim=True)  # [N, 1] rows with at least one trained token

    over = log_ratio > log_cap  # [N, A] or [N, 1]
    capped = torch.exp(log_ratio.clamp(max=log_cap))  # min(ratio, cap), computed without overflow
    if mode == "mis":
        capped = torch.where(over, torch.zeros_like(capped), capped)
    weights = where_mask(capped.expand_as(token_log_ratio), mask)  # [N, A]

    ratio = torch.exp(log_ratio.clamp(min=-_MAX_LOG_RATIO, max=_MAX_LOG_RATIO))  # [N, A] or [N, 1], for reporting
    zero = ratio.new_zeros(())
    empty = not bool(mask.numel())  # a shape fact, not a device sync
    k3 = torch.exp(token_log_ratio.clamp(max=_MAX_LOG_RATIO)) - 1.0 - token_log_ratio  # [N, A] >= 0
    abs_diff = token_log_ratio.abs()  # [N, A]
    metrics = {
        "ratio_mean": masked_mean(ratio, unit_mask),
        "ratio_max": zero if empty else _masked_extreme(ratio, unit_mask, largest=True),
        "ratio_min": zero if empty else _masked_extreme(ratio, unit_mask, largest=False),
        "truncated_frac": masked_mean(over.float(), unit_mask),
        "weight_mean": masked_mean(weights, mask),
        "logprob_abs_diff_mean": masked_mean(abs_diff, mask),
        "logprob_abs_diff_max": zero if empty else abs_diff.max(),  # abs_diff is 0 off the mask
        "kl_k1": masked_mean(-token_log_ratio, mask),
        "kl_k3": masked_mean(k3, mask),
    }
    return weights.detach(), {k: v.detach() for k, v in metrics.items()}


def logprob_diff_stats(learner_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the sampler's log-probs of the sampled tokens are from the learner's: ``|log p_learner − log p_sampler|``
    per token over ``mask`` — its mean, 99th percentile (nearest-rank: the smallest value at or above 99% of the
    tokens) and maximum, in nats, plus the number of tokens. All 0 for an empty mask.

    Args:
        learner_logprobs: ``[N, A]`` log-probs recomputed by the learner.
        sampler_logprobs: ``[N, A]`` log-probs the generator sampled with.
        mask: ``[N, A]`` bool, True = a sampled token.

    Raises:
        ValueError: shapes differ.
    """
    check_mask(mask)
    if learner_logprobs.shape != sampler_logprobs.shape or learner_logprobs.shape != mask.shape:
        raise ValueError(f"learner_logprobs {tuple(learner_logprobs.shape)}, sampler_logprobs "
                         f"{tuple(sampler_logprobs.shape)} and mask {tuple(mask.shape)} must have one [N, A] shape")
    diff = (learner_logprobs.detach().float() - sampler_logprobs.detach().float()).abs()[mask]  # [T]
    n = int(diff.numel())
    if n == 0:
        return {"mean": 0.0, "p99": 0.0, "max": 0.0, "tokens": 0.0}
    rank = max(1, math.ceil(0.99 * n))  # nearest-rank percentile
    p99 = diff.kthvalue(rank).values
    return {"mean": float(diff.mean()), "p99": float(p99), "max": float(diff.max()), "tokens": float(n)}


def _masked_extreme(x: Tensor, mask: Tensor, *, largest: bool) -> Tensor:
    """Max (or min) of ``x`` over ``mask``; 0 when the mask is all False. ``x`` must not be empty."""
    fill = -math.inf if largest else math.inf
    kept = where_mask(x, mask, fill)
    value = kept.max() if largest else kept.min()
    return torch.where(mask.any(), value, torch.zeros_like(value))


def resolve_correction(setting: str, *, generator_is_policy: bool) -> Literal["off", "tis", "mis"]:
    """The mismatch correction to apply: ``auto`` = ``tis`` unless the generator is the training model itself.

    Args:
        setting: ``"auto"``, ``"off"``, ``"tis"`` or ``"mis"``.
        generator_is_policy: The generator samples with the very model object the learner trains (same weights).

    Raises:
        ValueError: an unknown setting.
    """
    if setting not in CORRECTION_SETTINGS:
        raise ValueError(f"mismatch correction must be one of {list(CORRECTION_SETTINGS)}, got {setting!r}")
    if setting == "auto":
        return "off" if generator_is_policy else "tis"
    return setting  # type: ignore[return-value]


def resolve_old_logprobs(
    setting: str, *, correction: str, inexact: Sequence[str] = ()
) -> Literal["recompute", "rollout"]:
    """Where the PPO ratio's old log-probs come from: a separate no-grad pass, or the generator's sampling log-probs.

    Args:
        setting: ``"auto"``, ``"recompute"`` or ``"rollout"``.
        correction: The resolved mismatch correction (``"off"``, ``"tis"``, ``"mis"``).
        inexact: Reasons why the generator's log-probs differ from the trainer's (empty = they are exact, e.g. the
            generator is the training model, no dropout, no top-k/top-p, same rows and precision).

    Returns:
        ``auto`` gives ``"rollout"`` when nothing is inexact and no correction is on, else ``"recompute"``;
        an explicit setting is returned as is.

    Raises:
        ValueError: an unknown setting, or ``"rollout"`` together with a correction (the correction compares the
            rollout log-probs with recomputed ones, so it needs ``"recompute"``).
    """
    if setting not in OLD_LOGPROB_SETTINGS:
        raise ValueError(f"old log-prob source must be one of {list(OLD_LOGPROB_SETTINGS)}, got {setting!r}")
    if setting == "rollout" and correction in ("tis", "mis"):
        raise ValueError(
            f"mismatch correction {correction!r} weighs recomputed old log-probs against the rollout ones; with "
            "old log-probs taken from the rollout there is nothing to correct. Set algo.old_logprobs=recompute "
            "(or auto), or algo.mismatch_correction=off"
        )
    if setting == "auto":
        return "rollout" if not inexact and correction == "off" else "recompute"
    return setting  # type: ignore[return-value]
