"""The training loop on the real ALFWorld engine, over games generated offline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sdar.config import load_config
from sdar.metrics import read_metrics
from sdar.envs.alfworld import generate_games
from sdar.commands.train import train

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"


@pytest.fixture(scope="module")
def games(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("alfworld")
    generate_games(out, n=2, seed=11, split="train", task_types=("pick_and_place_simple",))
    generate_games(out, n=1, seed=12, split="eval", task_types=("pick_and_place_simple",))
    return out


@pytest.mark.parametrize("source", ["expert_plan", "skills"])
def test_sdar_step_on_alfworld(games, tmp_path, source):
    cfg = load_config(SMOKE, overrides={
        "env.name": "alfworld", "env.data_dir": str(games), "env.max_turns": 2, "out_dir": str(tmp_path / "run"),
        "teacher.source": source, "rollout.max_prompt_tokens": 6000, "teacher.max_prompt_tokens": 9000,
        "total_steps": 1, "eval_every": 1, "eval_tasks": 1, "log.sample_every": 0,
    })
    last = train(cfg)
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["eval/episodes"] == 1.0
    assert last["rollout/episodes"] == 4.0 and last["rollout/failed_episodes"] == 0.0
    assert math.isfinite(last["train/loss"]) and "sdar/gap_pre_mean" in last
    assert "rollout/success/pick_and_place_simple" in last
