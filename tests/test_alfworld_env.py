"""Tests for the ALFWorld adapter and data loader on the real engine (games generated offline per module)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdar.envs import EnvCrashed, EnvError, EnvUnavailable, TaskSpec, TextEnv, check_env
from sdar.envs.alfworld import _engine
from sdar.envs.alfworld import (
    AlfWorldEnv,
    AlfWorldTaskSource,
    expert_policy,
    generate_games,
    next_expert_action,
)
from sdar.records import EnvInfo

PIP_HINT = "pip install 'sdar[alfworld]'"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two small verified games (a bedroom pick-and-place and a look-under-the-lamp task) in a data folder."""
    out = tmp_path_factory.mktemp("alfworld-data")
    generate_games(out, n=2, seed=1, split="eval", task_types=("pick_and_place_simple", "look_at_obj_in_light"))
    return out


@pytest.fixture(scope="module")
def tasks(data) -> list[TaskSpec]:
    return AlfWorldTaskSource(data).tasks("eval")


@pytest.fixture()
def pick_task(tasks) -> TaskSpec:
    return next(t for t in tasks if t.task_type == "pick_and_place_simple")


def traj_of(data: Path, task: TaskSpec) -> dict:
    return json.loads((data / task.task_id / "traj_data.json").read_text())


def play_expert(env: AlfWorldEnv, task_id: str, seed: int = 0):
    _, info = env.reset(task_id=task_id, seed=seed)
    results = []
    while not results or not (results[-1].terminated or results[-1].truncated):
        results.append(env.step(next_expert_action(info)))
        info = results[-1].info
    return results


# ----- the episode as the agent sees it ---------------------------------------------------------------------
def test_env_satisfies_the_protocol(data) -> None:
    env = AlfWorldEnv(data)
    assert isinstance(env, TextEnv) and env.name == "alfworld"
    env.close()


def test_first_observation_goal_type_and_admissible_actions(data, pick_task) -> None:
    env = AlfWorldEnv(data)
    obs, info = env.reset(task_id=pick_task.task_id, seed=0)
    traj = traj_of(data, pick_task)
    assert "Welcome to TextWorld" not in obs
    assert obs.startswith("You are in the middle of a room. Looking quickly around you, you see a ")
    assert obs.endswith(f"Your task is to: {traj['task_desc']}.")
    assert info.goal == traj["task_desc"] + "."
    assert info.task_type == traj["task_type"] == pick_task.task_type
    assert info.task_id == pick_task.task_id and not info.won
    assert "help" not in info.admissible_actions
    assert {"look", "inventory"} <= set(info.admissible_actions)
    assert any(a.startswith("go to ") for a in info.admissible_actions)
    assert info.privileged == {"expert_plan": "1. look"}  # ALFWorld's hand-coded expert starts by looking
    env.close()


def test_help_is_answered_though_not_listed_and_unknown_commands_do_nothing(data, pick_task) -> None:
    env = AlfWorldEnv(data)
    _, first = env.reset(task_id=pick_task.task_id, seed=0)
    res = env.step("help")
    assert "Available commands" in res.observation and res.reward == 0.0
    assert not res.terminated and not res.truncated
    res = env.step("fly to the moon")
    assert res.observation == "Nothing happens."
    assert (res.reward, res.terminated, res.truncated) == (0.0, False, False)
    assert res.info.admissible_actions == first.admissible_actions  # nothing moved
    env.close()


def test_actions_are_lowercased_and_whitespace_collapsed(data, pick_task) -> None:
    env = AlfWorldEnv(data)
    env.reset(task_id=pick_task.task_id, seed=0)
    shouted = env.step("  LOOK \t")
    env.reset(task_id=pick_task.task_id, seed=0)
    assert env.step("look") == shouted
    assert shouted.observation != "Nothing happens."
    env.close()


@pytest.mark.parametrize("win_reward", [10.0, 1.5])
def test_expert_wins_and_reward_is_win_reward_times_won(data, pick_task, win_reward) -> None:
    env = AlfWorldEnv(data, win_reward=win_reward)
    results = play_expert(env, pick_task.task_id)
    assert [r.reward for r in results] == [0.0] * (len(results) - 1) + [win_reward]
    last = results[-1]
    assert last.terminated and not last.truncated and last.info.won
    assert last.info.admissible_actions == () and last.info.privileged["expert_plan"] == ""
    assert not any(r.info.won for r in results[:-1])
    with pytest.raises(EnvError, match="over"):
        env.step("look")
    env.close()


def test_expert_plan_is_numbered_and_follows_the_expert(data, tasks) -> None:
    look = next(t for t in tasks if t.task_type == "look_at_obj_in_light")
    env = AlfWorldEnv(data)
    results = play_expert(env, look.task_id)
    assert results[-1].info.won
    assert results[-1].observation.startswith("You turn on the ")
    plans = [r.info.privileged["expert_plan"] for r in results[:-1]]
    assert all(p.startswith("1. ") and "\n" not in p for p in plans)  # the hand-coded expert plans one step
    env.close()


def test_planner_expert_gives_the_full_remaining_plan(data, pick_task) -> None:
    env = AlfWorldEnv(data, expert="planner")
    _, info = env.reset(task_id=pick_task.task_id, seed=0)
    lines = info.privileged["expert_plan"].splitlines()
    assert len(lines) >= 3 and [ln.split(". ", 1)[0] for ln in lines] == [str(i) for i in range(1, len(lines) + 1)]
    assert lines[-1].split(". ", 1)[1].startswith("move ")
    results = play_expert(env, pick_task.task_id)
    assert results[-1].info.won and len(results) == len(lines)
    env.close()


def test_max_turns_truncates(data, pick_task) -> None:
    env = AlfWorldEnv(data, max_turns=3)
    env.reset(task_id=pick_task.task_id, seed=0)
    flags = [(r.terminated, r.truncated, r.reward) for r in (env.step("look") for _ in range(3))]
    assert flags == [(False, False, 0.0), (False, False, 0.0), (False, True, 0.0)]
    with pytest.raises(EnvError):
        env.step("look")
    env.reset(task_id=pick_task.task_id, seed=0)  # a new episode on the same instance
    assert not env.step("look").truncated
    env.close()


def test_life_cycle_errors_and_idempotent_close(data, pick_task) -> None:
    env = AlfWorldEnv(data)
    with pytest.raises(EnvError, match="reset"):
        env.step("look")
    env.reset(task_id=pick_task.task_id, seed=0)
    env.close()
    env.close()
    with pytest.raises(EnvError, match="closed"):
        env.step("look")
    with pytest.raises(EnvError, match="closed"):
        env.reset(task_id=pick_task.task_id, seed=0)
    with pytest.raises(ValueError):
        AlfWorldEnv(data, max_turns=0)
    with pytest.raises(ValueError):
        AlfWorldEnv(data, expert="oracle")


def test_engine_leaves_global_state_alone(data, pick_task) -> None:
    _engine._cached_translation.cache_clear()  # translate again, which is what overwrites sys.argv
    argv = list(sys.argv)
    random.seed(123)
    before = random.getstate()
    env = AlfWorldEnv(data)
    env.reset(task_id=pick_task.task_id, seed=5)
    env.step("look")
    env.close()
    assert sys.argv == argv  # the PDDL translator overwrites sys.argv; the adapter restores it
    assert random.getstate() == before  # the expert's tie-breaks use their own seed


def test_one_instance_switches_games(data, tasks) -> None:
    a, b = tasks[0].task_id, tasks[1].task_id
    env, fresh = AlfWorldEnv(data), AlfWorldEnv(data)
    first_a = env.reset(task_id=a, seed=0)
    first_b = env.reset(task_id=b, seed=0)
    assert first_b[0] != first_a[0]
    assert env.reset(task_id=a, seed=0) == first_a == fresh.reset(task_id=a, seed=0)
    env.close()
    fresh.close()


def test_check_env_passes_with_the_expert(data, tasks) -> None:
    check_env(lambda: AlfWorldEnv(data), tasks, policy=expert_policy)


def test_check_env_passes_with_random_walks(data, tasks) -> None:
    check_env(lambda: AlfWorldEnv(data, max_turns=6), tasks[:1], seed=3)


def test_next_expert_action_needs_a_plan() -> None:
    assert next_expert_action(EnvInfo(task_id="t", privileged={"expert_plan": "1. go to desk 1\n2. look"})) == (
        "go to desk 1")
    with pytest.raises(EnvError, match="no next action"):
        next_expert_action(EnvInfo(task_id="t", privileged={"expert_plan": ""}))


def test_expert_fallback_to_help_is_redrawn_among_the_listed_commands() -> None:
    # the hand-coded expert's random fallback can draw the engine's hidden 'help'; the redraw picks a listed command
    admissible = ["help", "go to desk 1", "look", "inventory"]
    picks = {_engine.playable_plan(["help"], admissible, random.Random(k))[0] for k in range(50)}
    assert picks == {"go to desk 1", "look", "inventory"}
    assert _engine.playable_plan(["help"], admissible, random.Random(1)) == _engine.playable_plan(
        ["help"], admissible, random.Random(1))  # seeded: the same redraw every time
    assert _engine.playable_plan(["look", "help"], admissible, random.Random(0)) == ["look", "help"]  # not leading
    assert _engine.playable_plan([], admissible, random.Random(0)) == []
    assert _engine.playable_plan(["help"], ["help"], random.Random(0)) == []  # nothing else to do: no plan


# ----- data folders and splits ------------------------------------------------------------------------------
def official_layout(root: Path, game: Path) -> Path:
    """An ALFWorld-style json_2.1.1 tree built from one generated game folder (plus folders that must be skipped)."""
    base = root / "json_2.1.1"
    for split in ("train", "valid_seen", "valid_unseen"):
        shutil.copytree(game, base / split / "pick_and_place_simple-X-None-Y-1" / "trial_T1")
    shutil.copytree(game, base / "train" / "pick_and_place_simple-AppleSliced-None-Y-1" / "trial_T2")
    shutil.copytree(game, base / "train" / "pick_and_place_simple-X-None-Y-2" / "trial_T3")
    (base / "train" / "pick_and_place_simple-X-None-Y-2" / "trial_T3" / "game.tw-pddl").unlink()
    unsolvable = base / "train" / "pick_and_place_simple-X-None-Y-3" / "trial_T4"
    shutil.copytree(game, unsolvable)
    payload = json.loads((unsolvable / "game.tw-pddl").read_text())
    (unsolvable / "game.tw-pddl").write_text(json.dumps({**payload, "solvable": False}))
    return base


def test_official_layout_split_names_and_default_location(data, pick_task, tmp_path, monkeypatch) -> None:
    base = official_layout(tmp_path, data / pick_task.task_id)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    source = AlfWorldTaskSource()  # $ALFWORLD_DATA/json_2.1.1
    assert source.data_dir == base
    game = "pick_and_place_simple-X-None-Y-1/trial_T1"
    # skips the sliced variant, the folder without a game file and the unsolvable game
    assert source.tasks("train") == [TaskSpec(f"train/{game}", "pick_and_place_simple")]
    assert [t.task_id for t in source.tasks("eval")] == [f"valid_seen/{game}"]
    for split in ("eval_seen", "seen"):
        assert [t.task_id for t in source.tasks(split)] == [f"valid_seen/{game}"]
    for split in ("eval_unseen", "unseen"):
        assert [t.task_id for t in source.tasks(split)] == [f"valid_unseen/{game}"]
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        source.tasks("test")
    env = AlfWorldEnv()  # the same standard location
    obs, info = env.reset(task_id=f"valid_unseen/{game}", seed=0)
    assert info.task_id == f"valid_unseen/{game}" and "Your task is to:" in obs
    env.close()


def test_generated_folder_splits(data, tasks) -> None:
    source = AlfWorldTaskSource(data)
    assert source.tasks("unseen") == tasks  # the generated eval split is an unseen-floorplan split
    with pytest.raises(EnvUnavailable, match="sdar envs generate alfworld"):
        source.tasks("train")  # only eval games were generated here
    assert [t.task_type for t in AlfWorldTaskSource(data, task_types=("look_at_obj_in_light",)).tasks("eval")] == [
        "look_at_obj_in_light"]


def test_missing_data_names_the_location_and_the_generate_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "empty"))
    with pytest.raises(EnvUnavailable) as err:
        AlfWorldTaskSource()
    message = str(err.value)
    assert "ALFWORLD_DATA" in message and "json_2.1.1" in message
    assert "sdar envs generate alfworld --n N --seed S --out DIR" in message
    with pytest.raises(EnvUnavailable, match="sdar envs generate alfworld"):
        AlfWorldEnv()
    with pytest.raises(EnvUnavailable, match="does not exist"):
        AlfWorldEnv(tmp_path / "nowhere")


def test_broken_game_folders_give_clear_errors(data, pick_task, tmp_path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data, root)
    folder = root / pick_task.task_id
    env = AlfWorldEnv(root)
    (folder / "game.tw-pddl").write_text("{not json")
    with pytest.raises(EnvError, match=r"broken: game\.tw-pddl is not readable JSON"):
        env.reset(task_id=pick_task.task_id, seed=0)
    (folder / "game.tw-pddl").write_text(json.dumps({"pddl_domain": "(define", "grammar": "", "pddl_problem": "("}))
    with pytest.raises(EnvCrashed, match="failed to start"):
        env.reset(task_id=pick_task.task_id, seed=0)
    (folder / "traj_data.json").unlink()
    with pytest.raises(EnvError, match=r"broken: traj_data\.json is missing"):
        env.reset(task_id=pick_task.task_id, seed=0)
    with pytest.raises(EnvError, match="no game folder"):
        env.reset(task_id="eval/no-such-game", seed=0)
    (folder / "traj_data.json").write_text(json.dumps({"task_type": "pick_and_place_simple"}))
    with pytest.raises(EnvError, match="pddl_params"):
        AlfWorldTaskSource(root).tasks("eval")
    env.close()


# ----- without the engine -----------------------------------------------------------------------------------
def test_missing_engine_raises_env_unavailable_with_the_pip_command(data, monkeypatch) -> None:
    for name in ("alfworld", "textworld", "fast_downward"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    with pytest.raises(EnvUnavailable) as err:
        AlfWorldEnv(data)
    assert PIP_HINT in str(err.value)
    with pytest.raises(EnvUnavailable, match=r"pip install 'sdar\[alfworld\]'"):
        generate_games(data / "more", n=1, seed=0)


def test_package_import_does_not_load_the_engine() -> None:
    code = ("import sys, sdar.envs.alfworld\n"
            "bad = [m for m in ('alfworld', 'textworld', 'fast_downward') if m in sys.modules]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
