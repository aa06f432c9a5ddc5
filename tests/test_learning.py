"""CI guards learning: a few dozen RL steps of the testbed from the committed warm start must raise success, and the
same run with learning switched off must not.

The warm start (``assets/testbed_warmstart``, written by ``sdar sft --config configs/testbed/sft.yaml``) is a small
model trained from scratch on pick-and-place tasks of the built-in game. Its first move there is to walk the room in
the order it is listed, so on ``go_to`` tasks ("go to the desk.", one turn) it succeeds only about a fifth of the time:
a skill GRPO can teach in a few dozen steps of 16 episodes (about half a second each on 2 cores). Success is measured on
a fixed held-out panel of 64 tasks before training and after the last step (the run's own ``eval/success``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sdar.config import load_config
from sdar.metrics import load_rows
from sdar.commands.train import train

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "testbed" / "rl.yaml"
WARM_START = ROOT / "assets" / "testbed_warmstart"
STEPS = 32
MARGIN = 0.3
"""Success must rise by at least this much (absolute, on the 64-task panel) for the learning run."""


def _run(tmp_path: Path, **overrides: object) -> tuple[float, float]:
    cfg = load_config(PRESET, overrides={
        "model.name": str(WARM_START), "out_dir": str(tmp_path), "total_steps": STEPS, "eval_every": STEPS,
        "eval_at_start": True, "save_every": STEPS, "algo.method": "grpo", "algo.kl_coef": 0.0, "seed": 0,
        "env.task_types": ["go_to"], "env.max_turns": 1, "env.invalid_rule": "format",
        "rollout.tasks_per_step": 4, "rollout.temperature": 1.0, "optim.lr": 3e-4,
        "log.progress": False, "log.delta_samples": 0, "log.tensorboard": False, **overrides})
    train(cfg)
    evals = [r for r in load_rows(tmp_path) if "eval/success" in r]
    assert [int(r["step"]) for r in evals] == [-1, STEPS - 1]
    return float(evals[0]["eval/success"]), float(evals[-1]["eval/success"])


def test_warm_start_is_committed_and_small() -> None:
    weights = WARM_START / "model.safetensors"
    assert weights.is_file(), "assets/testbed_warmstart is missing: run sdar sft --config configs/testbed/sft.yaml"
    assert weights.stat().st_size <= 5 * 2**20


def test_rl_raises_success_on_the_testbed(tmp_path: Path) -> None:
    before, after = _run(tmp_path)
    assert after >= before + MARGIN, f"success {before:.3f} -> {after:.3f}: RL did not learn"


@pytest.mark.parametrize("broken", [{"optim.lr": 1e-12}, {"algo.pg_coef": 1e-12}], ids=["lr_zero", "no_pg_signal"])
def test_the_learning_check_fails_when_learning_is_broken(tmp_path: Path, broken: dict) -> None:
    before, after = _run(tmp_path, **broken)
    assert after < before + MARGIN, f"success {before:.3f} -> {after:.3f} without a learning signal"
