"""Training precision: fp32 master weights with bf16 compute keep small AdamW updates that bf16 weights lose.

The GPU default (fp32 weights and AdamW state, forward/backward under bf16 autocast) is forced on the CPU here:
torch's CPU autocast supports bfloat16, so the arithmetic is the same kind as on a GPU, only slower.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sdar.algo.methods import resolve_loss
from sdar.batch import TokenBatch
from sdar.config import ConfigError, combine_with_dtype, load_config
from sdar.learner.checkpoint import MODEL_FILE, OPTIMIZER_FILE, save_checkpoint
from sdar.learner.local import LocalLearner
from sdar.precision import plan_precision
from sdar.tiny import byte_tokenizer, tiny_model

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"
BF16, FP32 = torch.bfloat16, torch.float32


def _batch(n: int = 4, width: int = 8, seed: int = 0) -> TokenBatch:
    vocab = len(byte_tokenizer())
    g = torch.Generator().manual_seed(seed)
    prompts = tuple(tuple(torch.randint(0, vocab, (6,), generator=g).tolist()) for _ in range(n))
    responses = tuple(tuple(torch.randint(0, vocab, (width,), generator=g).tolist()) for _ in range(n))
    return TokenBatch(
        prompts=prompts,
        responses=responses,
        loss_mask=torch.ones(n, width, dtype=torch.bool),
        old_logprobs=torch.full((n, width), -5.5),
        advantages=torch.randn(n, 1, generator=g).expand(n, width).clone(),
        group_ids=torch.zeros(n, dtype=torch.long),
        episode_ids=torch.arange(n),
        turn_ids=torch.zeros(n, dtype=torch.long),
    )


def _model(dtype: torch.dtype) -> torch.nn.Module:
    """The tiny model with every matrix drawn from N(0, 0.02), stored in ``dtype``."""
    model = tiny_model(len(byte_tokenizer()))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model.to(dtype)


def _train(precision: str, steps: int = 10) -> tuple[LocalLearner, float]:
    """``steps`` AdamW steps at lr 1e-6 under ``precision``; the fraction of matrix entries that changed."""
    plan = plan_precision(precision, device_type="cpu")
    model = _model(plan.weight_dtype)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.dim() >= 2}
    learner = LocalLearner(model, lr=1e-6, autocast_dtype=plan.autocast_dtype, micro_batch_tokens=256)
    batch, spec = _batch(), resolve_loss("grpo", kl_coef=0.0)
    for _ in range(steps):
        metrics = learner.train_step(batch, spec=spec)
        assert metrics["train/skipped_steps"] == 0
    changed = sum(int((p != before[k]).sum()) for k, p in model.named_parameters() if p.dim() >= 2)
    return learner, changed / sum(v.numel() for v in before.values())


@pytest.fixture(scope="module")
def mixed() -> tuple[LocalLearner, float]:
    return _train("mixed_bf16")


# ------------------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize(
    ("setting", "device", "cuda_bf16", "cpu_fast", "want"),
    [
        ("auto", "cuda", True, False, "mixed_bf16"),
        ("auto", "cuda", False, False, "fp32"),  # e.g. a V100: no bf16
        ("auto", "cpu", False, False, "fp32"),
        ("auto", "cpu", False, True, "mixed_bf16"),  # the probe found bf16 autocast fast on this CPU
        ("auto", "mps", False, False, "fp32"),
        ("fp32", "cuda", True, True, "fp32"),
        ("mixed_bf16", "cpu", False, False, "mixed_bf16"),  # asked for by name: used even where slow
        ("pure_bf16", "cuda", True, False, "pure_bf16"),
    ],
)
def test_plan_precision(setting, device, cuda_bf16, cpu_fast, want):
    plan = plan_precision(setting, device_type=device, cuda_bf16=cuda_bf16, cpu_bf16_fast=cpu_fast)
    assert plan.name == want
    if want == "mixed_bf16":
        assert (plan.weight_dtype, plan.autocast_dtype, plan.fsdp_param_dtype, plan.load_dtype) == (
            FP32, BF16, BF16, "float32")
    elif want == "pure_bf16":
        assert (plan.weight_dtype, plan.autocast_dtype, plan.fsdp_param_dtype, plan.load_dtype) == (
            BF16, None, None, "bfloat16")
    else:
        assert (plan.weight_dtype, plan.compute_dtype, plan.autocast_dtype) == (FP32, FP32, None)


def test_plan_precision_rejects_bad_settings():
    with pytest.raises(ValueError, match="precision must be one of"):
        plan_precision("fp16", device_type="cuda", cuda_bf16=True)
    with pytest.raises(ValueError, match="does not support"):
        plan_precision("mixed_bf16", device_type="cuda", cuda_bf16=False)


def test_the_older_dtype_setting_maps_onto_precision(tmp_path):
    assert combine_with_dtype("auto", "auto") == "auto"
    assert combine_with_dtype("auto", "float32") == "auto"  # fp32 weights: what auto keeps anyway
    assert combine_with_dtype("fp32", "float32") == "fp32"
    assert combine_with_dtype("auto", "bfloat16") == "pure_bf16"
    with pytest.raises(ValueError, match="contradicts"):
        combine_with_dtype("mixed_bf16", "bfloat16")
    with pytest.raises(ConfigError, match="contradicts"):
        load_config(SMOKE, overrides={"out_dir": str(tmp_path), "model.dtype": "float32",
                                      "model.precision": "pure_bf16"})
    with pytest.raises(ConfigError, match="model.precision"):
        load_config(SMOKE, overrides={"out_dir": str(tmp_path), "model.precision": "fp16"})


# ------------------------------------------------------------------------------------------ the update problem
def test_fp32_masters_keep_small_updates_that_bf16_weights_lose(mixed):
    learner, changed = mixed
    assert all(p.dtype == FP32 for p in learner.model.parameters())
    assert changed >= 0.99
    _, changed_bf16 = _train("pure_bf16")
    assert changed_bf16 < 0.2 and changed_bf16 < changed / 5  # measured: about 2% against 100%


def test_checkpoint_keeps_fp32_masters_and_optimizer_state(mixed, tmp_path):
    learner, _ = mixed
    folder = save_checkpoint(tmp_path / "ckpt", step=10, learner_state=learner.state_dict())
    with safe_open(str(folder / MODEL_FILE), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {FP32}
    state = torch.load(folder / OPTIMIZER_FILE, weights_only=False)["optimizer"]["state"]
    assert {v.dtype for s in state.values() for k, v in s.items() if k != "step"} == {FP32}


def test_export_writes_bf16_when_asked_and_leaves_the_masters(mixed, tmp_path):
    from sdar.models import load_model, load_tokenizer
    from sdar.commands.sft import save_model

    learner, _ = mixed
    folder = save_model(learner.model, load_tokenizer("tiny-random"), tmp_path / "out", dtype=BF16)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {BF16}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(p.dtype == FP32 for p in learner.model.parameters())
    back = load_model(str(folder), dtype="float32")
    want = learner.model.state_dict()
    assert all(torch.equal(v, want[k].to(BF16).float()) for k, v in back.state_dict().items())


# ------------------------------------------------------------------------------------------------ run wiring
def test_the_generator_samples_under_the_learners_autocast():
    from sdar.rollout.generator import SamplingParams
    from sdar.rollout.hf import HFGenerator

    model, seen = _model(FP32), []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    tok = byte_tokenizer()
    params = SamplingParams(max_new_tokens=3, seed=0)
    HFGenerator(model, tok, autocast_dtype=BF16).generate([[1, 2, 3]], params)
    assert seen and all(seen)
    seen.clear()
    HFGenerator(model, tok).generate([[1, 2, 3]], params)
    assert seen and not any(seen)


@pytest.mark.parametrize("precision", ["mixed_bf16", "pure_bf16"])
def test_runtime_wires_the_precision(tmp_path, caplog, precision):
    from sdar.runtime import build

    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "model.precision": precision})
    with caplog.at_level(logging.WARNING):
        rt = build(cfg)
    try:
        weights = {p.dtype for p in rt.learner.model.parameters()}
        if precision == "mixed_bf16":
            assert weights == {FP32}
            assert rt.learner.autocast_dtype == BF16 and rt.generator.autocast_dtype == BF16
            assert rt.old_logprobs.mode == "recompute"  # bf16 sampling and scoring still round differently
            assert "pure_bf16" not in caplog.text
        else:
            assert weights == {BF16}
            assert rt.learner.autocast_dtype is None and rt.generator.autocast_dtype is None
            assert "rounds away" in caplog.text
    finally:
        rt.close()
