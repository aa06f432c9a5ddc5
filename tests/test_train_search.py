"""The training loop on the offline Search-QA set (BM25 over Wikipedia lead summaries)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sdar.config import load_config
from sdar.commands.train import train

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"


@pytest.mark.parametrize("source", ["gold_answer", "skills"])
def test_sdar_step_on_search(tmp_path, source):
    cfg = load_config(SMOKE, overrides={
        "env.name": "search", "env.max_turns": 2, "env.history_length": 4, "env.invalid_penalty": 0.01,
        "env.win_reward": 1.0, "out_dir": str(tmp_path / "run"), "teacher.source": source,
        "rollout.max_prompt_tokens": 6000, "teacher.max_prompt_tokens": 9000, "total_steps": 1,
        "log.sample_every": 0,
    })
    last = train(cfg)
    assert last["rollout/episodes"] == 4.0 and "rollout/em" in last and "rollout/f1" in last
    assert last["rollout/invalid_ratio"] == 1.0  # a random model writes no <search>/<answer> tags
    assert math.isfinite(last["train/loss"]) and f"sdar/gap_pre_mean/{source}" in last


def test_search_reward_is_exact_match_in_0_1_by_default():
    from sdar.config import RunConfig
    from sdar.envs.registry import make_env_factory

    assert RunConfig().env.win_reward is None  # None: the environment's own default
    assert make_env_factory("search", max_turns=2).win_reward == 1.0  # EM in {0, 1}, as the paper
    assert make_env_factory("toy")().win_reward == 10.0  # 10 * won for toy, ALFWorld and WebShop
    assert make_env_factory("search", max_turns=2, win_reward=10.0).win_reward == 10.0  # an explicit value wins
