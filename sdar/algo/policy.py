"""Policy-gradient terms: the dual-clip PPO surrogate, KL-to-reference estimators and the entropy bonus.

Differences from the paper (App. B, Alg. 2) and from verl:
- The log-ratio ``logp - old`` is clamped to ``[-log_ratio_clamp, log_ratio_clamp]`` (20) before ``exp`` as in verl,
  so a stale token cannot overflow the ratio; beyond the clamp that token gets no gradient.
- ``k3`` is the raw Schulman estimator, while ``low_var_kl`` is verl's clamped one (verl uses the two names for the
  same clamped function). Raw ``k3`` overflows to ``inf`` once ``ref - logp`` exceeds about 88 nats in fp32.
- Metrics are token means over this shard (not all-reduced); the loss itself uses the global counts.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from sdar.algo.aggregate import AggMode, aggregate
from sdar.algo.ops import LossOutput, check_mask, masked_mean, where_mask

__all__ = ["KL_ESTIMATORS", "KLEstimator", "clipped_policy_loss", "entropy_loss", "kl_loss", "kl_penalty"]

KLEstimator = Literal["k1", "k2", "k3", "low_var_kl"]
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    agg: AggMode = "token-mean",
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    dp_size: int = 1,
    norm: float | None = None,
    is_weights: Tensor | None = None,
    log_ratio_clamp: float = 20.0,
) -> LossOutput:
    """PPO clipped surrogate with asymmetric clip and dual-clip for negative advantages.

    Per token, with ``r = exp(logp - old)``:
    ``L1 = -A r``, ``L2 = -A clip(r, 1 - clip_low, 1 + clip_high)``, ``l = max(L1, L2)``; when ``A < 0`` and
    ``dual_clip = c`` is set, ``l = min(l, -A c)``. Optional ``is_weights`` (detached) multiply ``l``, e.g. to correct
    a rollout-engine / trainer mismatch. The token losses are then aggregated with :func:`aggregate`.

    Args:
        logprobs: ``[N, A]`` current-policy log-probs (carry gradient).
        old_logprobs: ``[N, A]`` behaviour-policy log-probs.
        advantages: ``[N, A]`` (anything broadcastable, e.g. ``[N, 1]``).
        mask: ``[N, A]`` bool, True = counts.
        clip_low: ``eps_low`` of the ratio clip.
        clip_high: ``eps_high`` of the ratio clip.
        dual_clip: ``c > 1`` of dual-clip PPO; ``None`` disables it.
        agg, global_tokens, global_seqs, dp_size, norm: Passed to :func:`aggregate`.
        is_weights: ``[N, A]`` per-token importance weights; detached here.
        log_ratio_clamp: Bound on ``|logp - old|`` before ``exp``.

    Returns:
        ``LossOutput`` with metrics ``clip_frac`` (tokens where the clipped branch is taken), ``dual_clip_frac``
        (negative-advantage tokens capped by ``-A c``), ``ratio_mean``, ``approx_kl`` (k1: mean of ``old - logp``),
        ``approx_kl_k3`` and ``pg_loss``.
    """
    check_mask(mask)
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low} and {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None to disable), got {dual_clip}")
    logp = where_mask(logprobs, mask)  # [N, A]
    old = where_mask(old_logprobs.detach(), mask)
    adv = where_mask(advantages.detach(), mask)
    log_ratio = (logp - old).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)  # [N, A]
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(loss1, loss2)
    token_loss = clipped
    dual_active = torch.zeros_like(mask)
    if dual_clip is not None:
        cap = -adv * dual_clip
        negative = adv < 0
        token_loss = torch.where(negative, torch.minimum(clipped, cap), clipped)
        dual_active = negative & (clipped > cap)
    if is_weights is not None:
        token_loss = token_loss * where_mask(is_weights.detach(), mask, 1.0)
    loss = aggregate(
        token_loss, mask, agg, global_tokens=global_tokens, global_seqs=global_seqs, dp_size=dp_size, norm=norm
    )
    with torch.no_grad():
        neg_log_ratio = old - logp.detach()
        metrics = {
            "clip_frac": masked_mean((loss2 > loss1).float(), mask),
            "dual_clip_frac": masked_mean(dual_active.float(), mask),
            "ratio_mean": masked_mean(ratio.detach(), mask),
            "approx_kl": masked_mean(neg_log_ratio, mask),
            "approx_kl_k3": masked_mean(torch.expm1(-neg_log_ratio.clamp(-20.0, 20.0)) + neg_log_ratio, mask),
            "pg_loss": loss.detach(),
        }
    return LossOutput(loss, metrics)


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    *,
    estimator: KLEstimator = "low_var_kl",
    clamp: float = 10.0,
    log_ratio_clamp: float = 20.0,
) -> Tensor:
    """Per-token estimate of ``KL(pi_theta || pi_ref)`` from the sampled tokens' log-probs.

    With ``x = ref - logp``:

    - ``k1``: ``logp - ref`` (unbiased, high variance, can be negative).
    - ``k2``: ``0.5 (logp - ref)^2``.
    - ``k3``: ``exp(x) - x - 1`` (unbiased, >= 0; overflows for ``x`` above ~88 in fp32).
    - ``low_var_kl``: ``k3`` with ``x`` clamped to ``[-log_ratio_clamp, log_ratio_clamp]`` and the result clamped to
      ``[-clamp, clamp]`` (verl).

    Args:
        logprobs: ``[N, A]`` current policy (gradient flows).
        ref_logprobs: ``[N, A]`` reference policy (detached here).

    Returns:
        ``[N, A]`` per-token values. No masking here: use :func:`kl_loss` for the aggregated, masked term.
    """
    ref = ref_logprobs.detach()
    if estimator == "k1":
        return logprobs - ref
    if estimator == "k2":
        return 0.5 * (logprobs - ref).square()
    if estimator == "k3":
        x = ref - logprobs
        return torch.expm1(x) - x  # = e^x - x - 1, without fp32 rounding below 0 near x = 0
    if estimator == "low_var_kl":
        x = (ref - logprobs).clamp(-log_ratio_clamp, log_ratio_clamp)
        return (torch.expm1(x) - x).clamp(-clamp, clamp)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {list(KL_ESTIMATORS)}")


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    *,
    estimator: KLEstimator = "low_var_kl",
    clamp: float = 10.0,
    agg: AggMode = "token-mean",
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    dp_size: int = 1,
    norm: float | None = None,
) -> LossOutput:
    """Aggregated KL-to-reference penalty (added with ``+kl_coef``).

    Args:
        logprobs: ``[N, A]`` current policy (gradient flows).
        ref_logprobs: ``[N, A]`` frozen reference policy.
        mask: ``[N, A]`` bool.
        estimator, clamp: See :func:`kl_penalty`.
        agg, global_tokens, global_seqs, dp_size, norm: Passed to :func:`aggregate`.

    Returns:
        ``LossOutput`` with metric ``kl`` (the aggregated value).
    """
    check_mask(mask)
    per_token = kl_penalty(
        where_mask(logprobs, mask), where_mask(ref_logprobs, mask), estimator=estimator, clamp=clamp
    )  # [N, A]
    loss = aggregate(
        per_token, mask, agg, global_tokens=global_tokens, global_seqs=global_seqs, dp_size=dp_size, norm=norm
    )
    return LossOutput(loss, {"kl": loss.detach()})


def entropy_loss(
    entropy: Tensor,
    mask: Tensor,
    *,
    agg: AggMode = "token-mean",
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    dp_size: int = 1,
    norm: float | None = None,
) -> LossOutput:
    """The aggregated policy entropy; the objective *subtracts* ``entropy_coef`` times it (an entropy bonus).

    Args:
        entropy: ``[N, A]`` per-token entropy of the current policy (gradient flows).
        mask: ``[N, A]`` bool.
        agg, global_tokens, global_seqs, dp_size, norm: Passed to :func:`aggregate`.

    Returns:
        ``LossOutput`` whose loss is the aggregated entropy, with metric ``entropy``.
    """
    loss = aggregate(
        entropy, mask, agg, global_tokens=global_tokens, global_seqs=global_seqs, dp_size=dp_size, norm=norm
    )
    return LossOutput(loss, {"entropy": loss.detach()})
