"""Finite by construction: NaN/inf settings are refused, a step that poisons a weight is rolled back, and a checkpoint
is never written from non-finite weights."""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sdar.algo.methods import resolve_loss
from sdar.batch import TokenBatch, pad_right
from sdar.config import ConfigError, RunConfig, load_config
from sdar.distributed import DataParallel
from sdar.errors import NonFiniteWeightsError
from sdar.learner import LocalLearner
from sdar.learner.checkpoint import latest_checkpoint
from sdar.tiny import byte_tokenizer, tiny_model
from sdar.run_checkpoint import nonfinite_weights, save

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.yaml"
VOCAB = len(byte_tokenizer())


def _float_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every float (or optional float) setting of a config dataclass tree."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_float_fields(tp, f"{prefix}{f.name}."))
        elif tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType) and float in typing.get_args(tp)):
            out.append(f"{prefix}{f.name}")
    return out


RUN_FLOATS = _float_fields(RunConfig)


def test_the_config_has_float_settings_to_check():
    assert {"optim.lr", "rollout.temperature", "eval_temperature", "teacher.hint_noise"} <= set(RUN_FLOATS)
    assert {"sft.lr", "sft.privileged_fraction"} <= set(RUN_FLOATS)  # the warm start's settings are checked alike


@pytest.mark.parametrize("key", RUN_FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_every_float_setting_must_be_finite(key, value):
    with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
        load_config(SMOKE, overrides={key: value})


def test_lr_inf_in_a_preset_is_rejected(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("optim:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match="optim.lr must be a finite number"):
        load_config(preset)


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("optim.lr", 2.0, "optim.lr must be < 1"),
    ("optim.weight_decay", -0.1, "optim.weight_decay"),
    ("algo.gigpo_gamma", 1.5, "algo.gigpo_gamma"),
    ("algo.gigpo_omega", -1.0, "algo.gigpo_omega"),
])
def test_ranges_without_an_earlier_check(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(SMOKE, overrides={key: value})


# ----------------------------------------------------------------------------------------------------- learner
def _batch(n: int = 5, seed: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    prompts = tuple(tuple(torch.randint(0, VOCAB, (4,), generator=g).tolist()) for _ in range(n))
    responses = tuple(tuple(torch.randint(0, VOCAB, (3,), generator=g).tolist()) for _ in range(n))
    mask = pad_right([[1.0] * 3 for _ in range(n)], 3, dtype=torch.float32).bool()  # [N, 3]
    return TokenBatch(prompts=prompts, responses=responses, loss_mask=mask, old_logprobs=torch.zeros(n, 3),
                      advantages=torch.randn(n, 1, generator=g).expand(n, 3).clone(),
                      group_ids=torch.zeros(n, dtype=torch.long), episode_ids=torch.arange(n),
                      turn_ids=torch.zeros(n, dtype=torch.long))


def _on_policy(learner: LocalLearner, batch: TokenBatch) -> TokenBatch:
    lp, _ = learner.logprobs(batch)
    return batch.with_old_logprobs(lp * batch.loss_mask)


def _poison_next_step(learner: LocalLearner) -> None:
    """The next optimizer step writes NaN into one weight after updating (as an overflow would)."""
    plain = learner.optimizer.step

    def step(*args, **kwargs):
        out = plain(*args, **kwargs)
        with torch.no_grad():
            learner.params[0].view(-1)[0] = float("nan")
        learner.optimizer.step = plain  # once
        return out

    learner.optimizer.step = step


def _state(learner: LocalLearner) -> dict[str, torch.Tensor]:
    out = {f"w{i}": p.detach().clone() for i, p in enumerate(learner.params)}
    for i, p in enumerate(learner.params):
        for k, v in learner.optimizer.state.get(p, {}).items():
            out[f"s{i}.{k}"] = torch.as_tensor(v).clone()
    return out


@pytest.mark.parametrize("earlier_steps", [0, 1], ids=["first_step", "after_a_step"])
def test_a_step_that_poisons_a_weight_is_rolled_back(earlier_steps, caplog):
    model = tiny_model(VOCAB)
    learner = LocalLearner(model, lr=1e-3)
    spec = resolve_loss("grpo", kl_coef=0.0)
    batch = _on_policy(learner, _batch())
    for _ in range(earlier_steps):
        learner.train_step(batch, spec=spec)
    before = _state(learner)
    _poison_next_step(learner)
    with caplog.at_level(logging.WARNING, logger="sdar.learner.local"):
        metrics = learner.train_step(batch, spec=spec)
    assert metrics["train/skipped_steps"] == 1.0 and "rolled back" in caplog.text
    assert learner.skipped_steps == 1 and learner.optimizer_steps == earlier_steps
    assert all(torch.isfinite(p).all() for p in model.parameters())
    after = _state(learner)
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert nonfinite_weights(model) == []
    metrics = learner.train_step(batch, spec=spec)  # training goes on normally
    assert metrics["train/skipped_steps"] == 0.0 and learner.optimizer_steps == earlier_steps + 1


def test_without_rollback_the_poisoned_weight_stays(caplog):
    learner = LocalLearner(tiny_model(VOCAB), lr=1e-3, rollback_nonfinite=False)
    _poison_next_step(learner)
    learner.train_step(_on_policy(learner, _batch()), spec=resolve_loss("grpo", kl_coef=0.0))
    assert learner.optimizer_steps == 1 and len(nonfinite_weights(learner.policy_module)) == 1


# ------------------------------------------------------------------------------------------------- checkpoints
def _runtime(learner: LocalLearner, tmp_path: Path) -> SimpleNamespace:
    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path)})
    return SimpleNamespace(learner=learner, ckpt_dir=tmp_path / "checkpoints", cfg=cfg, retriever=None,
                           dp=DataParallel())


def test_save_refuses_non_finite_weights(tmp_path):
    learner = LocalLearner(tiny_model(VOCAB), lr=1e-3)
    rt = _runtime(learner, tmp_path)
    save(rt, 0)  # finite: written and latest
    first = latest_checkpoint(rt.ckpt_dir)
    assert first is not None and first.name == "step_000000"
    with torch.no_grad():
        learner.params[1].view(-1)[3] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match="not finite") as err:
        save(rt, 1)
    assert "step_000000" in str(err.value)  # names the checkpoint that stays the latest
    assert latest_checkpoint(rt.ckpt_dir) == first
    assert sorted(p.name for p in rt.ckpt_dir.glob("step_*")) == ["step_000000"]
