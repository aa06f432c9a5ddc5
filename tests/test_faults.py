"""Fault injection during real training runs of the tiny preset (configs/smoke_tiny.yaml, CPU, fixed seed).

Each test starts a real `sdar train` run, breaks one thing in the middle of it and checks what the run does next:

1. an environment worker process is SIGKILLed while its episodes are stepping;
2. the retrieval server of a Search-QA run goes away and comes back on the same port;
3. one step's loss is NaN;
4. one optimizer step writes NaN into a weight;
5. the trainer process is SIGKILLed in the middle of a checkpoint write, then resumed with `--resume`.

The random tiny model never writes a well-formed action, so in tests 1 and 2 the action parser is replaced by one
that turns every response into a valid action (the first admissible move, or a fixed search): otherwise no episode
would ever reach the environment worker or the retriever. docs/reliability.md records what each test observes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import sdar.rollout.collect as collect
import sdar.runtime as runtime
import sdar.rollout.collector as collector_mod
from sdar.commands.cli import main as sdar_main
from sdar.config import load_config
from sdar.metrics import read_metrics
from sdar.envs.base import EnvCrashed
from sdar.learner.checkpoint import MODEL_FILE, OPTIMIZER_FILE, latest_checkpoint, load_checkpoint
from sdar.learner.local import LocalLearner
from sdar.prompts.parse import ParsedAction
from sdar.metrics import load_rows
from sdar.commands.train import train

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.yaml"

VOLATILE = ("time", "timing/", "perf/", "train/tokens_per_s")
"""Metric keys that measure wall-clock time: they differ between two identical runs."""


# ------------------------------------------------------------------------------------------------------- helpers
def smoke_cfg(out_dir: Path, **overrides: Any):
    settings: dict[str, Any] = {"out_dir": str(out_dir), "log.sample_every": 0, "env.max_turns": 2}
    settings.update(overrides)
    return load_config(SMOKE, overrides=settings)


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    return sorted(p for p in ckpt_dir.glob("step_*") if (p / "state.json").is_file())


def assert_checkpoints_sound(ckpt_dir: Path) -> None:
    """Every step folder loads and holds only finite weights and optimizer state; ``latest`` names the newest."""
    folders = complete_checkpoints(ckpt_dir)
    assert folders, f"no checkpoint in {ckpt_dir}"
    for folder in folders:
        state, extra = load_checkpoint(folder, restore_rng=False)
        assert extra["next_step"] == extra["step"] + 1
        for name, tensor in state["model"].items():
            assert torch.isfinite(tensor).all(), f"{folder.name}: weight {name} is not finite"
        for slot in state["optimizer"]["state"].values():
            for key, value in slot.items():
                assert torch.isfinite(torch.as_tensor(value)).all(), f"{folder.name}: optimizer {key} not finite"
    assert latest_checkpoint(ckpt_dir) == folders[-1]


def optimizer_moments(folder: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(folder / OPTIMIZER_FILE, weights_only=True)["optimizer"]["state"]
    return {f"{i}.{k}": torch.as_tensor(v) for i, slot in saved.items() for k, v in slot.items()}


def model_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder, restore_rng=False)[0]["model"]


def stable(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without its wall-clock entries."""
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


class Recorder:
    """Counts rollouts (calls of the collector's ``collect_episodes``) and keeps their trajectories."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rollouts: list[list[Any]] = []
        real = collector_mod.collect_episodes

        def collect_episodes(*args: Any, **kwargs: Any) -> list[Any]:
            self.rollouts.append([])  # the rollout in progress has index len(self.rollouts) - 1
            trajs = real(*args, **kwargs)
            self.rollouts[-1] = trajs
            return trajs

        monkeypatch.setattr(collector_mod, "collect_episodes", collect_episodes)

    @property
    def current(self) -> int:
        return len(self.rollouts) - 1


def force_actions(monkeypatch: pytest.MonkeyPatch, choose) -> None:
    """Parse every response as the valid action ``choose(admissible)``, so the episodes reach the environment."""
    monkeypatch.setattr(collect, "get_parser",
                        lambda env_name: lambda text, admissible: ParsedAction(choose(admissible), True, "ok"))


def on_nth_train_step(monkeypatch: pytest.MonkeyPatch, n: int, before) -> None:
    """Call ``before(learner)`` right before the ``n``-th (0-based) ``LocalLearner.train_step`` of the run."""
    real = LocalLearner.train_step
    calls = [0]

    def train_step(self: LocalLearner, *args: Any, **kwargs: Any) -> dict[str, float]:
        if calls[0] == n:
            before(self)
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LocalLearner, "train_step", train_step)


# ------------------------------------------------------------------------------- 1. a worker process is killed
def test_a_killed_env_worker_fails_its_episodes_and_is_replaced(tmp_path, monkeypatch, caplog):
    force_actions(monkeypatch, lambda admissible: admissible[0])  # every turn steps the environment
    recorder = Recorder(monkeypatch)
    real_step_envs = collect.step_envs
    seen: dict[str, Any] = {}

    def step_envs(pairs):
        if pairs and "pool" not in seen:
            seen["pool"] = pairs[0][0]._pool
            seen["pids_before"] = seen["pool"].worker_pids()
        if pairs:
            seen["pids_last"] = seen["pool"].worker_pids()
        if recorder.current == 0 and pairs:
            seen["turn"] = seen.get("turn", -1) + 1
        if recorder.current == 0 and seen.get("turn") == 1 and "victim" not in seen:
            # step 0, second turn: kill the worker that hosts the first episode, then send the turn's actions
            seen["index"] = index = pairs[0][0].worker
            seen["victim"] = seen["pool"].worker_pids()[index]
            seen["hosted"] = sum(env.worker == index for env, _ in pairs)
            os.kill(seen["victim"], signal.SIGKILL)
            outcomes = real_step_envs(pairs)
            seen["crashed"] = sum(isinstance(o, EnvCrashed) for o in outcomes)
            return outcomes
        return real_step_envs(pairs)

    monkeypatch.setattr(collect, "step_envs", step_envs)
    cfg = smoke_cfg(tmp_path / "run", **{"env.num_workers": 2, "total_steps": 2})
    with caplog.at_level(logging.WARNING):
        last = train(cfg)

    pool = seen["pool"]
    assert seen["hosted"] == seen["crashed"] == 2  # both episodes of the killed worker, none of the other one
    assert pool.restarts == 1
    before, after, index = seen["pids_before"], seen["pids_last"], seen["index"]  # pids in worker order
    assert before[index] == seen["victim"] and after[index] != seen["victim"]  # a fresh process in its slot
    assert after[1 - index] == before[1 - index]  # the other worker lived on
    assert f"(pid {seen['victim']}) was killed by signal SIGKILL" in caplog.text
    assert "the episodes it hosted are lost" in caplog.text and "env.step failed on task" in caplog.text
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0]["rollout/failed_episodes"] == 2.0 and rows[0]["rollout/episodes"] == 4.0
    assert rows[1]["rollout/failed_episodes"] == 0.0  # the replacement worker hosts step 1's episodes
    failed = [t for t in recorder.rollouts[0] if t.failed]
    assert len(failed) == 2 and not any(t.won for t in failed)
    assert all(len(t.turns) == 1 for t in failed)  # turn 0 is kept (and trained on); the crashed turn 1 is not
    assert math.isfinite(last["train/loss"])
    assert_checkpoints_sound(Path(cfg.out_dir) / "checkpoints")
    assert latest_checkpoint(Path(cfg.out_dir) / "checkpoints").name == "step_000001"


# ------------------------------------------------------------------------ 2. the retrieval server goes away
def test_a_retriever_outage_becomes_failed_searches_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    from sdar.envs.search.actions import format_action
    from sdar.envs.search.data import load_search_dataset
    from sdar.envs.search.env import SEARCH_FAILED_FEEDBACK
    from sdar.envs.search.retrievers import BM25Retriever
    from sdar.envs.search.server import serve_retriever

    # the server searches a small slice of the offline corpus (the run itself only sees the URL)
    retriever = BM25Retriever([p for p in load_search_dataset(None).passages if "France" in p.text][:50])
    servers = [serve_retriever(retriever, port=0)]
    port = servers[0].port

    def restart() -> None:
        servers.append(serve_retriever(retriever, port=port))  # the same port: the run's URL stays valid

    sleeps: list[tuple[int, float]] = []  # (rollout, back-off delay) of the HTTP client
    wake: list[bool] = []  # a pending "restart the server during the next back-off sleep"

    def sleep(delay: float) -> None:
        sleeps.append((recorder.current, delay))
        if wake:
            wake.clear()
            restart()
        time.sleep(delay)

    real_factory = runtime.make_env_factory

    def make_env_factory(*args: Any, **kwargs: Any):
        factory = real_factory(*args, **kwargs)
        factory.topk = 1  # shorter observations, shorter prompts
        factory.search_backoff = 0.01  # SearchQAEnv's own retries (default 0.5 s, doubling)
        factory.retriever().backoff = 0.01  # the HTTP client's retries (default 0.5 s, doubling)
        factory.retriever().sleep = sleep
        return factory

    monkeypatch.setattr(runtime, "make_env_factory", make_env_factory)
    force_actions(monkeypatch, lambda admissible: format_action("search", "capital city of France"))
    recorder = Recorder(monkeypatch)
    real_step_envs = collect.step_envs
    turns = [0]

    def step_envs(pairs):
        if recorder.current != 1 or not pairs:
            return real_step_envs(pairs)
        turns[0] += 1
        servers[-1].close()
        if turns[0] == 1:  # a long outage: down for the whole turn, every retry fails
            try:
                return real_step_envs(pairs)
            finally:
                restart()
        wake.append(True)  # a short outage: back up during the client's first back-off sleep
        return real_step_envs(pairs)

    monkeypatch.setattr(collect, "step_envs", step_envs)
    cfg = smoke_cfg(tmp_path / "run", **{
        "env.name": "search", "env.retriever_url": servers[0].url, "env.max_turns": 2, "env.history_length": 2,
        "env.invalid_penalty": 0.01, "env.win_reward": 1.0, "teacher.source": "gold_answer",
        "rollout.tasks_per_step": 1, "rollout.group_size": 2, "rollout.max_prompt_tokens": 6000,
        "teacher.max_prompt_tokens": 9000, "total_steps": 2,
    })
    try:
        with caplog.at_level(logging.WARNING):
            last = train(cfg)
    finally:
        servers[-1].close()

    assert turns[0] == 2 and len(servers) == 3
    step1 = recorder.rollouts[1]
    assert len(step1) == 2 and not any(t.failed for t in step1)  # a failed search is an observation, not a crash
    for traj in step1:
        assert [turn.valid for turn in traj.turns] == [True, True]
        assert traj.turns[0].observation == SEARCH_FAILED_FEEDBACK  # the long outage
        assert traj.turns[1].observation.startswith("\n<information>Doc 1")  # the short one, absorbed by a retry
    for traj in recorder.rollouts[0]:  # before the outage every search answered
        assert all(turn.observation.startswith("\n<information>") for turn in traj.turns)
    # long outage: per episode 3 attempts of SearchQAEnv x 3 of the HTTP client (2 back-off sleeps each);
    # short outage: one failed attempt and one sleep, during which the server came back
    outage = [delay for rollout, delay in sleeps if rollout == 1]
    assert outage == [0.01, 0.02] * 6 + [0.01]
    assert all(rollout == 1 for rollout, _ in sleeps)
    assert caplog.text.count("Search-QA: search for 'capital city of France' failed after 3 attempt(s)") == 2
    assert "Connection refused" in caplog.text
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1] and rows[1]["rollout/failed_episodes"] == 0.0
    assert math.isfinite(last["train/loss"])
    assert_checkpoints_sound(Path(cfg.out_dir) / "checkpoints")


# ------------------------------------------------------------------------------------------ 3. a NaN loss
def test_a_nan_loss_skips_that_step_only(tmp_path, monkeypatch, caplog):
    import sdar.learner.local as local

    real_objective = local.policy_objective
    poisoned = [False]

    def policy_objective(*args: Any, **kwargs: Any):
        out = real_objective(*args, **kwargs)
        if not poisoned[0]:
            return out
        nan = torch.tensor(float("nan"))
        return out._replace(loss=out.loss * nan, metrics={**out.metrics, "loss/total": nan})

    def arm(learner: LocalLearner) -> None:
        poisoned[0] = True

    real_train_step = LocalLearner.train_step

    def disarm_after(self: LocalLearner, *args: Any, **kwargs: Any):
        try:
            return real_train_step(self, *args, **kwargs)
        finally:
            poisoned[0] = False

    monkeypatch.setattr(local, "policy_objective", policy_objective)
    monkeypatch.setattr(LocalLearner, "train_step", disarm_after)
    on_nth_train_step(monkeypatch, 1, arm)  # step 1 of 0, 1, 2
    cfg = smoke_cfg(tmp_path / "run", **{"total_steps": 3, "keep_checkpoints": 3})
    with caplog.at_level(logging.WARNING, logger="sdar.learner.local"):
        last = train(cfg)

    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert [r["train/skipped_steps"] for r in rows] == [0.0, 1.0, 0.0]
    assert rows[1]["train/loss"] is None  # NaN is written as null
    assert math.isfinite(rows[2]["train/loss"]) and math.isfinite(last["train/loss"])
    assert "non-finite loss nan or grad norm nan: optimizer step skipped" in caplog.text
    ckpts = Path(cfg.out_dir) / "checkpoints"
    assert_checkpoints_sound(ckpts)
    s0, s1, s2 = complete_checkpoints(ckpts)
    # the skipped step changed nothing: weights and AdamW moments after step 1 are those after step 0
    w0, w1, w2 = model_tensors(s0), model_tensors(s1), model_tensors(s2)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not all(torch.equal(w1[k], w2[k]) for k in w1)  # step 2 trained again
    m0, m1 = optimizer_moments(s0), optimizer_moments(s1)
    assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0)


# ------------------------------------------------------------------------------- 4. a NaN written into a weight
def _poison_next_optimizer_step(learner: LocalLearner) -> None:
    """The learner's next optimizer step ends by writing NaN into one weight (as an overflow would)."""
    plain = learner.optimizer.step

    def step(*args: Any, **kwargs: Any):
        out = plain(*args, **kwargs)
        with torch.no_grad():
            learner.params[0].view(-1)[0] = float("nan")
        learner.optimizer.step = plain  # once
        return out

    learner.optimizer.step = step


def test_a_nan_weight_update_is_rolled_back(tmp_path, monkeypatch, caplog):
    on_nth_train_step(monkeypatch, 1, _poison_next_optimizer_step)
    cfg = smoke_cfg(tmp_path / "run", **{"total_steps": 3, "keep_checkpoints": 3})
    assert cfg.optim.rollback_nonfinite  # the default
    with caplog.at_level(logging.WARNING, logger="sdar.learner.local"):
        last = train(cfg)

    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert [r["train/skipped_steps"] for r in rows] == [0.0, 1.0, 0.0]
    assert all(math.isfinite(r["train/loss"]) for r in rows) and math.isfinite(last["train/loss"])
    assert "the optimizer step left a weight NaN or infinite: rolled back" in caplog.text
    ckpts = Path(cfg.out_dir) / "checkpoints"
    assert_checkpoints_sound(ckpts)
    s0, s1, s2 = complete_checkpoints(ckpts)
    w0, w1, w2 = model_tensors(s0), model_tensors(s1), model_tensors(s2)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # rolled back to exactly the weights before the step
    assert not all(torch.equal(w1[k], w2[k]) for k in w1)
    m0, m1 = optimizer_moments(s0), optimizer_moments(s1)
    assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0)


def test_without_rollback_a_nan_weight_stops_the_run_before_it_is_saved(tmp_path, monkeypatch):
    from sdar.errors import NonFiniteWeightsError

    on_nth_train_step(monkeypatch, 1, _poison_next_optimizer_step)
    cfg = smoke_cfg(tmp_path / "run", **{"total_steps": 3, "optim.rollback_nonfinite": False})
    with pytest.raises(NonFiniteWeightsError, match="after step 1 the weights are not finite") as err:
        train(cfg)
    assert "the latest is" in str(err.value) and "step_000000" in str(err.value)
    ckpts = Path(cfg.out_dir) / "checkpoints"
    assert [p.name for p in complete_checkpoints(ckpts)] == ["step_000000"]
    assert_checkpoints_sound(ckpts)
    rows = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1] and rows[1]["train/skipped_steps"] == 0.0  # logged, not saved


# ---------------------------------------------------------------- 5. the trainer is killed mid-checkpoint
PAUSING_TRAINER = textwrap.dedent("""
    # `sdar train` whose N-th safetensors write (counted in this process) pauses right after the file is written,
    # inside the hidden temporary folder, before optimizer.pt, rng.pt and state.json
    import os, sys, time
    from pathlib import Path

    import torch
    torch.set_num_threads(int(os.environ["FAULT_THREADS"]))
    import safetensors.torch

    real_save_file = safetensors.torch.save_file
    saves = []

    def save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        saves.append(filename)
        if len(saves) == int(os.environ["FAULT_PAUSE_AT_SAVE"]):
            Path(os.environ["FAULT_MARKER"]).write_text(str(filename))
            time.sleep(600)

    safetensors.torch.save_file = save_file
    from sdar.commands.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _train_args(out_dir: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(SMOKE), "--out_dir", str(out_dir), "--total_steps", "2",
            "--env.max_turns", "2", "--log.sample_every", "0", *extra]


def test_a_trainer_killed_during_a_checkpoint_write_resumes_to_the_same_run(tmp_path, caplog):
    killed = tmp_path / "killed"
    marker = tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAULT_THREADS": str(torch.get_num_threads()),
           "FAULT_PAUSE_AT_SAVE": "2", "FAULT_MARKER": str(marker)}  # save 2: the final checkpoint (step 1)
    log_file = tmp_path / "killed.log"
    with open(log_file, "wb") as sink:  # a file, not a pipe: a full pipe could stall the trainer before the pause
        proc = subprocess.Popen([sys.executable, "-c", PAUSING_TRAINER, *_train_args(killed)], cwd=ROOT, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        # meanwhile, the uninterrupted run in this process
        reference = tmp_path / "reference"
        assert sdar_main(_train_args(reference)) == 0
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None:
                output = log_file.read_text(errors="replace")
                pytest.fail(f"the trainer exited ({proc.returncode}) before the paused write:\n{output[-4000:]}")
            assert time.monotonic() < deadline, "the trainer did not reach the second checkpoint write"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    ckpts = killed / "checkpoints"
    partial = Path(marker.read_text())
    assert partial.name == MODEL_FILE and partial.parent.parent == ckpts
    assert partial.parent.name.startswith(".tmp-new~step_000001~")  # the half-written step folder, hidden
    assert sorted(p.name for p in partial.parent.iterdir()) == [MODEL_FILE]
    # the crash left the previous checkpoint complete and the latest (read without repairing anything yet)
    assert (ckpts / "latest").read_text().strip() == "step_000000"
    assert [p.name for p in complete_checkpoints(ckpts)] == ["step_000000"]
    killed_rows = read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in killed_rows] == [0, 1]  # step 1 was logged, then its save was cut short

    with caplog.at_level(logging.INFO):
        assert sdar_main(_train_args(killed, "--resume")) == 0
    assert f"removed {partial.parent}, left by an interrupted write" in caplog.text
    assert "resumed from" in caplog.text and "resuming at step 1" in caplog.text
    assert not partial.parent.exists()  # the leftover of the dead writer is gone
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".tmp-")]
    assert_checkpoints_sound(ckpts)
    final = latest_checkpoint(ckpts)
    expected = latest_checkpoint(reference / "checkpoints")
    assert final.name == expected.name == "step_000001"
    # bit-for-bit: the weights file, the AdamW moments and the run state
    assert (final / MODEL_FILE).read_bytes() == (expected / MODEL_FILE).read_bytes()
    m_final, m_expected = optimizer_moments(final), optimizer_moments(expected)
    assert m_final.keys() == m_expected.keys() and all(torch.equal(m_final[k], m_expected[k]) for k in m_final)
    state_final = json.loads((final / "state.json").read_text())
    state_expected = json.loads((expected / "state.json").read_text())
    assert state_final["extra"]["next_step"] == state_expected["extra"]["next_step"] == 2
    # metrics: every step equal to the uninterrupted run's, the repeated step 1 included
    resumed_rows = read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in resumed_rows] == [0, 1, 1]  # a resumed run appends; step 1 ran twice
    reference_rows = read_metrics(reference / "metrics.jsonl")
    assert [stable(r) for r in load_rows(killed)] == [stable(r) for r in reference_rows]  # last row per step
    assert stable(killed_rows[1]) == stable(reference_rows[1])
