"""LocalLearner: log-prob passes, exact micro-batch gradient accumulation, optimizer stepping, lr schedule, NaN skip."""

from __future__ import annotations

import copy
import inspect
import logging

import pytest
import torch

from sdar.algo.methods import resolve_loss
from sdar.algo.objective import policy_objective
from sdar.batch import TokenBatch, pad_right
from sdar.learner import (
    Learner,
    LocalLearner,
    NoSharding,
    PolicyLearner,
    ShardedCheckpoints,
    ShardingStrategy,
    lr_at,
)
from sdar.tiny import byte_tokenizer, tiny_model

from protocol_check import protocol_problems

VOCAB = len(byte_tokenizer())


def make_batch(n: int = 7, seed: int = 0, *, env_tokens: bool = True) -> TokenBatch:
    """Random rows; with ``env_tokens`` some response positions are not trained (loss_mask False)."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for _ in range(n):
        p = int(torch.randint(1, 10, (1,), generator=g))
        r = int(torch.randint(1, 9, (1,), generator=g))
        prompts.append(tuple(torch.randint(0, VOCAB, (p,), generator=g).tolist()))
        responses.append(tuple(torch.randint(0, VOCAB, (r,), generator=g).tolist()))
    a = max(len(r) for r in responses)
    mask = pad_right([[1.0] * len(r) for r in responses], a, dtype=torch.float32).bool()  # [N, A]
    if env_tokens:
        mask &= torch.rand(n, a, generator=g) > 0.2
        mask[:, 0] = True
    adv = torch.randn(n, 1, generator=g).expand(n, a).clone()  # episode advantage broadcast over tokens
    return TokenBatch(
        prompts=tuple(prompts),
        responses=tuple(responses),
        loss_mask=mask,
        old_logprobs=torch.zeros(n, a),
        advantages=adv,
        group_ids=torch.zeros(n, dtype=torch.long),
        episode_ids=torch.arange(n),
        turn_ids=torch.zeros(n, dtype=torch.long),
    )


def plain_logprobs(model, batch: TokenBatch, *, temperature: float = 1.0, grad: bool = False):
    """[N, A] log-probs and entropies with one full-logits forward per row (the oracle)."""
    lps, ents = [], []
    with torch.set_grad_enabled(grad):
        for p, r in zip(batch.prompts, batch.responses):
            logits = model(input_ids=torch.tensor([list(p) + list(r)])).logits[0] / temperature  # [L, V]
            logp = torch.log_softmax(logits.float(), dim=-1)[len(p) - 1 : len(p) - 1 + len(r)]  # [r, V]
            lp = logp.gather(-1, torch.tensor(r)[:, None])[:, 0]
            ent = -(logp.exp() * logp).sum(-1)
            pad = batch.response_len - len(r)
            lps.append(torch.nn.functional.pad(lp, (0, pad)))
            ents.append(torch.nn.functional.pad(ent, (0, pad)))
    return torch.stack(lps), torch.stack(ents)


def on_policy(learner: LocalLearner, batch: TokenBatch) -> TokenBatch:
    lp, _ = learner.logprobs(batch)
    return batch.with_old_logprobs(lp * batch.loss_mask)


def params_copy(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_local_learner_satisfies_protocol():
    assert isinstance(LocalLearner(tiny_model(VOCAB)), Learner)


def test_every_learner_implementation_matches_the_protocol_signatures():
    from sdar.learner.fsdp import FSDPLearner

    local = LocalLearner(tiny_model(VOCAB))
    assert protocol_problems(Learner, local) == []
    assert local.sharded_checkpoints is None  # its state_dict holds everything
    # FSDPLearner configures the same class with the FSDP2 strategy (an instance needs a process group: the
    # two-rank run in tests/test_fsdp.py checks one); the class itself also carries the sharded checkpoint hooks
    assert LocalLearner is PolicyLearner
    assert inspect.signature(FSDPLearner).return_annotation in (PolicyLearner, "PolicyLearner")
    assert protocol_problems(Learner, PolicyLearner) == []
    assert protocol_problems(ShardedCheckpoints, PolicyLearner) == []


def test_sharding_strategies_match_their_protocol():
    from sdar.learner.fsdp import FSDP2Sharding

    for strategy in (NoSharding, FSDP2Sharding):
        assert protocol_problems(ShardingStrategy, strategy) == [], strategy.__name__
    assert isinstance(NoSharding(), ShardingStrategy)


def test_the_protocol_check_reports_mismatches():
    class Wrong:
        policy_module = None  # a plain attribute where the Protocol has a property

        def logprobs(self, batch, model="policy"):  # keyword-only parameters made positional, one missing
            return None

        def train_step(self, batch, *, spec, extra, ref_logprobs=None, teacher_logprobs=None, is_weights=None):
            return {}

    problems = protocol_problems(Learner, Wrong)
    assert "policy_module: a property in the Protocol, NoneType here" in problems
    assert any(p.startswith("logprobs: lacks parameter 'with_entropy'") for p in problems)
    assert any(p.startswith("logprobs: parameter 'model' is positional or keyword") for p in problems)
    assert "train_step: adds the required parameter 'extra'" in problems
    assert "export_weights: missing" in problems and "logprobs_many: missing" in problems


@pytest.mark.parametrize("layout", ["packed", "bucketed"])
def test_logprobs_and_entropy_match_plain_forward(layout: str):
    model = tiny_model(VOCAB)
    batch = make_batch(9, seed=1)
    learner = LocalLearner(model, micro_batch_tokens=20, layout=layout, temperature=0.7, logprob_chunk=5)
    lp, ent = learner.logprobs(batch, with_entropy=True)
    exp_lp, exp_ent = plain_logprobs(model, batch, temperature=0.7)
    torch.testing.assert_close(lp, exp_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, exp_ent, atol=1e-5, rtol=0)
    assert lp.dtype == torch.float32 and tuple(lp.shape) == (9, batch.response_len)
    assert learner.logprobs(batch)[1] is None


def test_logprobs_many_equals_separate_calls():
    learner = LocalLearner(tiny_model(VOCAB), micro_batch_tokens=32)
    student = make_batch(5, seed=2)
    # teacher view: same responses, longer prompts (privileged prefix)
    teacher = student.with_prompts([(7, 8, 9) + p for p in student.prompts])
    other = make_batch(3, seed=3)
    many = learner.logprobs_many([student, teacher, other])
    for got, b in zip(many, (student, teacher, other)):
        torch.testing.assert_close(got, learner.logprobs(b)[0], atol=1e-6, rtol=0)
        assert tuple(got.shape) == tuple(b.loss_mask.shape)


def test_reference_model_is_used_and_required():
    policy, ref = tiny_model(VOCAB, seed=0), tiny_model(VOCAB, seed=5)
    batch = make_batch(4, seed=4)
    learner = LocalLearner(policy, reference_model=ref)
    torch.testing.assert_close(learner.logprobs(batch, model="reference")[0], plain_logprobs(ref, batch)[0])
    assert not any(p.requires_grad for p in ref.parameters())
    with pytest.raises(ValueError, match="no reference model"):
        LocalLearner(tiny_model(VOCAB)).logprobs(batch, model="reference")


@pytest.mark.parametrize(
    ("method", "agg"),
    [("sdar", "token-mean"), ("sdar", "seq-mean-token-mean"), ("skill_sd", "token-mean"), ("rlsd", "token-mean")],
)
def test_micro_batch_accumulation_equals_whole_batch_gradient(method: str, agg: str):
    model = tiny_model(VOCAB)
    learner = LocalLearner(model, micro_batch_tokens=16)
    spec = resolve_loss(method, agg=agg, entropy_coef=0.01)  # PG + KL + entropy + the method's teacher term
    batch = make_batch(7, seed=5)
    g = torch.Generator().manual_seed(9)
    old = (plain_logprobs(model, batch)[0] + 0.05 * torch.randn(batch.loss_mask.shape, generator=g)) * batch.loss_mask
    batch = batch.with_old_logprobs(old)
    ref = old + 0.1 * torch.randn(old.shape, generator=g)
    teacher = old + 0.5 * torch.randn(old.shape, generator=g)

    metrics, _, micro = learner.accumulate_gradients(batch, spec=spec, ref_logprobs=ref, teacher_logprobs=teacher)
    assert len(micro) >= 3
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    lp, ent = plain_logprobs(model, batch, grad=True)
    out = policy_objective(
        spec,
        logprobs=lp,
        old_logprobs=batch.old_logprobs,
        advantages=batch.advantages,
        mask=batch.loss_mask,
        ref_logprobs=ref,
        teacher_logprobs=teacher,
        entropy=ent,
        norm=float(batch.response_len),
    )
    out.loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
    # summed losses and token-weighted means over micro-batches equal every whole-batch metric
    assert set(metrics) == set(out.metrics)
    for key, value in out.metrics.items():
        torch.testing.assert_close(metrics[key], value, atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize(("method", "agg"), [("grpo", "token-mean"), ("grpo", "seq-mean-token-mean"), ("rlsd", "token-mean")])
def test_zero_advantage_rows_are_skipped_and_the_gradient_is_unchanged(method: str, agg: str):
    # with the PG term alone, rows whose advantages are all 0 are not fed forward; the gradient still divides by the
    # whole batch's tokens (or rows), so it equals the whole-batch objective's gradient computed with them
    model = tiny_model(VOCAB)
    learner = LocalLearner(model, micro_batch_tokens=16)
    spec = resolve_loss(method, agg=agg, kl_coef=0.0, entropy_coef=0.0)
    assert spec.zero_advantage_rows_inert
    batch = make_batch(8, seed=11)
    adv = batch.advantages.clone()
    adv[[1, 2, 5, 6]] = 0.0  # two whole groups with no signal
    g = torch.Generator().manual_seed(3)
    old = (plain_logprobs(model, batch)[0] + 0.05 * torch.randn(batch.loss_mask.shape, generator=g)) * batch.loss_mask
    batch = batch.with_old_logprobs(old).with_advantages(adv)
    teacher = old + 0.5 * torch.randn(old.shape, generator=g)
    fed = sum(len(p) + len(r) for i, (p, r) in enumerate(zip(batch.prompts, batch.responses)) if i not in (1, 2, 5, 6))

    metrics, n_tokens, _ = learner.accumulate_gradients(batch, spec=spec, teacher_logprobs=teacher)
    assert n_tokens == fed  # only the four live rows went forward
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    lp, _ = plain_logprobs(model, batch, grad=True)
    out = policy_objective(spec, logprobs=lp, old_logprobs=old, advantages=adv, mask=batch.loss_mask,
                           teacher_logprobs=teacher, norm=float(batch.response_len))
    out.loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
    torch.testing.assert_close(metrics["loss/total"], out.loss.detach(), atol=1e-6, rtol=1e-5)


def test_zero_advantage_rows_are_fed_forward_when_another_term_needs_them():
    spec = resolve_loss("grpo", kl_coef=0.0)  # entropy bonus 0.001: every row has a gradient
    assert not spec.zero_advantage_rows_inert
    assert not resolve_loss("sdar", kl_coef=0.0, entropy_coef=0.0).zero_advantage_rows_inert
    assert not resolve_loss("grpo", entropy_coef=0.0).zero_advantage_rows_inert  # KL to the reference
    learner = LocalLearner(tiny_model(VOCAB), lr=1e-3)
    batch = on_policy(learner, make_batch(6, seed=6))
    batch = batch.with_advantages(torch.zeros_like(batch.advantages))
    metrics = learner.train_step(batch, spec=spec)
    assert metrics["train/tokens"] == batch.num_tokens() and metrics["train/inert_rows"] == 0.0


def test_a_batch_without_signal_trains_nothing_and_still_reports_every_metric():
    model = tiny_model(VOCAB)
    learner = LocalLearner(model, lr=1e-3, weight_decay=0.0)
    spec = resolve_loss("grpo", kl_coef=0.0, entropy_coef=0.0)
    batch = on_policy(learner, make_batch(6, seed=6))
    live = learner.train_step(batch, spec=spec)
    before = params_copy(model)
    metrics = learner.train_step(batch.with_advantages(torch.zeros_like(batch.advantages)), spec=spec)
    assert set(metrics) == set(live)
    assert metrics["train/inert_rows"] == 6.0 and live["train/inert_rows"] == 0.0
    assert metrics["train/tokens"] <= 2  # one filler pass of a one-token row
    assert metrics["loss/total"] == 0.0 and metrics["train/grad_norm"] == 0.0
    # AdamW still steps (its moments carry the previous update), exactly as a full pass with zero gradients would
    assert metrics["train/optimizer_steps"] == 1.0 and learner.optimizer_steps == 2
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())


def test_train_step_changes_every_parameter_and_reports_metrics():
    model = tiny_model(VOCAB)
    learner = LocalLearner(model, reference_model=copy.deepcopy(model), lr=1e-3, weight_decay=0.0)
    batch = on_policy(learner, make_batch(6, seed=6))
    ref, _ = learner.logprobs(batch, model="reference")
    before = params_copy(model)
    metrics = learner.train_step(batch, spec=resolve_loss("grpo"), ref_logprobs=ref)
    for name, p in model.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} did not change"
    for key in (
        "pg/clip_frac",
        "kl/kl",
        "loss/total",
        "train/grad_norm",
        "train/lr",
        "train/tokens",
        "train/tokens_per_s",
        "train/skipped_steps",
        "train/padding_ratio",
    ):
        assert key in metrics and isinstance(metrics[key], float)
    assert metrics["train/tokens"] == batch.num_tokens()
    assert metrics["pg/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # on-policy: ratio 1 before the step
    assert metrics["train/skipped_steps"] == 0.0 and metrics["train/padding_ratio"] == 0.0


@pytest.mark.parametrize(("epochs", "rows", "expected"), [(1, None, 1), (2, 3, 6), (1, 7, 1), (3, 4, 6)])
def test_epochs_and_mini_batches_give_expected_optimizer_steps(epochs, rows, expected):
    # N = 7 rows: ceil(7 / 3) = 3 mini-batches per epoch, ceil(7 / 4) = 2, mini_batch_rows >= N or None -> 1
    learner = LocalLearner(tiny_model(VOCAB), lr=1e-4, ppo_epochs=epochs, mini_batch_rows=rows)
    batch = on_policy(learner, make_batch(7, seed=7))
    metrics = learner.train_step(batch, spec=resolve_loss("grpo", kl_coef=0.0))
    assert metrics["train/optimizer_steps"] == expected
    assert learner.optimizer_steps == expected
    state = next(iter(learner.optimizer.state.values()))
    assert int(state["step"]) == expected


def test_nan_loss_skips_the_step_and_training_continues(caplog):
    model = tiny_model(VOCAB)
    learner = LocalLearner(model, lr=1e-3)
    batch = on_policy(learner, make_batch(5, seed=8))
    adv = batch.advantages.clone()
    adv[2, 0] = float("nan")  # a trained position (mask[:, 0] is True)
    before = params_copy(model)
    spec = resolve_loss("grpo", kl_coef=0.0)
    with caplog.at_level(logging.WARNING, logger="sdar.learner.local"):
        metrics = learner.train_step(batch.with_advantages(adv), spec=spec)
    assert metrics["train/skipped_steps"] == 1.0
    assert "skipped" in caplog.text
    for name, p in model.named_parameters():
        assert torch.equal(before[name], p.detach()), name
        assert p.grad is None
    assert learner.optimizer_steps == 0 and learner.skipped_steps == 1
    metrics = learner.train_step(batch, spec=spec)
    assert metrics["train/skipped_steps"] == 0.0 and learner.optimizer_steps == 1
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())


def test_lr_schedule_by_hand():
    # warm-up over 4 steps: (k + 1) / 4 of the base lr, then constant
    assert [lr_at(k, base_lr=1e-3, warmup_steps=4) for k in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    # cosine after 2 warm-up steps to 0 at step 10: step 6 is half way, 0.5 * (1 + cos(pi / 2)) = 0.5
    assert lr_at(2, base_lr=1.0, warmup_steps=2, total_steps=10) == pytest.approx(1.0)
    assert lr_at(6, base_lr=1.0, warmup_steps=2, total_steps=10) == pytest.approx(0.5)
    assert lr_at(10, base_lr=1.0, warmup_steps=2, total_steps=10) == pytest.approx(0.0)
    assert lr_at(3, base_lr=2.0) == 2.0

    learner = LocalLearner(tiny_model(VOCAB), lr=1e-3, warmup_steps=2, mini_batch_rows=2)
    batch = on_policy(learner, make_batch(4, seed=9))
    spec = resolve_loss("grpo", kl_coef=0.0)
    lrs = [learner.train_step(batch, spec=spec)["train/lr"] for _ in range(3)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3])  # one schedule step per train_step (2 optimizer steps each)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert learner.optimizer_steps == 6


def test_reference_not_needed_when_kl_coef_is_zero():
    learner = LocalLearner(tiny_model(VOCAB), lr=1e-4)  # no reference model at all
    batch = on_policy(learner, make_batch(3, seed=10))
    metrics = learner.train_step(batch, spec=resolve_loss("grpo", kl_coef=0.0))
    assert "kl/kl" not in metrics
    with pytest.raises(ValueError, match="ref_logprobs"):
        learner.train_step(batch, spec=resolve_loss("grpo"))
    with pytest.raises(ValueError, match="teacher_logprobs"):
        learner.train_step(batch, spec=resolve_loss("sdar", kl_coef=0.0))


def test_gradient_checkpointing_and_bucketed_layout_give_the_same_gradients():
    batch = make_batch(6, seed=11)
    spec = resolve_loss("grpo", kl_coef=0.0)
    grads = []
    for kwargs in ({}, {"gradient_checkpointing": True}, {"layout": "bucketed"}):
        model = tiny_model(VOCAB)
        learner = LocalLearner(model, micro_batch_tokens=24, **kwargs)
        learner.accumulate_gradients(on_policy(learner, batch), spec=spec)
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_scores_close_to_fp32():
    model = tiny_model(VOCAB)
    batch = make_batch(4, seed=12)
    fp32 = LocalLearner(model).logprobs(batch)[0]
    bf16 = LocalLearner(model, autocast_dtype=torch.bfloat16).logprobs(batch)[0]
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0)


def test_export_weights_and_policy_module():
    model = tiny_model(VOCAB)
    learner = LocalLearner(model)
    assert learner.policy_module is model
    names = [n for n, _ in learner.export_weights()]
    assert names == list(model.state_dict())
