"""Property tests: finiteness down to log-probs of -1e4, gate ranges, mask invariance, shard invariance, advantages.

On gate ranges: ``sigmoid`` is in the open interval (0, 1) mathematically, but fp32 rounds ``sigmoid(x)`` to exactly
1.0 for ``x`` above ~16.6 (and to 0.0 below ~-90). So the open interval is asserted where fp32 can represent it
(``|beta * score| <= 16``), and beyond that the closed interval [0, 1] plus finiteness of the gate, the loss and its
gradient. ``test_fp32_sigmoid_saturates_where_documented`` pins the reason down.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdar.algo import (
    AGG_MODES,
    METHODS,
    aggregate,
    clipped_policy_loss,
    divergence_loss,
    entropy_loss,
    grpo_advantages,
    kl_loss,
    kl_penalty,
    policy_objective,
    rlsd_advantages,
    sdar_gate,
    sdar_loss,
    skill_sd_loss,
    step_grpo_advantages,
)

N, A = 2, 3
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

logprob = st.one_of(st.just(0.0), st.just(-1e4), st.floats(min_value=-1e4, max_value=0.0, width=32))
logprobs = st.lists(logprob, min_size=N * A, max_size=N * A).map(lambda v: torch.tensor(v).reshape(N, A))
advantage = st.floats(min_value=-10.0, max_value=10.0, width=32)
advantages = st.lists(advantage, min_size=N * A, max_size=N * A).map(lambda v: torch.tensor(v).reshape(N, A))
entropies = st.lists(st.floats(0.0, 12.0, width=32), min_size=N * A, max_size=N * A).map(
    lambda v: torch.tensor(v).reshape(N, A)
)
masks = st.lists(st.booleans(), min_size=N * A, max_size=N * A).map(lambda v: torch.tensor(v).reshape(N, A))
gates = st.sampled_from(["gap", "entropy", "soft_or", "constant"])
aggs = st.sampled_from(AGG_MODES)


def _finite_loss_and_grad(fn, x: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    x = x.clone().requires_grad_(True)
    out = fn(x)
    loss = out.loss if hasattr(out, "loss") else out
    assert torch.isfinite(loss).all(), loss
    if loss.requires_grad:
        loss.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), x.grad
    for name, value in getattr(out, "metrics", {}).items():
        assert torch.isfinite(value).all(), name


@SETTINGS
@given(logp=logprobs, old=logprobs, ref=logprobs, teacher=logprobs, adv=advantages, ent=entropies, mask=masks,
       gate=gates, beta=st.floats(0.0, 50.0), agg=aggs, detach=st.booleans())
def test_every_loss_is_finite_for_extreme_logprobs(
    logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, teacher: torch.Tensor, adv: torch.Tensor,
    ent: torch.Tensor, mask: torch.Tensor, gate: str, beta: float, agg: str, detach: bool,
) -> None:
    kw = {"agg": agg}
    _finite_loss_and_grad(lambda x: clipped_policy_loss(x, old, adv, mask, **kw), logp)
    _finite_loss_and_grad(lambda x: clipped_policy_loss(x, old, adv, mask, dual_clip=None, is_weights=ent, **kw), logp)
    for estimator in ("k1", "k2", "low_var_kl"):
        _finite_loss_and_grad(lambda x: kl_loss(x, ref, mask, estimator=estimator, **kw), logp)  # noqa: B023
    _finite_loss_and_grad(
        lambda x: sdar_loss(x, teacher, mask, gate=gate, beta=beta, entropy=ent, detach_gate=detach, **kw), logp
    )
    _finite_loss_and_grad(lambda x: skill_sd_loss(x, old, teacher, mask, **kw), logp)
    _finite_loss_and_grad(lambda x: entropy_loss(x, mask, **kw), ent)
    assert torch.isfinite(rlsd_advantages(adv, teacher, old, lam=0.5, mask=mask)).all()
    assert torch.isfinite(rlsd_advantages(adv, teacher, old, lam=1.0)).all()


@SETTINGS
@given(logp=logprobs, old=logprobs, ref=logprobs, teacher=logprobs, adv=advantages, ent=entropies, mask=masks,
       name=st.sampled_from(sorted(METHODS)), step=st.integers(0, 200))
def test_every_method_objective_is_finite(
    logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, teacher: torch.Tensor, adv: torch.Tensor,
    ent: torch.Tensor, mask: torch.Tensor, name: str, step: int,
) -> None:
    spec = METHODS[name].loss
    inputs = {"old_logprobs": old, "advantages": adv, "mask": mask, "ref_logprobs": ref,
              "teacher_logprobs": teacher, "entropy": ent}
    _finite_loss_and_grad(lambda x: policy_objective(spec, logprobs=x, step=step, **inputs), logp)


@settings(max_examples=25, deadline=None)
@given(
    logits=st.lists(st.floats(-1e4, 0.0, width=32), min_size=N * A * 4, max_size=N * A * 4),
    teacher_logits=st.lists(st.floats(-1e4, 0.0, width=32), min_size=N * A * 4, max_size=N * A * 4),
    mask=masks,
    kind=st.sampled_from(["reverse_kl", "forward_kl", "jsd"]),
    topk=st.sampled_from([None, 1, 2, 4]),
)
def test_divergences_are_finite_for_extreme_logits(
    logits: list[float], teacher_logits: list[float], mask: torch.Tensor, kind: str, topk: int | None
) -> None:
    student = torch.tensor(logits).reshape(N, A, 4)
    teacher = torch.log_softmax(torch.tensor(teacher_logits).reshape(N, A, 4), -1)
    def loss_fn(x: torch.Tensor):  # type: ignore[no-untyped-def]
        return divergence_loss(x, teacher, mask, kind=kind, topk=topk)  # type: ignore[arg-type]

    _finite_loss_and_grad(loss_fn, student)


@SETTINGS
@given(logp=st.floats(-1e4, 0.0, width=32), ref=st.floats(-1e4, 0.0, width=32))
def test_low_var_kl_is_finite_and_bounded_everywhere(logp: float, ref: float) -> None:
    v = kl_penalty(torch.tensor([logp]), torch.tensor([ref]), estimator="low_var_kl")
    assert torch.isfinite(v).all() and 0.0 <= v.item() <= 10.0


@SETTINGS
@given(logp=st.floats(-80.0, 0.0, width=32), gap=st.floats(-80.0, 80.0, width=32))
def test_raw_k3_is_finite_and_nonnegative_where_exp_fits_fp32(logp: float, gap: float) -> None:
    # raw k3 = e^x - x - 1 with x = ref - logp; e^x fits fp32 up to x ~ 88, so |x| <= 80 must be finite.
    # Beyond that raw k3 overflows by design (see the next test); low_var_kl is the clamped, always-finite one.
    v = kl_penalty(torch.tensor([logp]), torch.tensor([logp + gap]), estimator="k3")
    assert torch.isfinite(v).all() and v.item() >= -1e-6


def test_raw_k3_overflows_beyond_fp32_while_low_var_kl_does_not() -> None:
    logp, ref = torch.tensor([-1e4]), torch.tensor([0.0])
    assert kl_penalty(logp, ref, estimator="k3").item() == math.inf
    assert kl_penalty(logp, ref, estimator="low_var_kl").item() == 10.0


def test_fp32_sigmoid_saturates_where_documented() -> None:
    assert torch.sigmoid(torch.tensor(16.0)).item() < 1.0
    assert torch.sigmoid(torch.tensor(17.0)).item() == 1.0
    assert torch.sigmoid(torch.tensor(-80.0)).item() > 0.0
    assert torch.sigmoid(torch.tensor(-110.0)).item() == 0.0


small_lp = st.lists(st.floats(-2.0, 0.0, width=32), min_size=N * A, max_size=N * A).map(
    lambda v: torch.tensor(v).reshape(N, A)
)


@SETTINGS
@given(student=small_lp, teacher=small_lp, beta=st.floats(0.0, 8.0, width=32),
       h=st.lists(st.floats(0.0, 1.0, width=32), min_size=N * A, max_size=N * A), gate=gates)
def test_gates_are_strictly_inside_zero_one_where_fp32_can_represent_it(
    student: torch.Tensor, teacher: torch.Tensor, beta: float, h: list[float], gate: str
) -> None:
    # delta in [-2, 2], h in [0, 1], beta <= 8: |beta * delta| <= 16, beta * h <= 8, and for soft_or
    # 1 - (1 - h)(1 - delta) is in [-2, 1], so |beta * score| <= 16 for every gate
    ent = torch.tensor(h).reshape(N, A)
    g = sdar_gate(student, teacher, gate=gate, beta=beta, entropy=ent)  # type: ignore[arg-type]
    assert ((g > 0.0) & (g < 1.0)).all(), g
    assert not g.requires_grad


@SETTINGS
@given(student=logprobs, teacher=logprobs, beta=st.floats(0.0, 50.0), ent=entropies, gate=gates)
def test_gates_stay_in_closed_zero_one_and_finite_for_any_input(
    student: torch.Tensor, teacher: torch.Tensor, beta: float, ent: torch.Tensor, gate: str
) -> None:
    g = sdar_gate(student, teacher, gate=gate, beta=beta, entropy=ent)  # type: ignore[arg-type]
    assert torch.isfinite(g).all() and ((g >= 0.0) & (g <= 1.0)).all(), g


poison = st.sampled_from([float("nan"), float("inf"), float("-inf"), -1e4, 3.0])


@SETTINGS
@given(logp=logprobs, old=logprobs, teacher=logprobs, adv=advantages, mask=masks, junk=poison, agg=aggs)
def test_masked_values_never_change_losses_or_gradients(
    logp: torch.Tensor, old: torch.Tensor, teacher: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
    junk: float, agg: str,
) -> None:
    def poisoned(t: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, t, torch.full_like(t, junk))

    fns = [
        lambda lp, o, t, a: clipped_policy_loss(lp, o, a, mask, agg=agg),
        lambda lp, o, t, a: sdar_loss(lp, t, mask, agg=agg),
        lambda lp, o, t, a: skill_sd_loss(lp, o, t, mask, agg=agg),
        lambda lp, o, t, a: kl_loss(lp, t, mask, agg=agg),
    ]
    for fn in fns:
        a_in = logp.clone().requires_grad_(True)
        b_in = poisoned(logp).requires_grad_(True)
        a_out = fn(a_in, old, teacher, adv)
        b_out = fn(b_in, poisoned(old), poisoned(teacher), poisoned(adv))
        a_out.loss.backward()
        b_out.loss.backward()
        assert torch.equal(a_out.loss, b_out.loss)
        assert torch.equal(a_in.grad, b_in.grad)


@SETTINGS
@given(
    values=st.lists(st.floats(-5.0, 5.0, width=32), min_size=12, max_size=12),
    lengths=st.lists(st.integers(0, 3), min_size=4, max_size=4),
    split=st.integers(1, 3),
    agg=aggs,
)
def test_sharded_aggregation_equals_one_process(values: list[float], lengths: list[int], split: int, agg: str) -> None:
    loss_mat = torch.tensor(values).reshape(4, 3)
    mask = torch.arange(3)[None, :] < torch.tensor(lengths)[:, None]
    full = aggregate(loss_mat, mask, agg, norm=3.0)  # type: ignore[arg-type]
    counts = {"global_tokens": mask.sum(), "global_seqs": (mask.sum(-1) > 0).sum(), "dp_size": 2, "norm": 3.0}
    a = aggregate(loss_mat[:split], mask[:split], agg, **counts)  # type: ignore[arg-type]
    b = aggregate(loss_mat[split:], mask[split:], agg, **counts)  # type: ignore[arg-type]
    torch.testing.assert_close((a + b) / 2, full, atol=1e-5, rtol=1e-5)


@SETTINGS
@given(
    scores=st.lists(st.floats(-100.0, 100.0, width=32), min_size=1, max_size=24),
    groups=st.lists(st.integers(0, 4), min_size=24, max_size=24),
    episodes=st.lists(st.integers(0, 3), min_size=24, max_size=24),
    scale=st.booleans(),
)
def test_group_advantages_are_finite_and_centred(
    scores: list[float], groups: list[int], episodes: list[int], scale: bool
) -> None:
    s = torch.tensor(scores)
    g = torch.tensor(groups[: len(scores)])
    e = torch.tensor(episodes[: len(scores)])
    for adv in (
        grpo_advantages(s, g, scale_by_std=scale),
        step_grpo_advantages(s, g, e, stats="episodes", scale_by_std=scale),
    ):
        assert torch.isfinite(adv).all()
    adv = grpo_advantages(s, g, scale_by_std=scale)
    for gid in g.unique():
        members = adv[g == gid]
        assert abs(members.sum().item()) <= 1e-3 * max(1.0, members.abs().sum().item())
    # an all-equal batch has zero advantage everywhere, never NaN
    assert torch.equal(grpo_advantages(torch.full_like(s, 3.0), g, scale_by_std=scale), torch.zeros_like(s))


@pytest.mark.parametrize("estimator", ["k3", "low_var_kl"])
def test_k3_is_not_negative_next_to_zero(estimator: str) -> None:
    # e^x - x - 1 in fp32 rounded to -5.96e-08 at x = 5.96e-08 (hypothesis found it); expm1(x) - x does not
    tiny = torch.tensor([-5.960464477539063e-08, -1e-7, -3e-8, 0.0, 1e-7])
    assert (kl_penalty(tiny, torch.zeros(5), estimator=estimator) >= 0).all()
