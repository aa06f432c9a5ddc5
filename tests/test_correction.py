"""Rollout/trainer mismatch correction: hand-computed TIS/MIS weights and metrics, mode resolution, and the exactness
of the HF generator's log-probs that lets a step skip the old-log-prob pass."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sdar.algo.correction import mismatch_weights, resolve_correction, resolve_old_logprobs
from sdar.batch import TokenBatch, pad_right
from sdar.learner.local import LocalLearner
from sdar.rollout.generator import SamplingParams
from sdar.rollout.hf import HFGenerator
from sdar.tiny import byte_tokenizer, tiny_model

LN = math.log


def example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three rows; the log ratio log(p_old / p_roll) is chosen per token.

    row 0: ratios 1, 3, 0.5   (all trained)
    row 1: ratio 2.5, then an untrained position holding NaN, then padding
    row 2: nothing trained (NaN everywhere): must not count anywhere
    """
    nan = float("nan")
    rollout = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, nan, 0.0], [nan, nan, nan]])  # [3, 3]
    log_ratio = torch.tensor([[0.0, LN(3), LN(0.5)], [LN(2.5), 0.0, 0.0], [0.0, 0.0, 0.0]])
    old = rollout + log_ratio
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    return old, rollout, mask


def test_token_tis_by_hand():
    old, rollout, mask = example()
    w, m = mismatch_weights(old, rollout, mask, level="token", mode="tis", cap=2.0)
    # min(ratio, 2): 3 -> 2 and 2.5 -> 2; untrained positions hold 0
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 0.5], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # four trained tokens with ratios 1, 3, 0.5, 2.5
    assert m["ratio_mean"].item() == pytest.approx(7.0 / 4)
    assert m["ratio_max"].item() == pytest.approx(3.0)
    assert m["ratio_min"].item() == pytest.approx(0.5)
    assert m["truncated_frac"].item() == pytest.approx(2.0 / 4)  # 3 and 2.5 exceed 2
    assert m["weight_mean"].item() == pytest.approx((1 + 2 + 0.5 + 2) / 4)
    # |log ratios| = 0, ln 3, ln 2, ln 2.5: mean ln(3 * 2 * 2.5) / 4 = ln 15 / 4, max ln 3
    assert m["logprob_abs_diff_mean"].item() == pytest.approx(LN(15) / 4)
    assert m["logprob_abs_diff_max"].item() == pytest.approx(LN(3))
    # k1 = mean(-log r) = -(ln 3 + ln 0.5 + ln 2.5) / 4 = -ln 3.75 / 4
    assert m["kl_k1"].item() == pytest.approx(-LN(3.75) / 4)
    # k3 = mean(r - 1 - ln r): 0 + (2 - ln 3) + (-0.5 - ln 0.5) + (1.5 - ln 2.5) = 3 - ln 3.75
    assert m["kl_k3"].item() == pytest.approx((3 - LN(3.75)) / 4)
    assert all(torch.isfinite(v) for v in m.values())


def test_token_mis_by_hand():
    old, rollout, mask = example()
    w, m = mismatch_weights(old, rollout, mask, level="token", mode="mis", cap=2.0)
    # ratios above 2 are dropped (weight 0), the rest kept as they are
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert m["weight_mean"].item() == pytest.approx(1.5 / 4)
    assert m["truncated_frac"].item() == pytest.approx(0.5)


def test_sequence_level_by_hand():
    old, rollout, mask = example()
    # row ratios: row 0 = 1 * 3 * 0.5 = 1.5; row 1 = 2.5; row 2 has no trained token and is not a unit
    w, m = mismatch_weights(old, rollout, mask, level="sequence", mode="tis", cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.5, 1.5, 1.5], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert m["ratio_mean"].item() == pytest.approx(2.0)  # (1.5 + 2.5) / 2 rows
    assert m["ratio_max"].item() == pytest.approx(2.5)
    assert m["ratio_min"].item() == pytest.approx(1.5)
    assert m["truncated_frac"].item() == pytest.approx(0.5)
    assert m["weight_mean"].item() == pytest.approx((3 * 1.5 + 2.0) / 4)  # over the 4 trained tokens
    assert m["logprob_abs_diff_mean"].item() == pytest.approx(LN(15) / 4)  # token-level whatever the level

    w_mis, m_mis = mismatch_weights(old, rollout, mask, level="sequence", mode="mis", cap=2.0)
    torch.testing.assert_close(w_mis, torch.tensor([[1.5, 1.5, 1.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert m_mis["weight_mean"].item() == pytest.approx(4.5 / 4)


def test_equal_logprobs_give_unit_weights_and_zero_drift():
    lp = -torch.rand(2, 4)  # [2, 4]
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    for level in ("token", "sequence"):
        w, m = mismatch_weights(lp, lp.clone(), mask, level=level)
        torch.testing.assert_close(w, mask.float())
        assert m["ratio_mean"].item() == 1.0 and m["truncated_frac"].item() == 0.0
        assert m["kl_k1"].item() == 0.0 and m["kl_k3"].item() == 0.0 and m["logprob_abs_diff_max"].item() == 0.0


def test_huge_ratios_do_not_overflow():
    old = torch.tensor([[0.0, 0.0]])
    rollout = torch.tensor([[-200.0, -1e-3]])  # log ratio 200: exp(200) overflows float32
    mask = torch.ones(1, 2, dtype=torch.bool)
    w, m = mismatch_weights(old, rollout, mask, mode="tis", cap=2.0)
    assert w[0, 0].item() == pytest.approx(2.0) and w[0, 1].item() == pytest.approx(math.exp(1e-3))
    w_mis, _ = mismatch_weights(old, rollout, mask, mode="mis", cap=2.0)
    assert w_mis[0, 0].item() == 0.0
    w_seq, _ = mismatch_weights(old, rollout, mask, level="sequence", cap=2.0)
    torch.testing.assert_close(w_seq, torch.full((1, 2), 2.0))
    assert all(torch.isfinite(v) for v in m.values())
    assert m["ratio_max"].item() == pytest.approx(math.exp(80.0), rel=1e-5)  # reported with a ceiling


def test_weights_are_detached():
    old = torch.zeros(1, 2, requires_grad=True)
    w, m = mismatch_weights(old, torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool))
    assert not w.requires_grad and not any(v.requires_grad for v in m.values())


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_empty_and_all_false_masks_give_zero_metrics(level):
    for n in (0, 2):
        x = torch.zeros(n, 3)
        w, m = mismatch_weights(x, x - 1.0, torch.zeros(n, 3, dtype=torch.bool), level=level)
        assert w.shape == (n, 3) and not w.any()
        assert all(v.item() == 0.0 for v in m.values()), m


def test_bad_arguments():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="same"):
        mismatch_weights(x, torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match="cap must be >= 1"):
        mismatch_weights(x, x, mask, cap=0.5)
    with pytest.raises(ValueError, match="level"):
        mismatch_weights(x, x, mask, level="row")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        mismatch_weights(x, x, mask, mode="is")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bool"):
        mismatch_weights(x, x, mask.float())


def test_resolve_correction():
    assert resolve_correction("auto", generator_is_policy=True) == "off"
    assert resolve_correction("auto", generator_is_policy=False) == "tis"
    assert resolve_correction("mis", generator_is_policy=True) == "mis"
    assert resolve_correction("off", generator_is_policy=False) == "off"
    with pytest.raises(ValueError, match="one of"):
        resolve_correction("on", generator_is_policy=True)


def test_resolve_old_logprobs():
    assert resolve_old_logprobs("auto", correction="off") == "rollout"
    assert resolve_old_logprobs("auto", correction="off", inexact=["top-p sampling"]) == "recompute"
    assert resolve_old_logprobs("auto", correction="tis") == "recompute"  # the correction needs the recompute
    assert resolve_old_logprobs("recompute", correction="off") == "recompute"
    assert resolve_old_logprobs("rollout", correction="off", inexact=["dropout"]) == "rollout"  # explicit wins
    with pytest.raises(ValueError, match="algo.old_logprobs=recompute"):
        resolve_old_logprobs("rollout", correction="mis")
    with pytest.raises(ValueError, match="one of"):
        resolve_old_logprobs("cached", correction="off")


# ------------------------------------------------------------------------------------ exactness of rollout log-probs


def sampled_batch(gen: HFGenerator, tok, params: SamplingParams) -> TokenBatch:
    """Training rows from the generator's samples, with the sampling log-probs as ``old_logprobs``."""
    texts = ["go north", "take the apple from the table", "x", "open the fridge and look inside"]
    prompts = [tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    samples = gen.generate(prompts, params)
    responses = tuple(s.token_ids for s in samples)
    a = max(len(r) for r in responses)
    mask = pad_right([[1.0] * len(r) for r in responses], a, dtype=torch.float32).bool()  # [N, A]
    n = len(prompts)
    return TokenBatch(
        prompts=tuple(prompts),
        responses=responses,
        loss_mask=mask,
        old_logprobs=pad_right([s.logprobs for s in samples], a, dtype=torch.float32),
        advantages=torch.zeros(n, a),
        group_ids=torch.zeros(n, dtype=torch.long),
        episode_ids=torch.arange(n),
        turn_ids=torch.zeros(n, dtype=torch.long),
    )


@pytest.mark.parametrize("layout", ["packed", "bucketed"])
def test_shared_generator_logprobs_equal_recomputed_old_logprobs(layout):
    """The generator IS the training model (same object, same temperature): its sampling log-probs are the old
    log-probs the learner would recompute, so the step may skip that pass."""
    tok = byte_tokenizer()
    model = tiny_model(len(tok))
    learner = LocalLearner(model, temperature=0.7, layout=layout, micro_batch_tokens=48)
    gen = HFGenerator(learner.policy_module, tok, batch_size=3)
    batch = sampled_batch(gen, tok, SamplingParams(max_new_tokens=12, temperature=0.7, seed=3))
    recomputed, _ = learner.logprobs(batch)
    torch.testing.assert_close(recomputed * batch.loss_mask, batch.old_logprobs, atol=1e-4, rtol=0)
    # the correction then is a no-op: every weight is 1 and nothing is truncated
    w, m = mismatch_weights(recomputed, batch.old_logprobs, batch.loss_mask)
    torch.testing.assert_close(w, batch.loss_mask.float(), atol=1e-3, rtol=0)
    assert m["truncated_frac"].item() == 0.0 and m["logprob_abs_diff_max"].item() < 1e-4


def test_truncated_sampling_logprobs_are_not_the_trainer_logprobs():
    """With top-k the generator's log-probs are of the renormalised truncated distribution: not exact, which is why
    top-k/top-p sampling makes ``old_logprobs=auto`` recompute."""
    tok = byte_tokenizer()
    model = tiny_model(len(tok))
    learner = LocalLearner(model, temperature=1.0)
    gen = HFGenerator(model, tok)
    batch = sampled_batch(gen, tok, SamplingParams(max_new_tokens=8, temperature=1.0, top_k=5, seed=0))
    recomputed, _ = learner.logprobs(batch)
    gap = (batch.old_logprobs - recomputed)[batch.loss_mask]
    assert (gap > 0.1).all()  # log p_trunc = log p - log(mass of the top 5) > log p


# ---------------------------------------------------------------------------------------------- wiring in the loop

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"


def smoke_runtime(tmp_path: Path, **overrides):
    from sdar.config import load_config
    from sdar.runtime import build

    base = {"out_dir": str(tmp_path / "run"), "log.sample_every": 0, "log.jsonl": False, "total_steps": 1}
    return build(load_config(SMOKE, overrides={**base, **overrides}))


def spy(rt, name: str) -> list[dict]:
    """Record the arguments of every ``rt.learner.<name>`` call."""
    calls: list[dict] = []
    real = getattr(rt.learner, name)

    def wrapper(*args, **kwargs):
        calls.append({"args": args, **kwargs})
        return real(*args, **kwargs)

    setattr(rt.learner, name, wrapper)
    return calls


def test_learner_multiplies_the_pg_term_by_is_weights():
    from sdar.algo.methods import resolve_loss

    spec = resolve_loss("grpo", kl_coef=0.0, entropy_coef=0.0)
    tok = byte_tokenizer()
    learner = LocalLearner(tiny_model(len(tok)), temperature=0.7, micro_batch_tokens=40)
    batch = sampled_batch(HFGenerator(learner.model, tok), tok, SamplingParams(max_new_tokens=6, temperature=0.7,
                                                                               seed=1))
    batch = batch.with_advantages(torch.tensor([1.0, -0.5, 2.0, -1.0])[:, None].expand_as(batch.advantages).clone())

    def grads(weights):
        learner.optimizer.zero_grad(set_to_none=True)
        learner.accumulate_gradients(batch, spec=spec, is_weights=weights)
        return [p.grad.clone() for p in learner.params]

    plain = grads(None)
    doubled = grads(torch.full_like(batch.old_logprobs, 2.0))
    for g1, g2 in zip(plain, doubled):
        torch.testing.assert_close(g2, 2 * g1)
    assert all(not g.any() for g in grads(torch.zeros_like(batch.old_logprobs)))
    with pytest.raises(ValueError, match="is_weights has shape"):
        learner.train_step(batch, spec=spec, is_weights=torch.ones(1, 1))


def test_rollout_old_logprobs_skip_the_student_pass(tmp_path):
    from sdar.commands.train import train_step

    rt = smoke_runtime(tmp_path)
    assert (rt.old_logprobs.mode, rt.old_logprobs.correction) == ("rollout", "off")  # shared model, per-turn rows
    passes = spy(rt, "logprobs_many")
    metrics = train_step(rt, 0)
    rt.close()
    assert len(passes) == 1 and len(passes[0]["args"][0]) == 2  # the check sample and the teacher view
    check, teacher = passes[0]["args"][0]
    assert check.size == min(8, teacher.size) < teacher.size  # the student rows are not all scored again
    assert not any(k.startswith("mismatch/") for k in metrics) and "sdar/gap_pre_mean" in metrics
    assert metrics["rollout/logprob_diff_max"] < 1e-4


def test_recompute_logs_the_drift_and_it_is_zero_for_the_shared_generator(tmp_path):
    from sdar.commands.train import train_step

    rt = smoke_runtime(tmp_path, **{"algo.old_logprobs": "recompute"})
    passes, updates = spy(rt, "logprobs_many"), spy(rt, "train_step")
    metrics = train_step(rt, 0)
    rt.close()
    assert len(passes[0]["args"][0]) == 2  # student and teacher views
    assert "is_weights" not in updates[0]  # correction off: the generator is the training model
    assert metrics["mismatch/logprob_abs_diff_max"] < 1e-4 and metrics["mismatch/truncated_frac"] == 0.0


def test_correction_passes_weights_to_the_learner(tmp_path):
    from sdar.commands.train import train_step

    rt = smoke_runtime(tmp_path, **{"algo.mismatch_correction": "mis", "algo.mismatch_level": "sequence"})
    assert (rt.old_logprobs.mode, rt.old_logprobs.correction) == ("recompute", "mis")  # auto recomputes for it
    updates = spy(rt, "train_step")
    metrics = train_step(rt, 0)
    rt.close()
    weights = updates[0]["is_weights"]
    batch = updates[0]["args"][0]
    assert weights is not None and weights.shape == batch.loss_mask.shape
    torch.testing.assert_close(weights, batch.loss_mask.float(), atol=1e-3, rtol=0)  # exact generator: ratio 1
    assert "mismatch/weight_mean" in metrics


@pytest.mark.parametrize("overrides", [{"rollout.top_p": 0.9}, {"rollout.view": "conversation"}])
def test_inexact_rollout_logprobs_are_recomputed(tmp_path, overrides):
    rt = smoke_runtime(tmp_path, **overrides)
    rt.close()
    assert rt.old_logprobs.mode == "recompute"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"algo.old_logprobs": "rollout", "algo.mismatch_correction": "tis"}, "set algo.old_logprobs=recompute"),
        ({"algo.old_logprobs": "rollout", "rollout.view": "conversation"}, "conversation rows"),
        ({"algo.mismatch_cap": 0.5}, "algo.mismatch_cap must be >= 1"),
    ],
)
def test_config_rejects_contradictory_settings(overrides, fragment):
    from sdar.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=fragment):
        load_config(SMOKE, overrides=overrides)


def test_a_generator_with_its_own_weights_sleeps_for_the_update_and_gets_the_new_weights(tmp_path):
    from sdar.commands.train import train_step

    rt = smoke_runtime(tmp_path)
    events: list[str] = []

    class OwnCopy:  # samples with the policy, but is treated as a separate engine (like vLLM)
        def __init__(self, inner):
            self.inner = inner

        def generate(self, prompts, params):
            events.append("generate")
            return self.inner.generate(prompts, params)

        def sleep(self):
            events.append("sleep")

        def load_weights(self, named_tensors):
            events.append(f"load_weights:{sum(1 for _ in named_tensors) > 0}")

    import dataclasses

    from sdar.runtime import WeightSync

    own = OwnCopy(rt.generator)
    rt = dataclasses.replace(rt, generator=own, weights=WeightSync(own, rt.learner, shared=False),
                             collector=dataclasses.replace(rt.collector, generator=own))
    train_step(rt, 0)
    rt.close()
    first_sleep = events.index("sleep")
    assert set(events[:first_sleep]) == {"generate"} and events[first_sleep + 1:] == ["load_weights:True"]


def test_logprob_diff_stats_by_hand():
    from sdar.algo.correction import logprob_diff_stats

    learner = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, 0.0]])
    sampler = torch.tensor([[-1.1, -2.0, -5.0], [-0.5, -0.75, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])  # |diffs| on the mask: 0.1, 0, 0, 0.5
    out = logprob_diff_stats(learner, sampler, mask)
    assert out["mean"] == pytest.approx(0.15)
    assert out["max"] == pytest.approx(0.5)
    assert out["p99"] == pytest.approx(0.5)  # nearest rank ceil(0.99 * 4) = 4: the largest of the four
    assert out["tokens"] == 4
    many = torch.arange(200, dtype=torch.float32).reshape(1, 200) / 100  # diffs 0.00 .. 1.99 against zeros
    p = logprob_diff_stats(many, torch.zeros_like(many), torch.ones_like(many, dtype=torch.bool))
    assert p["p99"] == pytest.approx(1.97)  # rank ceil(198) = 198 -> the 198th smallest, 1.97
    empty = logprob_diff_stats(learner, sampler, torch.zeros_like(mask))
    assert empty == {"mean": 0.0, "p99": 0.0, "max": 0.0, "tokens": 0.0}
    with pytest.raises(ValueError, match="one \\[N, A\\] shape"):
        logprob_diff_stats(learner, sampler[:, :2], mask)
