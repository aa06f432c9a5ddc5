"""Tests for the built-in household game: determinism, the solver, rewards, truncation and the task source."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sdar.envs import (
    DEFAULT_TASK_TYPES,
    INVALID_FEEDBACK,
    EnvError,
    EnvUnavailable,
    TaskSpec,
    TextEnv,
    ToyTaskSource,
    ToyTextEnv,
    build_task,
    expert_action,
)
from sdar.envs.toy import _stable_int

CLEAN_TASK = "pick_clean_then_place-train-0-0001"


def play_expert(env: ToyTextEnv, task_id: str, seed: int = 0) -> list:
    """Reset and follow the expert to the end; returns the step results."""
    env.reset(task_id=task_id, seed=seed)
    results = []
    while not results or not (results[-1].terminated or results[-1].truncated):
        results.append(env.step(expert_action(env)))
    return results


def test_toy_env_satisfies_the_protocol() -> None:
    assert isinstance(ToyTextEnv(), TextEnv)
    assert ToyTextEnv.name == "toy"


def test_every_train_and_eval_task_is_solved_by_the_expert_in_3_to_8_steps() -> None:
    src = ToyTaskSource()
    env = ToyTextEnv()
    for task in src.tasks("train") + src.tasks("eval"):
        results = play_expert(env, task.task_id, seed=1)
        assert 3 <= len(results) <= 8, (task.task_id, len(results))
        last = results[-1]
        assert last.terminated and not last.truncated and last.info.won
        assert last.reward == 10.0
        assert all(r.reward == 0.0 and not r.info.won for r in results[:-1])
        assert last.info.privileged["expert_plan"] == ""
        assert last.info.admissible_actions == ()


def test_scripted_clean_task_walkthrough() -> None:
    # task world derived from the id: a clean cup must go into the (closed) cabinet; the cup is in the fridge
    env = ToyTextEnv()
    obs, info = env.reset(task_id=CLEAN_TASK, seed=0)
    assert info.goal == "put a clean cup in the cabinet."
    assert info.task_type == "pick_clean_then_place"
    assert obs.endswith("Your task: put a clean cup in the cabinet.")
    assert "take cup 1 from fridge 1" not in info.admissible_actions
    plan = [
        "go to fridge 1",
        "open fridge 1",
        "take cup 1 from fridge 1",
        "go to sinkbasin 1",
        "clean cup 1 with sinkbasin 1",
        "go to cabinet 1",
        "open cabinet 1",
        "put cup 1 in/on cabinet 1",
    ]
    assert info.privileged["expert_plan"].splitlines() == [f"{i}. {a}" for i, a in enumerate(plan, 1)]
    observations = []
    for i, action in enumerate(plan):
        assert action in info.admissible_actions
        res = env.step(action.upper() if i == 0 else action)  # matching ignores case
        observations.append(res.observation)
        info = res.info
        # the plan shrinks by exactly the action taken
        assert info.privileged["expert_plan"].count("\n") == max(len(plan) - i - 2, 0)
    assert observations[0] == "You arrive at fridge 1. The fridge 1 is closed."
    assert observations[1] == "You open the fridge 1. In the fridge 1, you see a cup 1."
    assert observations[4] == "You clean the cup 1 using the sinkbasin 1."
    assert observations[7] == "You put the cup 1 in the cabinet 1."
    assert res.terminated and res.reward == 10.0 and info.won


def test_untreated_object_does_not_win_and_solver_replans() -> None:
    env = ToyTextEnv()
    env.reset(task_id=CLEAN_TASK, seed=0)
    for action in ["go to fridge 1", "open fridge 1", "take cup 1 from fridge 1", "go to cabinet 1",
                   "open cabinet 1", "put cup 1 in/on cabinet 1"]:
        res = env.step(action)
    assert not res.terminated and not res.info.won and res.reward == 0.0
    # from here: take it back out, clean it, return it
    assert env.expert_plan() == (
        "take cup 1 from cabinet 1",
        "go to sinkbasin 1",
        "clean cup 1 with sinkbasin 1",
        "go to cabinet 1",
        "put cup 1 in/on cabinet 1",
    )


def test_solver_puts_down_a_wrong_object_first() -> None:
    env = ToyTextEnv()
    _, info = env.reset(task_id=CLEAN_TASK, seed=0)
    task = build_task(CLEAN_TASK)
    other, place = next((o, r) for o, r in task.placements if o != task.target_object and "fridge" not in r
                        and "cabinet" not in r and "drawer" not in r)
    env.step(f"go to {place}")
    res = env.step(f"take {other} from {place}")
    assert res.info.extra["holding"] == other
    assert expert_action(env) == f"put {other} in/on {place}"


def test_inadmissible_action_gives_nothing_happens_and_counts_a_turn() -> None:
    env = ToyTextEnv(max_turns=3)
    env.reset(task_id=CLEAN_TASK, seed=0)
    res = env.step("fly to the moon")
    assert res.observation == INVALID_FEEDBACK
    assert (res.reward, res.terminated, res.truncated) == (0.0, False, False)
    assert res.info.extra["turn"] == 1


def test_truncation_at_max_turns_then_step_raises() -> None:
    env = ToyTextEnv(max_turns=3)
    env.reset(task_id=CLEAN_TASK, seed=0)
    flags = [(r.terminated, r.truncated) for r in (env.step("look") for _ in range(3))]
    assert flags == [(False, False), (False, False), (False, True)]
    with pytest.raises(EnvError, match="reset"):
        env.step("look")


def test_win_reward_argument() -> None:
    results = play_expert(ToyTextEnv(win_reward=1.5), "go_to-train-0-0001")
    assert [r.reward for r in results] == [1.5]


def test_go_to_task_is_one_step() -> None:
    env = ToyTextEnv()
    _, info = env.reset(task_id="go_to-train-0-0001", seed=0)
    assert info.goal == "go to the coffeetable."
    assert env.expert_plan() == ("go to coffeetable 1",)
    res = env.step("go to coffeetable 1")
    assert res.terminated and res.info.won


def test_reset_is_deterministic_and_seed_only_reorders_receptacles() -> None:
    a, b = ToyTextEnv(), ToyTextEnv()
    assert a.reset(task_id=CLEAN_TASK, seed=4) == b.reset(task_id=CLEAN_TASK, seed=4)
    _, info0 = a.reset(task_id=CLEAN_TASK, seed=0)
    _, info1 = a.reset(task_id=CLEAN_TASK, seed=1)
    assert info0.goal == info1.goal
    assert info0.admissible_actions != info1.admissible_actions
    assert sorted(info0.admissible_actions) == sorted(info1.admissible_actions)
    assert info0.privileged == info1.privileged


def test_stable_int_does_not_depend_on_the_process_hash_salt() -> None:
    code = "from sdar.envs.toy import _stable_int; print(_stable_int('abc'))"
    out = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": salt}).stdout.strip()
        for salt in ("1", "2")
    }
    assert out == {str(_stable_int("abc"))}


def test_life_cycle_errors() -> None:
    env = ToyTextEnv()
    with pytest.raises(EnvError, match="reset"):
        env.step("look")
    env.reset(task_id=CLEAN_TASK, seed=0)
    env.close()
    env.close()
    with pytest.raises(EnvError, match="closed"):
        env.step("look")
    with pytest.raises(EnvError, match="closed"):
        env.reset(task_id=CLEAN_TASK, seed=0)
    with pytest.raises(ValueError, match="max_turns"):
        ToyTextEnv(max_turns=0)


def test_unknown_task_id_names_the_format() -> None:
    with pytest.raises(ValueError, match="pick_and_place-train-0-0003"):
        ToyTextEnv().reset(task_id="mystery-7", seed=0)


def test_expert_action_after_win_raises() -> None:
    env = ToyTextEnv()
    play_expert(env, "go_to-train-0-0001")
    with pytest.raises(EnvError, match="solved"):
        expert_action(env)


def test_task_source_splits() -> None:
    src = ToyTaskSource(seed=3)
    train, evals = src.tasks("train"), src.tasks("eval")
    assert (len(train), len(evals)) == (200, 256)  # panels of >= 64 tasks of one type fit in the eval split
    assert not {t.task_id for t in train} & {t.task_id for t in evals}
    assert len({t.task_id for t in train}) == 200
    assert {t.task_type for t in train} == set(DEFAULT_TASK_TYPES)
    assert train[0] == TaskSpec("pick_and_place-train-3-0000", "pick_and_place")
    assert src.tasks("train") == train
    assert ToyTaskSource(seed=4).tasks("train")[0].task_id != train[0].task_id
    # the worlds (not only the ids) depend on the source seed
    def worlds(tasks: list[TaskSpec]) -> list[tuple]:
        return [(w.goal, w.receptacles, w.placements) for w in map(build_task, (t.task_id for t in tasks[:20]))]

    assert worlds(train) != worlds(ToyTaskSource(seed=4).tasks("train"))
    for t in train[:8]:
        assert build_task(t.task_id).task_type == t.task_type
    with pytest.raises(ValueError, match="split"):
        src.tasks("test")
    with pytest.raises(ValueError, match="task_types"):
        ToyTaskSource(task_types=("juggling",))
    assert {t.task_type for t in ToyTaskSource(task_types=("go_to",)).tasks("eval")} == {"go_to"}


def test_env_unavailable_names_the_pip_extra() -> None:
    err = EnvUnavailable.missing_package("alfworld", "textworld", extra="alfworld")
    assert isinstance(err, EnvError)
    assert "pip install 'sdar[alfworld]'" in str(err) and "textworld" in str(err)


def test_envs_and_prompts_do_not_import_torch() -> None:
    code = "import sys, sdar.envs, sdar.prompts; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"
