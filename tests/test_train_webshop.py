"""The training loop on the offline WebShop simulator."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sdar.config import load_config
from sdar.commands.train import train

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"


@pytest.mark.parametrize("source", ["goal_attributes", "skills"])
def test_sdar_step_on_webshop(tmp_path, source):
    cfg = load_config(SMOKE, overrides={
        "env.name": "webshop", "env.max_turns": 2, "out_dir": str(tmp_path / "run"), "teacher.source": source,
        "rollout.max_prompt_tokens": 6000, "teacher.max_prompt_tokens": 9000, "total_steps": 1,
        "log.sample_every": 0,
    })
    last = train(cfg)
    assert last["rollout/episodes"] == 4.0
    assert last["rollout/score"] == 0.0  # a random model buys nothing in two turns: WebShop Score 0
    assert math.isfinite(last["train/loss"]) and f"sdar/gap_pre_mean/{source}" in last
