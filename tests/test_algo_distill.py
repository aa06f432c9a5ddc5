"""SDAR gated loss, gates, full-vocabulary divergences with top-k + tail, Skill-SD and RLSD, all by hand."""

from __future__ import annotations

import math

import pytest
import torch

from sdar.algo import (
    AGG_MODES,
    divergence_loss,
    rlsd_advantages,
    rlsd_lambda,
    sdar_gate,
    sdar_loss,
    skill_sd_loss,
    topk_with_tail,
)


def _close(actual: torch.Tensor, expected: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------------------ SDAR


def test_sdar_loss_value_gradient_and_metrics_by_hand() -> None:
    s = torch.tensor([[-1.0, -2.0, -9.0]], requires_grad=True)
    t = torch.tensor([[-1.0, -1.0, 0.0]])
    m = torch.tensor([[True, True, False]])
    out = sdar_loss(s, t, m, beta=5.0)
    # gaps 0 and 1 -> gates sigmoid(0) = 0.5, sigmoid(5) = 0.993307; token terms 0.5 * 0 and 0.993307 * 1
    # token-mean over the 2 real tokens: 0.496654
    _close(out.loss, sig(5.0) / 2)
    out.loss.backward()
    # dL/ds = -g / n_tokens = [-0.25, -0.496654]; the masked token gets nothing
    _close(s.grad, [[-0.25, -sig(5.0) / 2, 0.0]])
    met = out.metrics
    _close(met["gate_mean"], (0.5 + sig(5.0)) / 2)
    _close(met["gate_active_ratio"], 0.5)  # only g = 0.993 is > 0.5 (0.5 itself is not)
    _close(met["gap_mean"], 0.5)
    _close(met["gap_abs_mean"], 0.5)
    _close(met["sdar_loss"], sig(5.0) / 2)
    assert all(not v.requires_grad and v.dim() == 0 for v in met.values())


def test_sdar_negative_gap_is_softly_attenuated() -> None:
    s = torch.tensor([[-0.5, -1.0]], requires_grad=True)
    t = torch.tensor([[-1.5, -3.0]])
    out = sdar_loss(s, t, torch.ones(1, 2, dtype=torch.bool))
    # gaps -1 and -2: gates sigmoid(-5) = 0.0066929, sigmoid(-10) = 4.54e-5; terms -0.0066929 and -9.08e-5
    _close(out.loss, (-sig(-5.0) - 2 * sig(-10.0)) / 2, atol=1e-7)
    out.loss.backward()
    _close(s.grad, [[-sig(-5.0) / 2, -sig(-10.0) / 2]], atol=1e-7)
    _close(out.metrics["gap_abs_mean"], 1.5)
    _close(out.metrics["gate_active_ratio"], 0.0)


def test_sdar_gradient_is_minus_gate_over_num_tokens_on_random_data() -> None:
    gen = torch.Generator().manual_seed(0)
    s = (-3 * torch.rand(3, 5, generator=gen)).requires_grad_(True)
    t = -3 * torch.rand(3, 5, generator=gen)
    m = torch.rand(3, 5, generator=gen) > 0.3
    out = sdar_loss(s, t, m, beta=5.0)
    out.loss.backward()
    g = sdar_gate(s, t, beta=5.0)
    # Prop. 2: grad L = -token-mean(g grad log pi) -> dL/ds = -g / n on real tokens, 0 elsewhere
    torch.testing.assert_close(s.grad, torch.where(m, -g / m.sum(), torch.zeros_like(g)))


def test_the_gate_and_the_teacher_receive_no_gradient() -> None:
    s = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    t = torch.tensor([[-0.5, -3.0]], requires_grad=True)
    g = sdar_gate(s, t)
    assert not g.requires_grad
    out = sdar_loss(s, t, torch.ones(1, 2, dtype=torch.bool))
    out.loss.backward()
    assert t.grad is None  # the teacher is a constant
    # had the gate carried gradient, dL/ds would include beta * delta * g (1 - g) terms; it is exactly -g / n
    torch.testing.assert_close(s.grad, -g / 2)


def test_beta_zero_is_half_nll_of_the_sampled_tokens() -> None:
    s = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-3.0, -0.1, -2.0], [-1.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True], [True, False, False]])
    out = sdar_loss(s, t, m, beta=0.0)
    # g = 0.5 everywhere: L = 0.5 mean(t) - 0.5 mean(s), whatever the teacher says
    mean_t = (-3.0 - 0.1 - 2.0 - 1.0) / 4
    mean_s = (-1.0 - 2.0 - 4.0 - 0.5) / 4
    _close(out.loss, 0.5 * mean_t - 0.5 * mean_s)
    out.loss.backward()
    _close(s.grad, torch.where(m, torch.full((2, 3), -0.5 / 4), torch.zeros(2, 3)))
    _close(out.metrics["gate_mean"], 0.5)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_sdar_masked_tokens_contribute_nothing(poison: float) -> None:
    m = torch.tensor([[True, False, True]])
    s1 = torch.tensor([[-1.0, -2.0, -0.3]], requires_grad=True)
    s2 = torch.tensor([[-1.0, poison, -0.3]], requires_grad=True)
    t1 = torch.tensor([[-0.5, -1.0, -2.0]])
    t2 = torch.tensor([[-0.5, poison, -2.0]])
    h1 = torch.tensor([[0.2, 0.1, 0.4]])
    h2 = torch.tensor([[0.2, poison, 0.4]])
    for gate in ("gap", "entropy", "soft_or", "constant"):
        for detach in (True, False):
            s1.grad = s2.grad = None
            a = sdar_loss(s1, t1, m, gate=gate, entropy=h1, detach_gate=detach)  # type: ignore[arg-type]
            b = sdar_loss(s2, t2, m, gate=gate, entropy=h2, detach_gate=detach)  # type: ignore[arg-type]
            a.loss.backward()
            b.loss.backward()
            assert a.loss.item() == b.loss.item(), (gate, detach)
            assert torch.equal(s1.grad, s2.grad) and s2.grad[0, 1] == 0, (gate, detach)
            for k in a.metrics:
                assert a.metrics[k].item() == b.metrics[k].item(), (gate, k)


def test_undetached_gate_gradient_matches_proposition_5() -> None:
    s = torch.tensor([[-2.0, -1.0]], requires_grad=True)
    t = torch.tensor([[-1.0, -2.0]])
    beta = 5.0
    out = sdar_loss(s, t, torch.ones(1, 2, dtype=torch.bool), beta=beta, detach_gate=False)
    # token losses sigmoid(beta delta) delta with delta = [1, -1]: values g1 * 1 and g2 * (-1)
    g1, g2 = sig(5.0), sig(-5.0)
    _close(out.loss, (g1 - g2) / 2)
    out.loss.backward()
    # grad = -(g + beta delta g (1 - g)) / n:
    #   delta = 1:  -(0.993307 + 5 * 0.0066481) / 2 = -1.0265477 / 2
    #   delta = -1: -(0.0066929 - 5 * 0.0066481) / 2 = +0.0265477 / 2 (the token is pushed down)
    want = [-(g1 + beta * 1.0 * g1 * (1 - g1)) / 2, -(g2 + beta * -1.0 * g2 * (1 - g2)) / 2]
    _close(s.grad, [want])
    assert s.grad[0, 1] > 0


def test_gates_by_hand() -> None:
    s = torch.tensor([-1.0, -1.0, -1.0])
    t = torch.tensor([-1.0, -0.8, -2.0])  # delta = [0, 0.2, -1]
    h = torch.tensor([0.0, 0.5, 1.0])
    _close(sdar_gate(s, t, gate="gap", beta=5.0), [0.5, sig(1.0), sig(-5.0)])
    # entropy: sigmoid(5 h) = [0.5, sigmoid(2.5), sigmoid(5)]
    _close(sdar_gate(s, t, gate="entropy", entropy=h), [0.5, sig(2.5), sig(5.0)])
    # soft_or: sigmoid(5 [1 - (1 - h)(1 - delta)]):
    #   [1 - 1 * 1] = 0 -> 0.5; [1 - 0.5 * 0.8] = 0.6 -> sigmoid(3); [1 - 0 * 2] = 1 -> sigmoid(5)
    _close(sdar_gate(s, t, gate="soft_or", entropy=h), [0.5, sig(3.0), sig(5.0)])
    _close(sdar_gate(s, t, gate="constant"), [0.5, 0.5, 0.5])
    _close(sdar_gate(s, t, gate="gap", beta=0.0), [0.5, 0.5, 0.5])


def test_entropy_gate_loss_is_detached_from_the_entropy() -> None:
    s = torch.tensor([[-1.0]], requires_grad=True)
    h = torch.tensor([[0.4]], requires_grad=True)
    out = sdar_loss(s, torch.tensor([[-0.5]]), torch.ones(1, 1, dtype=torch.bool), gate="entropy", entropy=h)
    # g = sigmoid(5 * 0.4) = sigmoid(2); loss = g * 0.5
    _close(out.loss, sig(2.0) * 0.5)
    out.loss.backward()
    assert h.grad is None
    _close(s.grad, [[-sig(2.0)]])


def test_gate_errors() -> None:
    z = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="entropy"):
        sdar_gate(z, z, gate="soft_or")
    with pytest.raises(ValueError, match="unknown gate"):
        sdar_gate(z, z, gate="hard")  # type: ignore[arg-type]


def _reference_compute_sdar_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask_f: torch.Tensor, beta: float
) -> torch.Tensor:
    """The reference implementation's formula, token-mean (verl masked_mean: sum(x m) / (sum(m) + 1e-8))."""
    teacher = teacher.detach()
    gate = torch.sigmoid(beta * (teacher - student.detach())).detach()
    per_token = gate * (teacher - student)
    return (per_token * mask_f).sum() / (mask_f.sum() + 1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reproduces_reference_number_for_number(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    s_ref = (-4 * torch.rand(4, 7, generator=gen)).requires_grad_(True)
    s_ours = s_ref.detach().clone().requires_grad_(True)
    t = -4 * torch.rand(4, 7, generator=gen)
    m = torch.rand(4, 7, generator=gen) > 0.25
    want = _reference_compute_sdar_loss(s_ref, t, m.float(), 5.0)
    got = sdar_loss(s_ours, t, m, beta=5.0)
    want.backward()
    got.loss.backward()
    assert torch.equal(got.loss, want), (got.loss.item(), want.item())
    assert torch.equal(s_ours.grad, s_ref.grad)


def test_sdar_ragged_rows_under_each_aggregation_mode() -> None:
    s = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]], requires_grad=True)
    t = torch.zeros(2, 3)
    m = torch.tensor([[True, True, True], [True, False, False]])
    # beta 0 -> g 0.5: token terms row 0 [0.5, 1, 1.5] (sum 3, mean 1), row 1 [2] (sum 2, mean 2)
    want = {
        "token-mean": (0.5 + 1 + 1.5 + 2) / 4,  # 1.25
        "seq-mean-token-mean": (1 + 2) / 2,  # 1.5
        "seq-mean-token-sum": (3 + 2) / 2,  # 2.5
        "seq-mean-token-sum-norm": (3 + 2) / 2 / 3,  # horizon A = 3
    }
    assert set(want) == set(AGG_MODES)
    for mode, value in want.items():
        _close(sdar_loss(s, t, m, beta=0.0, agg=mode).loss, value)  # type: ignore[arg-type]
    sdar_loss(s, t, m, beta=0.0, agg="seq-mean-token-mean").loss.backward()
    # row 0 tokens: -0.5 / (2 rows * 3 tokens) = -1/12; row 1 token: -0.5 / (2 * 1) = -0.25
    _close(s.grad, [[-1 / 12, -1 / 12, -1 / 12], [-0.25, 0.0, 0.0]])


# ------------------------------------------------------------------------------------------------------ divergences

P = [0.5, 0.25, 0.25]  # student
Q = [0.1, 0.6, 0.3]  # teacher
M = [(p + q) / 2 for p, q in zip(P, Q)]  # [0.3, 0.425, 0.275]


def _kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def _jsd(a: list[float], b: list[float]) -> float:
    m = [(x + y) / 2 for x, y in zip(a, b)]
    return 0.5 * _kl(a, m) + 0.5 * _kl(b, m)


def _div(kind: str, p: list[float] = P, q: list[float] = Q, topk: int | None = None):  # type: ignore[no-untyped-def]
    logits = torch.tensor([[[math.log(x) for x in p]]], requires_grad=True)  # [1, 1, 3]; softmax(log p) = p
    teacher = torch.tensor([[[math.log(x) if x > 0 else float("-inf") for x in q]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    out = divergence_loss(logits, teacher, mask, kind=kind, topk=topk)  # type: ignore[arg-type]
    return out, logits


def test_reverse_kl_by_hand_on_three_tokens() -> None:
    out, logits = _div("reverse_kl")
    # KL(p||q) = 0.5 ln(0.5/0.1) + 0.25 ln(0.25/0.6) + 0.25 ln(0.25/0.3) = 0.804719 - 0.218867 - 0.045580 = 0.540272
    _close(out.loss, 0.540272)
    _close(out.loss, _kl(P, Q))
    out.loss.backward()
    # d KL(p||q) / d z_i = p_i (ln p_i - ln q_i - KL)
    kl = _kl(P, Q)
    _close(logits.grad[0, 0], [p * (math.log(p / q) - kl) for p, q in zip(P, Q)])


def test_forward_kl_by_hand_on_three_tokens() -> None:
    out, logits = _div("forward_kl")
    # KL(q||p) = 0.1 ln(0.1/0.5) + 0.6 ln(0.6/0.25) + 0.3 ln(0.3/0.25) = -0.160944 + 0.525281 + 0.054697 = 0.419035
    _close(out.loss, 0.419035)
    out.loss.backward()
    # d/dz of -sum q ln softmax(z) = p - q = [0.4, -0.35, -0.05]
    _close(logits.grad[0, 0], [0.4, -0.35, -0.05])


def test_jsd_by_hand_on_three_tokens() -> None:
    out, _ = _div("jsd")
    # m = [0.3, 0.425, 0.275]; KL(p||m) = 0.098928, KL(q||m) = 0.123146; JSD = (0.098928 + 0.123146) / 2 = 0.111037
    _close(out.loss, 0.111037)
    _close(out.loss, 0.5 * _kl(P, M) + 0.5 * _kl(Q, M))


def test_topk_with_tail_bookkeeping() -> None:
    lp = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    out = topk_with_tail(lp, torch.tensor([[2, 0]]))
    # picked [0.2, 0.5] and the tail holds the rest: 0.3
    _close(out.exp(), [[0.2, 0.5, 0.3]])
    # mass is conserved on random distributions
    gen = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(4, 10, generator=gen), -1)
    idx = lp.topk(3, -1).indices
    _close(topk_with_tail(lp, idx).exp().sum(-1), torch.ones(4))


def test_topk_tail_is_computed_stably() -> None:
    # top-1 holds nearly all mass: tail = ln(2 e^0 / (e^30 + 2)) = -30 + ln 2 - ln(1 + 2e^-30) ~ -29.306853
    # (log(1 - p_top) would give log(0) = -inf in fp32)
    lp = torch.log_softmax(torch.tensor([[30.0, 0.0, 0.0]]), -1)
    out = topk_with_tail(lp, torch.tensor([[0]]))
    _close(out[0, 1], -30.0 + math.log(2.0), atol=1e-4)
    # nothing left over (k = V): the tail is -inf and its gradient is not NaN
    lp = torch.log_softmax(torch.tensor([[1.0, 2.0]], requires_grad=True), -1)
    full = topk_with_tail(lp, torch.tensor([[1, 0]]))
    assert full[0, 2].item() == float("-inf")
    full[..., :2].sum().backward()


def test_topk_divergence_by_hand() -> None:
    p = [0.5, 0.3, 0.2]
    # k = 1: student buckets [0.5 | 0.5], teacher [0.1 | 0.9]: 0.5 ln(0.5/0.1) + 0.5 ln(0.5/0.9) = 0.510826
    out, _ = _div("reverse_kl", p=p, topk=1)
    _close(out.loss, 0.5 * math.log(5.0) + 0.5 * math.log(0.5 / 0.9))
    _close(out.metrics["student_tail_mass"], 0.5)
    _close(out.metrics["teacher_tail_mass"], 0.9)
    # k = 2: the tail is the single remaining token, so the result is the full KL; tails 0.2 and 0.3
    out, _ = _div("reverse_kl", p=p, topk=2)
    _close(out.loss, _kl(p, Q))
    _close(out.metrics["teacher_tail_mass"], 0.3)
    # k = V: empty tail (-inf on both sides) adds exactly 0; gradients finite
    out, logits = _div("jsd", p=p, topk=3)
    _close(out.loss, _jsd(p, Q))
    out.loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_divergence_with_a_banned_teacher_token() -> None:
    q = [0.5, 0.5, 0.0]  # the teacher gives token 2 zero probability (log -inf)
    out, logits = _div("forward_kl", q=q)
    # KL(q||p) skips q = 0: 0.5 ln(0.5/0.5) + 0.5 ln(0.5/0.25) = 0.5 ln 2
    _close(out.loss, 0.5 * math.log(2.0))
    out.loss.backward()
    assert torch.isfinite(logits.grad).all()
    jsd, logits = _div("jsd", q=q)
    _close(jsd.loss, _jsd(P, q))
    jsd.loss.backward()
    assert torch.isfinite(logits.grad).all()
    # reverse KL is genuinely infinite there (student mass where the teacher has none)
    assert _div("reverse_kl", q=q)[0].loss.item() == float("inf")


def test_divergence_masking_and_teacher_gets_no_gradient() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=gen)
    teacher = torch.log_softmax(torch.randn(2, 3, 5, generator=gen), -1)
    m = torch.tensor([[True, False, True], [False, True, True]])
    dirty_logits = logits.clone()
    dirty_teacher = teacher.clone()
    dirty_logits[~m] = float("nan")
    dirty_teacher[~m] = float("inf")
    for kind in ("reverse_kl", "forward_kl", "jsd"):
        for topk in (None, 2):
            a_in = logits.clone().requires_grad_(True)
            b_in = dirty_logits.clone().requires_grad_(True)
            t_in = teacher.clone().requires_grad_(True)
            a = divergence_loss(a_in, t_in, m, kind=kind, topk=topk)  # type: ignore[arg-type]
            b = divergence_loss(b_in, dirty_teacher, m, kind=kind, topk=topk)  # type: ignore[arg-type]
            a.loss.backward()
            b.loss.backward()
            assert a.loss.item() == b.loss.item(), (kind, topk)
            assert torch.equal(a_in.grad, b_in.grad) and (b_in.grad[~m] == 0).all()
            assert t_in.grad is None


def test_divergence_errors() -> None:
    x = torch.zeros(1, 1, 3)
    m = torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="topk"):
        divergence_loss(x, x, m, topk=4)
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence_loss(x, x, m, kind="tv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="teacher"):
        divergence_loss(x, torch.zeros(1, 1, 4), m)


# -------------------------------------------------------------------------------------------------------- Skill-SD


def test_skill_sd_by_hand_with_gradient_through_rho() -> None:
    logp = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -3.0]])
    teacher = torch.tensor([[-2.0, -1.0]])
    out = skill_sd_loss(logp, old, teacher, torch.ones(1, 2, dtype=torch.bool))
    # token 0: d = 1, k3 = e^-1 - 1 + 1 = 0.367879, rho = e^0.5 = 1.648721 -> rho k3 = e^-0.5 = 0.606531
    # token 1: d = -2, k3 = e^2 - 1 - 2 = 4.389056, rho = 1 -> 4.389056
    _close(out.loss, (math.exp(-0.5) + math.exp(2.0) - 3.0) / 2)
    out.loss.backward()
    # d(rho k3)/dlogp = rho k3 + rho (1 - e^-d) = rho d  (rho is NOT detached; detached would give rho (1 - e^-d))
    #   token 0: 1.648721 * 1; token 1: 1 * -2; token-mean halves both
    _close(logp.grad, [[math.exp(0.5) / 2, -1.0]])
    _close(out.metrics["rho_mean"], (math.exp(0.5) + 1.0) / 2)
    _close(out.metrics["k3_mean"], (math.exp(-1.0) + math.exp(2.0) - 3.0) / 2)


def test_skill_sd_clamps_by_hand() -> None:
    # log-ratio 20 clamped to 10: rho = e^10 with no gradient through it; d = 1 -> k3 = e^-1
    logp = torch.tensor([[0.0]], requires_grad=True)
    out = skill_sd_loss(logp, torch.tensor([[-20.0]]), torch.tensor([[-1.0]]), torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(out.loss, torch.tensor(math.exp(10.0) * math.exp(-1.0)), rtol=1e-5, atol=0)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[math.exp(10.0) * (1 - math.exp(-1.0))]]), rtol=1e-5, atol=0)
    # -d = 30 clamped to 20: k3 = e^20 - 1 + (-30), rho = 1
    one = torch.ones(1, 1, dtype=torch.bool)
    out = skill_sd_loss(torch.tensor([[-30.0]]), torch.tensor([[-30.0]]), torch.tensor([[0.0]]), one)
    torch.testing.assert_close(out.loss, torch.tensor(math.exp(20.0) - 31.0), rtol=1e-6, atol=0)


def test_skill_sd_masked_tokens_contribute_nothing() -> None:
    m = torch.tensor([[True, False]])
    a_in = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    b_in = torch.tensor([[-1.0, float("nan")]], requires_grad=True)
    a = skill_sd_loss(a_in, torch.tensor([[-1.0, 0.0]]), torch.tensor([[-2.0, 0.0]]), m)
    b = skill_sd_loss(b_in, torch.tensor([[-1.0, float("-inf")]]), torch.tensor([[-2.0, float("inf")]]), m)
    a.loss.backward()
    b.loss.backward()
    assert a.loss.item() == b.loss.item() and torch.equal(a_in.grad, b_in.grad)


# ------------------------------------------------------------------------------------------------------------ RLSD


def test_rlsd_advantages_by_hand() -> None:
    adv = torch.tensor([[2.0, 2.0], [-1.0, -1.0]])
    old = torch.zeros(2, 2)
    teacher = torch.tensor([[0.1, -0.5], [0.1, -0.5]])  # delta = teacher - old
    out = rlsd_advantages(adv, teacher, old, lam=0.5, eps_w=0.2)
    # A > 0: w = exp(delta) = [1.105171, 0.606531] -> clip [1.105171, 0.8]; A_hat = 2 (0.5 + 0.5 w) = [2.105171, 1.8]
    # A < 0: w = exp(-delta) = [0.904837, 1.648721] -> clip [0.904837, 1.2]; A_hat = -(0.5 + 0.5 w) = [-0.952419, -1.1]
    _close(out, [[2.105171, 1.8], [-0.952419, -1.1]])


def test_rlsd_edge_cases() -> None:
    adv = torch.tensor([[0.0, 3.0, -2.0]])
    teacher = torch.tensor([[float("-inf"), 50.0, -100.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    out = rlsd_advantages(adv, teacher, old, lam=1.0, eps_w=0.2)
    # A = 0 stays 0 (no 0 * inf); huge |delta| saturates the clip: 3 * 1.2, -2 * 1.2
    _close(out, [[0.0, 3.6, -2.4]])
    assert not out.requires_grad
    # lam = 0: GRPO advantages unchanged
    _close(rlsd_advantages(adv, teacher.detach(), old, lam=0.0), adv)
    # masked positions become 0 even when poisoned
    m = torch.tensor([[True, True, False]])
    poisoned = torch.tensor([[0.0, 3.0, float("nan")]])
    _close(rlsd_advantages(poisoned, teacher.detach(), old, lam=1.0, mask=m), [[0.0, 3.6, 0.0]])
    with pytest.raises(ValueError, match="lam"):
        rlsd_advantages(adv, old, old, lam=1.5)
    with pytest.raises(ValueError, match="eps_w"):
        rlsd_advantages(adv, old, old, lam=0.5, eps_w=1.0)


def test_rlsd_lambda_warm_down() -> None:
    # 0.5 -> 0 linearly over 100 steps, counted as the reference counts them: the first step (index 0) is its step 1
    assert rlsd_lambda(0) == pytest.approx(0.495)  # first step
    assert rlsd_lambda(1) == pytest.approx(0.49)  # second step
    assert rlsd_lambda(49) == pytest.approx(0.25)
    assert rlsd_lambda(98) == pytest.approx(0.005)
    assert rlsd_lambda(99) == 0.0  # the 100th step, as the reference's step 100
    assert rlsd_lambda(150) == 0.0
    assert rlsd_lambda(29, lam0=0.2, warmdown_steps=60) == pytest.approx(0.1)
    # warmdown_steps <= 0 keeps the weight constant
    assert rlsd_lambda(1000, warmdown_steps=0) == 0.5
    assert rlsd_lambda(1000, warmdown_steps=-1) == 0.5
