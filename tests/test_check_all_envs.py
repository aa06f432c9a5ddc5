"""Every environment the project ships passes the check_env conformance suite, built through the registry."""

from __future__ import annotations

import pytest

from sdar.envs.registry import ENV_NAMES as AVAILABLE_ENVS
from sdar.envs.checker import check_env
from sdar.envs.registry import make_env_factory, make_task_source


def _policy(name: str):
    if name == "alfworld":
        from sdar.envs.alfworld import expert_policy
    elif name == "webshop":
        from sdar.envs.webshop import expert_policy
    elif name == "search":
        from sdar.envs.search import expert_policy
    else:
        return _plan_policy
    return expert_policy


def _plan_policy(observation, info):
    """Follow the first line of the toy game's expert plan ("1. go to fridge 1")."""
    first = info.privileged["expert_plan"].splitlines()[0]
    return first.split(". ", 1)[1]


@pytest.fixture(scope="module")
def alfworld_games(tmp_path_factory):
    from sdar.envs.alfworld import generate_games

    out = tmp_path_factory.mktemp("alfworld-check")
    generate_games(out, n=2, seed=5, split="train", task_types=("look_at_obj_in_light",))
    return out


def test_every_available_environment_is_covered():
    assert set(AVAILABLE_ENVS) == {"toy", "alfworld", "webshop", "search"}


@pytest.mark.parametrize("name", sorted(AVAILABLE_ENVS))
def test_check_env_on_every_environment(name, request):
    data_dir = str(request.getfixturevalue("alfworld_games")) if name == "alfworld" else None
    factory = make_env_factory(name, data_dir=data_dir, max_turns=50 if name != "search" else 4)
    tasks = make_task_source(name, data_dir=data_dir).tasks("train")[:3]
    assert tasks, f"{name} has no train tasks"
    check_env(factory, tasks, policy=_policy(name))
