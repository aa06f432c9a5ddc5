"""Tests for the offline ALFWorld game generator: all six task types, solvability, splits, determinism, the CLI."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from sdar.envs import check_env
from sdar.envs.alfworld import (
    EVAL_FLOORPLANS,
    TASK_TYPES,
    AlfWorldEnv,
    AlfWorldTaskSource,
    GenerationError,
    expert_policy,
    generate_games,
    main_generate,
    next_expert_action,
    split_floorplans,
)
from sdar.envs.alfworld import _engine, _scenes
from sdar.envs.alfworld import generate as gen

SMALL = ("pick_and_place_simple", "pick_clean_then_place_in_recep")
"""With seed 4 on the eval split these land in the small bathroom (floorplan 424): quick to verify."""


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("alfworld-gen")


@pytest.fixture(scope="module")
def train_games(train_dir):
    """One training game per task type (game i gets TASK_TYPES[i])."""
    return generate_games(train_dir, n=6, seed=0, split="train")


@pytest.fixture(scope="module")
def eval_games(train_dir):
    return generate_games(train_dir, n=2, seed=4, split="eval", task_types=SMALL)


def test_every_task_type_is_generated_and_won_by_the_expert(train_dir, train_games) -> None:
    assert [g.task_type for g in train_games] == list(TASK_TYPES)
    env = AlfWorldEnv(train_dir)
    for game in train_games:
        stored = json.loads((game.path / "game.tw-pddl").read_text())["walkthrough"]
        _, info = env.reset(task_id=game.game_id, seed=0)
        assert info.task_type == game.task_type and info.goal == game.goal + "."
        actions, rewards = [], []
        while True:
            actions.append(next_expert_action(info))
            result = env.step(actions[-1])
            rewards.append(result.reward)
            info = result.info
            if result.terminated or result.truncated:
                break
        assert result.terminated and info.won, game.game_id
        assert rewards[-1] == 10.0 and sum(rewards) == 10.0
        assert actions == stored and len(actions) == game.expert_steps  # the expert replays the verified walk
    env.close()


def test_check_env_passes_on_generated_games(train_dir, train_games) -> None:
    source = AlfWorldTaskSource(train_dir)
    picked = [t for t in source.tasks("train") if t.task_type in ("pick_two_obj_and_place", "look_at_obj_in_light")]
    check_env(lambda: AlfWorldEnv(train_dir), picked, policy=expert_policy)


def test_game_files_follow_the_alfworld_layout(train_dir, train_games) -> None:
    domain = _engine.shipped_data().domain.read_text()
    for i, game in enumerate(train_games):
        assert game.game_id == f"train/{game.path.parent.name}/trial_s0_{i:05d}"
        assert game.path.parent.name.startswith(f"{game.task_type}-") and game.path.parent.name.endswith(
            f"-{game.floorplan}")
        payload = json.loads((game.path / "game.tw-pddl").read_text())
        traj = json.loads((game.path / "traj_data.json").read_text())
        assert payload["solvable"] is True and payload["pddl_domain"] == domain
        assert f"Your task is to: {game.goal}." in payload["grammar"] and "UNKNOWN GOAL" not in payload["grammar"]
        problem = payload["pddl_problem"]
        assert problem.count("(") == problem.count(")") and "(:goal" in problem
        assert traj["task_type"] == game.task_type and traj["task_desc"] == game.goal
        params = traj["pddl_params"]
        assert set(params) == {"object_target", "parent_target", "toggle_target", "mrecep_target", "object_sliced"}
        assert f"{params['object_target']}Type" in problem
        if game.task_type == "look_at_obj_in_light":
            assert params["parent_target"] == "" and params["toggle_target"] in _scenes.LAMP_TYPES
        else:
            assert params["toggle_target"] == "" and "(receptacleType" in problem
    leftovers = [p for p in (train_dir / "train").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert [t.task_id for t in AlfWorldTaskSource(train_dir).tasks("train")] == sorted(g.game_id for g in train_games)


def test_eval_split_uses_only_held_out_floorplans(train_games, eval_games) -> None:
    train, held_out = set(split_floorplans("train")), set(split_floorplans("eval"))
    assert held_out == set(EVAL_FLOORPLANS) and not train & held_out
    assert train | held_out == set(_scenes.all_floorplan_numbers()) and len(train) == 116
    assert {_scenes.room_of(n) for n in held_out} == {"Kitchen", "LivingRoom", "Bedroom", "Bathroom"}
    assert all(g.floorplan in held_out for g in eval_games)
    assert all(g.floorplan in train for g in train_games)
    for task_type in TASK_TYPES:  # every type can be generated on held-out floorplans too
        assert any(gen._candidates(_scenes.load_floorplan(n), task_type) for n in held_out), task_type
    with pytest.raises(ValueError, match="generation split"):
        split_floorplans("valid_seen")


def test_candidates_respect_the_compatibility_tables() -> None:
    t = _scenes.tables()
    needs = {"pick_clean_then_place_in_recep": ("SinkBasin", t.cleanable),
             "pick_heat_then_place_in_recep": ("Microwave", t.heatable),
             "pick_cool_then_place_in_recep": ("Fridge", t.coolable)}
    for number in split_floorplans("train")[::7]:
        fp = _scenes.load_floorplan(number)
        rtypes = fp.receptacle_types()
        for task_type in TASK_TYPES:
            for task in gen._candidates(fp, task_type):
                assert task.obj in fp.object_types and task.obj in t.pickupable
                if task_type == "look_at_obj_in_light":
                    assert task.toggle in fp.lamp_types and task.parent == ""
                    continue
                assert task.parent in rtypes and task.obj in t.contains[task.parent]
                if task_type in needs:
                    appliance, allowed = needs[task_type]
                    assert appliance in rtypes and task.obj in allowed and task.parent != appliance
    kitchen, bedroom = _scenes.load_floorplan(10), _scenes.load_floorplan(308)
    assert gen._candidates(bedroom, "pick_heat_then_place_in_recep") == []  # no microwave in a bedroom
    assert gen._candidates(kitchen, "look_at_obj_in_light") == []  # ALFRED has no lamp tasks in kitchens


def test_generation_is_deterministic(train_dir, eval_games, tmp_path) -> None:
    again = generate_games(tmp_path / "a", n=1, seed=4, split="eval", task_types=SMALL)[0]
    first = eval_games[0]
    assert again.game_id == first.game_id
    for name in ("game.tw-pddl", "traj_data.json"):
        assert (again.path / name).read_bytes() == (first.path / name).read_bytes()
    rng_a = random.Random("alfworld-generate|eval|4|0|0")
    rng_b = random.Random("alfworld-generate|eval|5|0|0")
    fp = _scenes.load_floorplan(424)
    task = gen._candidates(fp, "pick_and_place_simple")[0]
    assert gen._problem(fp, task, rng_a, "p") != gen._problem(fp, task, rng_b, "p")  # the seed matters


def test_unsolvable_draws_are_retried_then_reported(tmp_path, monkeypatch) -> None:
    calls = []
    real = gen._play_expert

    def flaky(env, game_id):
        calls.append(game_id)
        return None if len(calls) == 1 else real(env, game_id)

    monkeypatch.setattr(gen, "_play_expert", flaky)
    game = generate_games(tmp_path / "retry", n=1, seed=4, split="eval", task_types=SMALL)[0]
    assert game.attempts == 2 and len(calls) == 2 and calls[0] != calls[1]

    monkeypatch.setattr(gen, "_play_expert", lambda env, game_id: None)
    monkeypatch.setattr(gen, "MAX_ATTEMPTS", 3)
    with pytest.raises(GenerationError, match=r"no solvable 'pick_and_place_simple' game .* 3 draws; try another"):
        generate_games(tmp_path / "never", n=1, seed=4, split="eval", task_types=SMALL)
    assert [p.name for p in (tmp_path / "never" / "eval").iterdir()] == []  # no half-written games left


def test_argument_errors() -> None:
    with pytest.raises(ValueError):
        generate_games(Path("unused"), n=-1, seed=0)
    with pytest.raises(ValueError, match="task_types"):
        generate_games(Path("unused"), n=1, seed=0, task_types=("pick_and_place",))
    with pytest.raises(ValueError, match="generation split"):
        generate_games(Path("unused"), n=1, seed=0, split="valid_unseen")


def test_cli_entry_point(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    rc = main_generate(["alfworld", "--n", "1", "--seed", "4", "--out", str(out), "--split", "eval",
                        "--task-types", "pick_and_place_simple"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote 1 eval games" in printed and "per game" in printed and str(out) in printed
    assert [t.task_type for t in AlfWorldTaskSource(out).tasks("eval")] == ["pick_and_place_simple"]


def test_cli_without_engine_exits_2_with_the_pip_command(tmp_path, monkeypatch, capsys) -> None:
    for name in ("alfworld", "textworld", "fast_downward"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main_generate(["--n", "1", "--out", str(tmp_path)]) == 2
    assert "pip install 'sdar[alfworld]'" in capsys.readouterr().err


def test_cli_defaults_to_the_standard_location(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    monkeypatch.setattr(gen, "generate_games", lambda out, **kw: [])
    assert main_generate(["--n", "0"]) == 0
    assert str(tmp_path / "generated") in capsys.readouterr().out
