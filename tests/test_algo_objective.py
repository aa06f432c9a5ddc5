"""The combined objective: term arithmetic by hand, missing-input errors, skipped terms, RLSD schedule, DP shards."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sdar.algo import (
    LossSpec,
    clipped_policy_loss,
    entropy_loss,
    kl_loss,
    policy_objective,
    required_inputs,
    resolve_loss,
    sdar_loss,
    skill_sd_loss,
)

ALL = torch.ones(1, 2, dtype=torch.bool)


def _close(actual: torch.Tensor, expected: object, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_sdar_objective_by_hand() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ent = torch.tensor([[0.5, 1.5]], requires_grad=True)
    out = policy_objective(
        resolve_loss("sdar"),
        logprobs=logp,
        old_logprobs=logp.detach(),
        advantages=torch.ones(1, 2),
        mask=ALL,
        ref_logprobs=logp.detach(),
        teacher_logprobs=torch.tensor([[-1.0, -1.0]]),
        entropy=ent,
    )
    # PG: ratio 1, A 1 -> -1; KL (low_var_kl at x = 0) -> 0; entropy mean 1; SDAR gaps [0, 1] -> (0.5*0 + s(5)*1)/2
    # total = 1 * (-1) + 0.01 * 0 - 0.001 * 1 + 0.01 * 0.496654 = -0.996033
    sdar_value = sig(5.0) / 2
    _close(out.loss, -1.0 - 0.001 + 0.01 * sdar_value)
    _close(out.metrics["loss/total"], -1.0 - 0.001 + 0.01 * sdar_value)
    out.loss.backward()
    # d/dlogp: PG -A/n = -0.5; KL gradient 1 - e^0 = 0; SDAR 0.01 * (-g/n) = [-0.0025, -0.01 * 0.496654]
    _close(logp.grad, [[-0.5 - 0.0025, -0.5 - 0.01 * sig(5.0) / 2]])
    # the entropy bonus is subtracted: d/dH = -0.001 / 2
    _close(ent.grad, [[-0.0005, -0.0005]])
    for key in ("pg/clip_frac", "pg/pg_loss", "kl/kl", "entropy/entropy", "sdar/gate_mean", "sdar/sdar_loss"):
        assert key in out.metrics, key
    assert all(not v.requires_grad for v in out.metrics.values())


def _random_inputs(seed: int, n: int = 4, a: int = 5, v: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, a, v, generator=gen)
    targets = torch.randint(0, v, (n, a), generator=gen)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, targets[..., None])[..., 0]
    return {
        "logprobs": logp,
        "old_logprobs": logp + 0.1 * torch.randn(n, a, generator=gen),
        "advantages": torch.randn(n, 1, generator=gen).expand(n, a).clone(),
        "mask": torch.arange(a)[None, :] < torch.tensor([5, 2, 0, 4])[:, None],
        "ref_logprobs": logp + 0.2 * torch.randn(n, a, generator=gen),
        "teacher_logprobs": logp + 0.5 * torch.randn(n, a, generator=gen),
        "entropy": torch.rand(n, a, generator=gen),
        "student_logits": logits,
        "teacher_full_logprobs": torch.log_softmax(logits + torch.randn(n, a, v, generator=gen), -1),
    }


@pytest.mark.parametrize("name", ["grpo", "skill_grpo", "opsd", "grpo_opsd", "skill_sd", "rlsd", "sdar"])
def test_total_is_the_weighted_sum_of_the_terms(name: str) -> None:
    x = _random_inputs(0)
    spec = resolve_loss(name)
    out = policy_objective(spec, **x)
    m = x["mask"]
    want = torch.tensor(0.0)
    if spec.pg_coef > 0:
        adv = x["advantages"]
        if spec.advantage_reweight == "rlsd":
            delta = x["teacher_logprobs"] - x["old_logprobs"]
            w = torch.exp(torch.sign(adv) * delta).clamp(0.8, 1.2)
            adv = adv * (0.5 + 0.5 * w)
        want = want + clipped_policy_loss(x["logprobs"], x["old_logprobs"], adv, m).loss
    want = want + 0.01 * kl_loss(x["logprobs"], x["ref_logprobs"], m).loss
    want = want - 0.001 * entropy_loss(x["entropy"], m).loss
    if spec.aux == "sdar":
        want = want + 0.01 * sdar_loss(x["logprobs"], x["teacher_logprobs"], m, beta=spec.gate_beta).loss
    if spec.aux == "skill_sd":
        want = want + 0.001 * skill_sd_loss(x["logprobs"], x["old_logprobs"], x["teacher_logprobs"], m).loss
    torch.testing.assert_close(out.loss, want)
    assert ("pg/pg_loss" in out.metrics) == (spec.pg_coef > 0)
    assert (f"{spec.aux}/{spec.aux}_loss" in out.metrics) == spec.uses_aux


def test_divergence_aux_term() -> None:
    x = _random_inputs(1)
    spec = LossSpec(
        aux="divergence", aux_coef=0.1, divergence_kind="jsd", divergence_topk=3, kl_coef=0.0, entropy_coef=0.0
    )
    out = policy_objective(spec, **x)
    assert "divergence/divergence" in out.metrics and "divergence/student_tail_mass" in out.metrics
    pg = out.metrics["pg/pg_loss"]
    _close(out.loss, pg + 0.1 * out.metrics["divergence/divergence"], atol=1e-6)


@pytest.mark.parametrize(
    ("spec", "missing", "reason"),
    [
        (resolve_loss("sdar"), "teacher_logprobs", "aux='sdar'"),
        (resolve_loss("skill_sd"), "teacher_logprobs", "aux='skill_sd'"),
        (resolve_loss("rlsd"), "teacher_logprobs", "advantage_reweight='rlsd'"),
        (resolve_loss("grpo"), "ref_logprobs", "kl_coef=0.01"),
        (resolve_loss("grpo"), "entropy", "entropy_coef=0.001"),
        (resolve_loss("sdar", gate="soft_or", entropy_coef=0.0), "entropy", "gate='soft_or'"),
        (LossSpec(aux="divergence", aux_coef=1.0), "student_logits", "aux='divergence'"),
        (LossSpec(aux="divergence", aux_coef=1.0), "teacher_full_logprobs", "aux='divergence'"),
    ],
)
def test_missing_inputs_raise_a_clear_error(spec: LossSpec, missing: str, reason: str) -> None:
    x = _random_inputs(2)
    del x[missing]
    with pytest.raises(ValueError, match=rf"{missing} \(.*\) is needed by {reason}"):
        policy_objective(spec, **x)


def test_terms_with_zero_coefficient_are_skipped_and_need_no_input() -> None:
    x = _random_inputs(3)
    spec = resolve_loss("sdar", kl_coef=0.0, entropy_coef=0.0)
    assert set(required_inputs(spec)) == {"teacher_logprobs"}
    out = policy_objective(
        spec,
        logprobs=x["logprobs"],
        old_logprobs=x["old_logprobs"],
        advantages=x["advantages"],
        mask=x["mask"],
        teacher_logprobs=x["teacher_logprobs"],
    )
    assert not any(k.startswith(("kl/", "entropy/")) for k in out.metrics)
    opsd = policy_objective(resolve_loss("opsd"), **x)
    assert not any(k.startswith("pg/") for k in opsd.metrics)
    # the RLSD reweighting is not computed (nor its teacher needed) when the PG term is off
    assert "teacher_logprobs" not in required_inputs(resolve_loss("rlsd", pg_coef=0.0))


def test_all_zero_coefficients_give_a_differentiable_zero() -> None:
    spec = LossSpec(pg_coef=0.0, kl_coef=0.0, entropy_coef=0.0)
    logp = torch.tensor([[-1.0, float("nan")]], requires_grad=True)
    mask = torch.tensor([[True, False]])
    out = policy_objective(spec, logprobs=logp, old_logprobs=logp.detach(), advantages=torch.ones(1, 2), mask=mask)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(logp.grad, torch.zeros(1, 2))


def test_rlsd_lambda_follows_the_step() -> None:
    spec = resolve_loss("rlsd", kl_coef=0.0, entropy_coef=0.0)
    common = {
        "logprobs": torch.zeros(1, 1),
        "old_logprobs": torch.zeros(1, 1),
        "advantages": torch.tensor([[2.0]]),
        "mask": torch.ones(1, 1, dtype=torch.bool),
        "teacher_logprobs": torch.tensor([[0.1]]),
    }
    # ratio 1, A 2, delta 0.1: w = e^0.1 = 1.105171
    # step 0 = the reference's step 1 (lambda 0.495): A_hat = 2 (0.505 + 0.495 w) -> PG = -A_hat
    _close(policy_objective(spec, step=0, **common).loss, -2.0 * (0.505 + 0.495 * math.exp(0.1)))
    # step 49 (lambda 0.25): 2 (0.75 + 0.25 w)
    out = policy_objective(spec, step=49, **common)
    _close(out.loss, -2.0 * (0.75 + 0.25 * math.exp(0.1)))
    _close(out.metrics["rlsd/lambda"], 0.25)
    # step 99 (lambda 0): plain GRPO
    _close(policy_objective(spec, step=99, **common).loss, -2.0)
    # no step: spec.rlsd_lambda as is
    _close(policy_objective(spec, **common).loss, -2.0 * (0.5 + 0.5 * math.exp(0.1)))


def test_masked_positions_change_nothing_in_the_full_objective() -> None:
    x = _random_inputs(4)
    spec = dataclasses.replace(resolve_loss("sdar"), advantage_reweight="rlsd")
    m = x["mask"]
    dirty = {k: v.clone() for k, v in x.items()}
    for k, v in dirty.items():
        if k in ("mask",):
            continue
        if v.dim() == 3:
            v[~m] = float("nan")
        else:
            v[~m] = float("-inf") if k != "advantages" else float("nan")
    grads = []
    losses = []
    for inputs in (x, dirty):
        lp = inputs["logprobs"].clone().requires_grad_(True)
        out = policy_objective(spec, **{**inputs, "logprobs": lp})
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(lp.grad)
    assert losses[0] == losses[1]
    assert torch.equal(grads[0], grads[1]) and (grads[1][~m] == 0).all()


def test_two_data_parallel_shards_equal_one_process_for_the_full_objective() -> None:
    x = _random_inputs(5)
    spec = resolve_loss("sdar")
    m = x["mask"]

    def grad_of(inputs: dict[str, torch.Tensor], **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
        lp = inputs["logprobs"].clone().requires_grad_(True)
        out = policy_objective(spec, **{**inputs, "logprobs": lp}, **kw)  # type: ignore[arg-type]
        out.loss.backward()
        return out.loss.detach(), lp.grad

    full_loss, full_grad = grad_of(x)
    shards = [{k: v[rows] for k, v in x.items()} for rows in (slice(0, 2), slice(2, 4))]
    counts = {"global_tokens": m.sum(), "global_seqs": (m.sum(-1) > 0).sum(), "dp_size": 2}
    parts = [grad_of(s, **counts) for s in shards]
    torch.testing.assert_close((parts[0][0] + parts[1][0]) / 2, full_loss)
    # each rank owns its rows' log-probs; DDP's gradient average divides by 2 -> scale back per shard
    torch.testing.assert_close(torch.cat([parts[0][1], parts[1][1]]) / 2, full_grad)
