"""Real training steps with the real SmolLM2-135M-Instruct model (converted offline from the packaged GGUF)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sdar.config import load_config
from sdar.metrics import read_metrics
from sdar.learner.checkpoint import latest_checkpoint, load_checkpoint
from sdar.models import load_model
from sdar.commands.train import train

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"


@pytest.mark.slow
def test_sdar_trains_smollm2_for_two_steps(smollm2, tmp_path):
    folder = str(smollm2["folder"])
    cfg = load_config(SMOKE, overrides={
        "model.name": folder, "model.dtype": "float32", "out_dir": str(tmp_path / "run"),
        "env.max_turns": 1, "rollout.tasks_per_step": 1, "rollout.group_size": 2, "rollout.max_new_tokens": 16,
        "optim.lr": 1e-4, "total_steps": 2, "save_every": 2, "log.sample_every": 0,
    })
    last = train(cfg)
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        for key in ("train/loss", "train/grad_norm", "sdar/gate_mean", "sdar/gap_pre_mean", "rollout/reward"):
            assert r[key] is not None and math.isfinite(r[key]), key
        assert 0.0 < r["sdar/gate_mean"] < 1.0
        assert r["train/skipped_steps"] == 0.0
    # the teacher sees the expert plan: on a real model its log-probs differ from the student's
    assert any(abs(r["sdar/gap_pre_mean"]) > 1e-4 for r in rows)
    assert last["train/grad_norm"] > 0
    before = load_model(folder, dtype="float32").state_dict()
    after, _ = load_checkpoint(latest_checkpoint(Path(cfg.out_dir) / "checkpoints"), restore_rng=False)
    changed = sum(not torch.equal(before[k], after["model"][k]) for k in before if k in after["model"])
    assert changed > 0.9 * len(before)
