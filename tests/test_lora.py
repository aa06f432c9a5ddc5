"""LoRA via peft: only adapters train, the reference is the policy with its adapter off (no copy), checkpoints
round-trip the adapter, merged weights reproduce the adapted policy, and generators sample from the adapted policy."""

from __future__ import annotations

import pytest
import torch

from sdar.algo.methods import resolve_loss
from sdar.batch import TokenBatch, pad_right
from sdar.learner.checkpoint import load_checkpoint, save_checkpoint
from sdar.learner.local import LocalLearner
from sdar.learner.lora import (
    AdapterOffReference,
    apply_lora,
    inner_model,
    is_lora_model,
    merged_for_sampling,
    merged_state_dict,
    merged_weights,
)
from sdar.rollout.generator import SamplingParams
from sdar.rollout.hf import HFGenerator
from sdar.tiny import byte_tokenizer, tiny_model

TOK = byte_tokenizer()
VOCAB = len(TOK)
TARGETS = ("q_proj", "v_proj", "up_proj")
SPEC = resolve_loss("grpo", entropy_coef=0.0)  # PG + KL to the reference


def make_batch(n: int = 6, seed: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for _ in range(n):
        p, r = int(torch.randint(2, 8, (1,), generator=g)), int(torch.randint(2, 7, (1,), generator=g))
        prompts.append(tuple(torch.randint(0, VOCAB, (p,), generator=g).tolist()))
        responses.append(tuple(torch.randint(0, VOCAB, (r,), generator=g).tolist()))
    a = max(len(r) for r in responses)
    mask = pad_right([[1.0] * len(r) for r in responses], a, dtype=torch.float32).bool()  # [N, A]
    return TokenBatch(
        prompts=tuple(prompts),
        responses=tuple(responses),
        loss_mask=mask,
        old_logprobs=torch.zeros(n, a),
        advantages=torch.randn(n, 1, generator=g).expand(n, a).clone(),
        group_ids=torch.zeros(n, dtype=torch.long),
        episode_ids=torch.arange(n),
        turn_ids=torch.zeros(n, dtype=torch.long),
    )


def lora_learner(*, lr: float = 5e-2, init_seed: int = 0) -> LocalLearner:
    torch.manual_seed(init_seed)  # LoRA A matrices are drawn from the global RNG
    policy = apply_lora(tiny_model(VOCAB), r=4, alpha=8, target_modules=TARGETS)
    return LocalLearner(policy, reference_model=AdapterOffReference(policy), lr=lr, micro_batch_tokens=40)


def train_once(learner: LocalLearner, batch: TokenBatch) -> dict[str, float]:
    old, _ = learner.logprobs(batch)
    batch = batch.with_old_logprobs(old * batch.loss_mask)
    ref, _ = learner.logprobs(batch, model="reference")
    return learner.train_step(batch, spec=SPEC, ref_logprobs=ref)


@pytest.fixture(scope="module")
def trained() -> tuple[LocalLearner, TokenBatch]:
    """A LoRA learner after one update (its adapter is no longer the identity)."""
    learner, batch = lora_learner(), make_batch()
    train_once(learner, batch)
    return learner, batch


def lora_names(model: torch.nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".lora_" in n}


def test_only_adapter_parameters_train():
    learner = lora_learner()
    trainable = {n for n, p in learner.model.named_parameters() if p.requires_grad}
    # 2 layers x 3 targeted linears x (A, B)
    assert trainable == lora_names(learner.model) and len(trainable) == 12
    assert {id(p) for p in learner.params} == {id(p) for n, p in learner.model.named_parameters() if n in trainable}
    assert is_lora_model(learner.model) and not is_lora_model(inner_model(learner.model))


def test_fresh_adapter_and_reference_equal_the_base_model_exactly():
    base = LocalLearner(tiny_model(VOCAB), micro_batch_tokens=40)
    learner, batch = lora_learner(), make_batch(seed=1)
    base_lp, _ = base.logprobs(batch)
    assert torch.equal(learner.logprobs(batch, model="reference")[0], base_lp)
    assert torch.equal(learner.logprobs(batch)[0], base_lp)  # B = 0: the adapter starts as the identity


def test_after_an_update_policy_moves_and_reference_stays_the_base(trained):
    learner, batch = trained
    base_lp, _ = LocalLearner(tiny_model(VOCAB), micro_batch_tokens=40).logprobs(batch)
    ref_lp, _ = learner.logprobs(batch, model="reference")
    policy_lp, _ = learner.logprobs(batch)
    assert torch.equal(ref_lp, base_lp)
    assert (policy_lp - base_lp)[batch.loss_mask].abs().max() > 1e-3
    # base weights untouched, adapters trained and still trainable after scoring with the adapter off
    base_state = tiny_model(VOCAB).state_dict()
    merged_names = merged_state_dict(learner.model)
    for name, tensor in inner_model(learner.model).state_dict().items():
        if ".lora_" not in name:
            plain = name.replace(".base_layer.", ".")
            assert torch.equal(tensor, base_state[plain]), name
    assert set(merged_names) == set(base_state)
    assert all(p.requires_grad for p in learner.params)
    assert any(p.abs().max() > 0 for n, p in learner.model.named_parameters() if "lora_B" in n)


def test_reference_does_not_freeze_or_switch_off_the_policy():
    learner = lora_learner()
    ref = learner.reference_model
    assert isinstance(ref, AdapterOffReference)
    assert list(ref.parameters()) == []  # the policy is not a child: eval()/requires_grad_() on ref stop here
    learner.model.train()
    with ref.scope():
        assert not learner.model.training
    assert learner.model.training  # mode restored on exit
    assert all(p.requires_grad for p in learner.params)


def test_reference_forward_is_the_base_model(trained):
    learner, _ = trained
    ids = torch.tensor([[5, 9, 33, 2, 7]])
    with torch.no_grad():
        expected = tiny_model(VOCAB)(input_ids=ids).logits
        off = learner.reference_model(input_ids=ids).logits
        on = learner.model(input_ids=ids).logits
    assert torch.equal(off, expected)
    assert not torch.allclose(on, expected, atol=1e-4)


def test_checkpoint_round_trips_the_adapter(tmp_path, trained):
    learner, batch = trained
    save_checkpoint(tmp_path, step=0, learner_state=learner.state_dict())
    state, _ = load_checkpoint(tmp_path / "step_000000", restore_rng=False)
    assert lora_names(learner.model) <= set(state["model"])
    fresh = lora_learner(init_seed=7)  # other adapter initialisation
    fresh.load_state_dict(state)
    for (name, a), (_, b) in zip(learner.model.state_dict().items(), fresh.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(fresh.logprobs(batch)[0], learner.logprobs(batch)[0])
    assert fresh.train_steps == learner.train_steps == 1


def test_merged_weights_reproduce_the_adapted_policy_without_changing_it(trained):
    learner, _ = trained
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    merged = merged_state_dict(learner.model)
    plain = tiny_model(VOCAB, seed=11)  # other weights, same architecture
    plain.load_state_dict(merged)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, learner.model(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)
    after = learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing merged in place
    plain_state = tiny_model(VOCAB).state_dict()
    assert merged_state_dict(tiny_model(VOCAB)).keys() == plain_state.keys()  # no adapter: the state dict


def test_merged_weights_stream_one_merge_at_a_time(trained, monkeypatch):
    from peft.tuners.lora import LoraLayer

    learner, _ = trained
    calls: list[int] = []
    layer_type = type(next(m for m in learner.model.modules() if isinstance(m, LoraLayer)))
    original = layer_type.get_delta_weight

    def counted(self, adapter):
        calls.append(1)
        return original(self, adapter)

    monkeypatch.setattr(layer_type, "get_delta_weight", counted)
    names: list[str] = []
    for name, _ in merged_weights(learner.model):  # no merge happens before the tensor that needs it
        names.append(name)
        assert len(calls) <= len(names)
    adapted = sum(isinstance(m, LoraLayer) for m in learner.model.modules())
    assert len(calls) == adapted > 0  # every adapted weight merged exactly once
    assert len(names) == len(set(names))  # each weight streamed once, under the plain model's names
    assert set(names) == set(tiny_model(VOCAB).state_dict())


def test_shared_generator_samples_from_the_adapted_policy(trained):
    learner, _ = trained
    gen = HFGenerator(inner_model(learner.policy_module), TOK)
    prompts = [tuple(TOK(t, add_special_tokens=False)["input_ids"]) for t in ("look", "go to the desk 1")]
    samples = gen.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=0))
    responses = tuple(s.token_ids for s in samples)
    a = max(len(r) for r in responses)
    batch = TokenBatch(
        prompts=tuple(prompts), responses=responses,
        loss_mask=pad_right([[1.0] * len(r) for r in responses], a, dtype=torch.float32).bool(),
        old_logprobs=pad_right([s.logprobs for s in samples], a, dtype=torch.float32),
        advantages=torch.zeros(2, a), group_ids=torch.zeros(2, dtype=torch.long),
        episode_ids=torch.arange(2), turn_ids=torch.zeros(2, dtype=torch.long),
    )
    policy_lp, _ = learner.logprobs(batch)
    ref_lp, _ = learner.logprobs(batch, model="reference")
    mask = batch.loss_mask
    torch.testing.assert_close(policy_lp * mask, batch.old_logprobs, atol=1e-4, rtol=0)  # the log-prob contract
    assert (ref_lp - batch.old_logprobs)[mask].abs().max() > 1e-3  # and not the base policy's


def test_separate_generator_loading_merged_weights_samples_like_the_policy(trained):
    learner, _ = trained
    shared = HFGenerator(inner_model(learner.model), TOK)
    separate = HFGenerator(tiny_model(VOCAB, seed=3), TOK)
    separate.load_weights(merged_state_dict(learner.model).items())
    prompts = [tuple(TOK(t, add_special_tokens=False)["input_ids"]) for t in ("open drawer", "ok")]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    for a, b in zip(shared.generate(prompts, params), separate.generate(prompts, params)):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


def test_merged_for_sampling_computes_the_policy_with_one_matmul_and_restores_it(trained):
    from peft.tuners.lora import LoraLayer

    learner, _ = trained
    model = inner_model(learner.model)
    params_before = dict(model.named_parameters())
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    grad_before = {n: p.requires_grad for n, p in params_before.items()}
    adapted = [m for m in model.modules() if isinstance(m, LoraLayer)]
    branch_calls: list[int] = []
    hooks = [m.lora_A["default"].register_forward_hook(lambda *_: branch_calls.append(1)) for m in adapted]
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        calls_unmerged = len(branch_calls)
        with merged_for_sampling(model) as n:
            merged = model(input_ids=ids).logits
        calls_merged = len(branch_calls) - calls_unmerged
        after = model(input_ids=ids).logits
    for h in hooks:
        h.remove()
    assert n == len(adapted) > 0 and calls_unmerged == len(adapted) and calls_merged == 0  # no adapter branch ran
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)
    assert torch.equal(after, expected)
    assert all(p is params_before[n] for n, p in model.named_parameters())  # the optimizer's tensors, untouched
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grad_before
    assert not any(m.disable_adapters for m in adapted)


def test_merged_for_sampling_restores_on_error_and_leaves_disabled_or_plain_models_alone(trained):
    learner, _ = trained
    model = inner_model(learner.model)
    before = {n: p for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        with merged_for_sampling(model):
            raise RuntimeError("boom")
    assert all(p is before[n] for n, p in model.named_parameters())
    with learner.model.disable_adapter(), merged_for_sampling(model) as n:
        assert n == 0  # the adapter is off: nothing to merge
    with merged_for_sampling(tiny_model(VOCAB)) as n:
        assert n == 0


def test_generator_with_merged_adapters_samples_like_the_adapter_branches(trained):
    learner, _ = trained
    policy = inner_model(learner.model)
    prompts = [tuple(TOK(t, add_special_tokens=False)["input_ids"]) for t in ("open drawer", "ok", "look")]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    merged = HFGenerator(policy, TOK, sampling_view=merged_for_sampling).generate(prompts, params)
    branches = HFGenerator(policy, TOK).generate(prompts, params)
    for a, b in zip(merged, branches):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_bad_lora_settings_are_rejected():
    with pytest.raises(ValueError, match="rank"):
        apply_lora(tiny_model(VOCAB), r=0, alpha=8)
    with pytest.raises(ValueError, match="alpha"):
        apply_lora(tiny_model(VOCAB), r=2, alpha=0)
    with pytest.raises(ValueError, match="dropout"):
        apply_lora(tiny_model(VOCAB), r=2, alpha=4, dropout=1.0)
    with pytest.raises(ValueError, match="empty"):
        apply_lora(tiny_model(VOCAB), r=2, alpha=4, target_modules=())
    for head in ("lm_head", "embed_tokens"):
        with pytest.raises(ValueError, match="LM head"):
            apply_lora(tiny_model(VOCAB), r=2, alpha=4, target_modules=("q_proj", head))
    wrapped = apply_lora(tiny_model(VOCAB), r=2, alpha=4)
    with pytest.raises(ValueError, match="already"):
        apply_lora(wrapped, r=2, alpha=4)
    with pytest.raises(TypeError, match="LoRA"):
        AdapterOffReference(tiny_model(VOCAB))


def test_lora_run_trains_only_the_adapter_against_the_adapter_off_reference(tmp_path):
    from pathlib import Path

    from sdar.config import load_config
    from sdar.models import load_model
    from sdar.runtime import build
    from sdar.commands.train import train_step

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"
    cfg = load_config(smoke, overrides={"out_dir": str(tmp_path / "run"), "log.sample_every": 0, "log.jsonl": False,
                                        "model.lora_rank": 4, "optim.lr": 1e-2})
    rt = build(cfg)
    assert isinstance(rt.learner.reference_model, AdapterOffReference)  # no deep copy of the model
    assert rt.generator.sampling_view is merged_for_sampling  # fp32 weights: the sampler merges the adapters
    assert build(load_config(smoke, overrides={"out_dir": str(tmp_path / "run2"), "model.lora_rank": 4,
                                               "rollout.merge_lora": False})).generator.sampling_view is None
    assert rt.generator.model is inner_model(rt.learner.policy_module)
    base = load_model("tiny-random").state_dict()
    assert {n for n, _ in rt.learner.export_weights()} == set(base)  # plain names for a separate generator
    metrics = train_step(rt, 0)
    rt.close()
    assert metrics["train/optimizer_steps"] == 1.0 and "kl/kl" in metrics
    state = rt.learner.model.state_dict()
    assert any(v.abs().max() > 0 for k, v in state.items() if "lora_B" in k)
    for key, value in state.items():
        if ".lora_" not in key:
            plain = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
            assert torch.equal(value, base[plain]), key
