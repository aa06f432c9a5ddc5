"""Self-distillation terms: SDAR's gated loss, full-vocabulary divergences, Skill-SD and RLSD's advantage reweighting.

The teacher is the same policy given privileged context (skills); its log-probs are always treated as constants.

Differences from the paper and reference code:
- ``sdar_loss`` is the reference ``compute_sdar_loss`` (token-mean reproduces it exactly) but returns tensor metrics.
- Gates are ``sigmoid`` of a score, mathematically in ``(0, 1)``. In fp32 ``sigmoid(x)`` rounds to exactly 1.0 for
  ``x`` above about 16.6 and underflows to exactly 0.0 below roughly -90, so for large ``|beta * score|`` the stored
  gate sits on the closed interval ``[0, 1]``. Losses stay finite there; nothing clamps the gate away from the ends,
  because that would change the reference's numbers.
- ``skill_sd_loss`` keeps the gradient through the importance ratio ``rho``, as ``L = Agg(rho_t k_t)`` reads and as
  the reference ``compute_sdl_loss`` does (it detaches only the teacher and the old log-probs).
- ``rlsd_advantages`` takes ``delta = teacher - old`` (paper Alg. 6, θ_old) and zeroes masked positions when a mask
  is given.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from sdar.algo.aggregate import AggMode, aggregate
from sdar.algo.ops import LossOutput, check_mask, masked_mean, where_mask

__all__ = [
    "DIVERGENCE_KINDS",
    "DivergenceKind",
    "GATE_KINDS",
    "GateKind",
    "divergence_loss",
    "rlsd_advantages",
    "rlsd_lambda",
    "sdar_gate",
    "sdar_loss",
    "skill_sd_loss",
    "topk_with_tail",
]

GateKind = Literal["gap", "entropy", "soft_or", "constant"]
GATE_KINDS: tuple[str, ...] = get_args(GateKind)
DivergenceKind = Literal["reverse_kl", "forward_kl", "jsd"]
DIVERGENCE_KINDS: tuple[str, ...] = get_args(DivergenceKind)


def _gate_value(delta: Tensor, *, gate: GateKind, beta: float, entropy: Tensor | None) -> Tensor:
    """``sigmoid(beta * score)`` for the chosen gate, without detaching anything.

    Args:
        delta: ``[N, A]`` teacher minus student log-prob of the sampled token.
        entropy: ``[N, A]`` student entropy; required by the ``entropy`` and ``soft_or`` gates.
    """
    if gate == "gap":
        return torch.sigmoid(beta * delta)
    if gate == "constant":
        return torch.full_like(delta, 0.5)
    if gate not in ("entropy", "soft_or"):
        raise ValueError(f"unknown gate {gate!r}; choose one of {list(GATE_KINDS)}")
    if entropy is None:
        raise ValueError(f"gate={gate!r} needs the student's per-token entropy: pass entropy=[N, A]")
    if gate == "entropy":
        return torch.sigmoid(beta * entropy)
    return torch.sigmoid(beta * (1.0 - (1.0 - entropy) * (1.0 - delta)))


def sdar_gate(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    *,
    gate: GateKind = "gap",
    beta: float = 5.0,
    entropy: Tensor | None = None,
) -> Tensor:
    """SDAR's detached token gate ``g`` (paper §2.3).

    With ``delta = teacher - student`` (both detached) and ``h`` the student entropy:
    ``gap``: ``sigmoid(beta delta)``; ``entropy``: ``sigmoid(beta h)``; ``soft_or``:
    ``sigmoid(beta [1 - (1 - h)(1 - delta)])``; ``constant``: 0.5. ``beta = 0`` makes every sigmoid gate 0.5.

    Args:
        student_logprobs: ``[N, A]``.
        teacher_logprobs: ``[N, A]``.
        gate: Which gate.
        beta: Sharpness.
        entropy: ``[N, A]``, needed by ``entropy`` and ``soft_or``.

    Returns:
        ``[N, A]`` detached gate in ``(0, 1)`` (``[0, 1]`` once fp32 saturates; see the module notes).
    """
    delta = teacher_logprobs.detach() - student_logprobs.detach()
    h = entropy.detach() if entropy is not None else None
    return _gate_value(delta, gate=gate, beta=beta, entropy=h).detach()


def sdar_loss(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    *,
    gate: GateKind = "gap",
    beta: float = 5.0,
    entropy: Tensor | None = None,
    detach_gate: bool = True,
    agg: AggMode = "token-mean",
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    dp_size: int = 1,
    norm: float | None = None,
) -> LossOutput:
    """SDAR's gated self-distillation loss ``L = Agg(g * (sg[teacher] - student))``.

    Its gradient is ``-Agg(g * grad log pi_theta)`` (paper Prop. 2): every sampled token's likelihood is raised with
    weight ``g``. With ``beta = 0`` the gate is 0.5 and the loss is ``0.5 * Agg(teacher) + 0.5 * NLL`` of the samples.

    ``detach_gate=False`` is the Prop. 5 ablation: the token loss is ``sigmoid(beta delta) * delta`` with
    ``delta = sg[teacher] - student`` carrying gradient through the student (and, for the entropy-based gates,
    through ``entropy`` if the caller passes it with gradient). For the gap gate its gradient is
    ``-(g + beta delta g (1 - g)) grad log pi_theta``.

    Args:
        student_logprobs: ``[N, A]`` current policy log-probs of the sampled tokens (carry gradient).
        teacher_logprobs: ``[N, A]`` same tokens under the privileged-context teacher (detached here).
        mask: ``[N, A]`` bool.
        gate, beta, entropy: See :func:`sdar_gate`.
        detach_gate: False gives the undetached Prop. 5 ablation.
        agg, global_tokens, global_seqs, dp_size, norm: Passed to :func:`aggregate`.

    Returns:
        ``LossOutput`` with metrics ``gate_mean``, ``gate_active_ratio`` (share of tokens with ``g > 0.5``),
        ``gap_mean`` (mean ``delta``), ``gap_abs_mean`` and ``sdar_loss``.
    """
    check_mask(mask)
    student = where_mask(student_logprobs, mask)  # [N, A]
    teacher = where_mask(teacher_logprobs.detach(), mask)
    h = where_mask(entropy, mask) if entropy is not None else None
    delta_const = teacher - student.detach()
    if detach_gate:
        g = _gate_value(delta_const, gate=gate, beta=beta, entropy=h.detach() if h is not None else None).detach()
        token_loss = g * (teacher - student)
    else:
        delta_live = teacher - student
        g = _gate_value(delta_live, gate=gate, beta=beta, entropy=h)
        token_loss = g * delta_live
    loss = aggregate(
        token_loss, mask, agg, global_tokens=global_tokens, global_seqs=global_seqs, dp_size=dp_size, norm=norm
    )
    with torch.no_grad():
        g_d = g.detach()
        metrics = {
            "gate_mean": masked_mean(g_d, mask),
            "gate_active_ratio": masked_mean((g_d > 0.5).float(), mask),
            "gap_mean": masked_mean(delta_const, mask),
            "gap_abs_mean": masked_mean(delta_const.abs(), mask),
            "sdar_loss": loss.detach(),
        }
    return LossOutput(loss, metrics)


def _kl_rows(logp: Tensor, logq: Tensor) -> Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` over the last dim; entries with ``p_v = 0`` add exactly 0.

    Args:
        logp, logq: ``[..., V]`` log-probabilities.

    Returns:
        ``[...]``.
    """
    live = logp > float("-inf")
    lp = torch.where(live, logp, torch.zeros_like(logp))
    lq = torch.where(live, logq, torch.zeros_like(logq))
    return torch.where(live, torch.exp(lp) * (lp - lq), torch.zeros_like(lp)).sum(-1)


def _jsd_rows(logp: Tensor, logq: Tensor) -> Tensor:
    """``0.5 KL(p || m) + 0.5 KL(q || m)`` with ``m = (p + q) / 2``, over the last dim."""
    both_dead = (logp == float("-inf")) & (logq == float("-inf"))
    zero = torch.zeros_like(logp)
    log_m = torch.logaddexp(torch.where(both_dead, zero, logp), torch.where(both_dead, zero, logq)) - math.log(2.0)
    return 0.5 * _kl_rows(logp, log_m) + 0.5 * _kl_rows(logq, log_m)


def topk_with_tail(logprobs: Tensor, indices: Tensor) -> Tensor:
    """Log-probs of ``indices`` plus one tail bucket holding all the remaining probability mass.

    The tail is ``logsumexp`` over the entries *not* selected (exact, no ``log(1 - sum)`` cancellation); it is
    ``-inf`` when nothing is left. No renormalisation: the ``K + 1`` probabilities sum to the original total.

    Args:
        logprobs: ``[..., V]`` log-probabilities.
        indices: ``[..., K]`` distinct vocabulary indices per position.

    Returns:
        ``[..., K + 1]``: the ``K`` selected log-probs, then the tail log-mass.
    """
    picked = logprobs.gather(-1, indices)  # [..., K]
    rest = logprobs.scatter(-1, indices, float("-inf"))  # [..., V]
    empty = (rest == float("-inf")).all(-1, keepdim=True)  # [..., 1]
    tail = torch.logsumexp(torch.where(empty, torch.zeros_like(rest), rest), dim=-1, keepdim=True)
    tail = torch.where(empty, torch.full_like(tail, float("-inf")), tail)
    return torch.cat([picked, tail], dim=-1)


def divergence_loss(
    student_logits: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    *,
    kind: DivergenceKind = "reverse_kl",
    topk: int | None = None,
    agg: AggMode = "token-mean",
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    dp_size: int = 1,
    norm: float | None = None,
) -> LossOutput:
    """Full-distribution distillation (OPSD/SDPO style) between student ``p`` and teacher ``q`` at each position.

    ``reverse_kl``: ``KL(p || q)``; ``forward_kl``: ``KL(q || p)``; ``jsd``: ``0.5 KL(p || m) + 0.5 KL(q || m)``,
    ``m = (p + q) / 2``. With ``topk``, both distributions are reduced to the student's top-``k`` tokens (indices from
    the detached student) plus one tail bucket (:func:`topk_with_tail`); nothing is renormalised.

    Args:
        student_logits: ``[N, A, V]`` (carry gradient); upcast to fp32.
        teacher_logprobs: ``[N, A, V]`` log-probabilities (detached here).
        mask: ``[N, A]`` bool.
        kind: Which divergence.
        topk: Keep the student's top-k tokens plus the tail; ``None`` = full vocabulary.
        agg, global_tokens, global_seqs, dp_size, norm: Passed to :func:`aggregate`.

    Returns:
        ``LossOutput`` with metrics ``divergence`` and, with ``topk``, ``student_tail_mass`` and
        ``teacher_tail_mass`` (mean probability in the tail bucket).
    """
    check_mask(mask)
    if kind not in DIVERGENCE_KINDS:
        raise ValueError(f"unknown divergence {kind!r}; choose one of {list(DIVERGENCE_KINDS)}")
    vocab = student_logits.shape[-1]
    if teacher_logprobs.shape != student_logits.shape:
        raise ValueError(f"teacher {tuple(teacher_logprobs.shape)} != student {tuple(student_logits.shape)}")
    row_mask = mask.unsqueeze(-1)  # [N, A, 1]
    logits = where_mask(student_logits.float(), row_mask)
    student_lp = torch.log_softmax(logits, dim=-1)  # [N, A, V]
    teacher_lp = where_mask(teacher_logprobs.detach().float(), row_mask, -math.log(vocab))
    metrics: dict[str, Tensor] = {}
    if topk is not None:
        if not 1 <= topk <= vocab:
            raise ValueError(f"topk must be in [1, {vocab}] (the vocabulary size), got {topk}")
        idx = student_lp.detach().topk(topk, dim=-1).indices  # [N, A, K]
        student_lp = topk_with_tail(student_lp, idx)  # [N, A, K + 1]
        teacher_lp = topk_with_tail(teacher_lp, idx)
        with torch.no_grad():
            metrics["student_tail_mass"] = masked_mean(student_lp[..., -1].exp(), mask)
            metrics["teacher_tail_mass"] = masked_mean(teacher_lp[..., -1].exp(), mask)
    if kind == "reverse_kl":
        per_token = _kl_rows(student_lp, teacher_lp)
    elif kind == "forward_kl":
        per_token = _kl_rows(teacher_lp, student_lp)
    else:
        per_token = _jsd_rows(student_lp, teacher_lp)
    loss = aggregate(
        per_token, mask, agg, global_tokens=global_tokens, global_seqs=global_seqs, dp_size=dp_size, norm=norm
    )
    metrics["divergence"] = loss.detach()
    return LossOutput(loss, metrics)


def skill_sd_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    *,
    agg: AggMode = "token-mean",
    global_tokens: float | Tensor | None = None,
    global_seqs: float | Tensor | None = None,
    dp_size: int = 1,
    norm: float | None = None,
    neg_gap_clamp: float = 20.0,
    log_ratio_clamp: float = 10.0,
) -> LossOutput:
    """Skill-SD's importance-weighted K3 self-distillation loss ``L = Agg(rho_t k_t)`` (SDAR App. B, Alg. 4).

    ``d = logp - teacher``; ``k = exp(min(-d, neg_gap_clamp)) - 1 + d``; ``rho = exp(min(logp - old,
    log_ratio_clamp))``. ``rho`` is **not** detached: the gradient flows through both ``rho`` and ``k``, as in the
    formula and the reference ``compute_sdl_loss``. Teacher and old log-probs are constants.

    Args:
        logprobs: ``[N, A]`` current policy (carry gradient).
        old_logprobs: ``[N, A]`` behaviour policy.
        teacher_logprobs: ``[N, A]`` privileged teacher.
        mask: ``[N, A]`` bool.
        agg, global_tokens, global_seqs, dp_size, norm: Passed to :func:`aggregate`.
        neg_gap_clamp: Upper bound on ``-d`` before ``exp``.
        log_ratio_clamp: Upper bound on ``logp - old`` before ``exp``.

    Returns:
        ``LossOutput`` with metrics ``k3_mean``, ``rho_mean`` and ``skill_sd_loss``.
    """
    check_mask(mask)
    logp = where_mask(logprobs, mask)  # [N, A]
    old = where_mask(old_logprobs.detach(), mask)
    teacher = where_mask(teacher_logprobs.detach(), mask)
    d = logp - teacher
    k3 = torch.exp((-d).clamp(max=neg_gap_clamp)) - 1.0 + d
    rho = torch.exp((logp - old).clamp(max=log_ratio_clamp))
    loss = aggregate(
        rho * k3, mask, agg, global_tokens=global_tokens, global_seqs=global_seqs, dp_size=dp_size, norm=norm
    )
    with torch.no_grad():
        metrics = {
            "k3_mean": masked_mean(k3.detach(), mask),
            "rho_mean": masked_mean(rho.detach(), mask),
            "skill_sd_loss": loss.detach(),
        }
    return LossOutput(loss, metrics)


def rlsd_advantages(
    advantages: Tensor,
    teacher_logprobs: Tensor,
    old_logprobs: Tensor,
    *,
    lam: float,
    eps_w: float = 0.2,
    mask: Tensor | None = None,
) -> Tensor:
    """RLSD token advantages ``A_hat = A [(1 - lam) + lam clip(exp(sign(A) delta), 1 - eps_w, 1 + eps_w)]``.

    ``delta = teacher - old`` (detached). The reward fixes the update's direction; the teacher only rescales its
    magnitude per token, by at most ``1 +- lam * eps_w``.

    Args:
        advantages: ``[N, A]`` sequence advantages broadcast over tokens.
        teacher_logprobs: ``[N, A]``.
        old_logprobs: ``[N, A]``.
        lam: Mixing weight in ``[0, 1]`` (see :func:`rlsd_lambda` for the warm-down).
        eps_w: Clip half-width of the token weight, in ``[0, 1)``.
        mask: Optional ``[N, A]`` bool; masked positions get 0.

    Returns:
        ``[N, A]`` detached advantages.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not 0.0 <= eps_w < 1.0:
        raise ValueError(f"eps_w must be in [0, 1), got {eps_w}")
    adv = advantages.detach()
    teacher = teacher_logprobs.detach()
    old = old_logprobs.detach()
    if mask is not None:
        adv, teacher, old = where_mask(adv, mask), where_mask(teacher, mask), where_mask(old, mask)
    delta = teacher - old
    exponent = torch.where(adv == 0, torch.zeros_like(delta), torch.sign(adv) * delta)
    weight = torch.exp(exponent).clamp(1.0 - eps_w, 1.0 + eps_w)
    return adv * ((1.0 - lam) + lam * weight)


def rlsd_lambda(step: int, *, lam0: float = 0.5, warmdown_steps: int = 100) -> float:
    """RLSD's mixing weight at the 0-based training step ``step``: ``lam0`` decayed linearly to 0.

    The count follows the reference trainer, whose step counter is 1 at the first update: the weight is
    ``lam0 * (1 - (step + 1) / warmdown_steps)``, so the first step uses ``lam0 * (1 - 1/W)`` (0.495 for the defaults),
    the second ``lam0 * (1 - 2/W)``, and step index ``W - 1`` (the W-th update) and every later one use 0.

    Args:
        step: Training step, 0-based (the loop's step index).
        lam0: Initial weight.
        warmdown_steps: Steps to reach 0; ``<= 0`` keeps ``lam0`` constant.

    Returns:
        The weight, in ``[0, lam0]``.
    """
    if warmdown_steps <= 0:
        return float(lam0)
    return float(lam0) * max(0.0, 1.0 - (step + 1) / warmdown_steps)
