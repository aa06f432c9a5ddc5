"""The built-in household game's ``EnvSpec`` (``TOY_SPEC``), listed by ``sdar.envs.registry``."""

from __future__ import annotations

import functools

from sdar.envs.base import EnvFactory, TaskSource
from sdar.envs.spec import EnvSpec, Expert
from sdar.envs.toy import ToyTaskSource, ToyTextEnv
from sdar.prompts.parse import parse_action
from sdar.prompts.render import HOUSEHOLD_COMPACT_TEMPLATE, HOUSEHOLD_TEMPLATE

__all__ = ["TOY_SPEC"]


def _factory(*, max_turns: int, win_reward: float, data_dir: str | None, retriever_url: str | None) -> EnvFactory:
    """The game needs no data folder or retriever; every instance is a fresh ``ToyTextEnv``."""
    del data_dir, retriever_url
    return functools.partial(ToyTextEnv, win_reward=win_reward, max_turns=max_turns)


def _tasks(*, seed: int, data_dir: str | None, task_types: tuple[str, ...]) -> TaskSource:
    """The game draws its worlds from the chosen types directly; a restricted game gets a larger train split, so
    warm starts see many worlds."""
    del data_dir
    if not task_types:
        return ToyTaskSource(seed=seed)
    return ToyTaskSource(seed=seed, num_train=1000, task_types=tuple(task_types))


def _solver() -> Expert:
    """The optimal solver (it knows where the object is)."""
    from sdar.envs.experts import toy_expert

    return toy_expert


def _searcher() -> Expert:
    """A fresh demonstrator that looks for the object receptacle by receptacle, as the agent has to."""
    from sdar.envs.experts import ToySearchExpert

    return ToySearchExpert()


TOY_SPEC = EnvSpec(
    name="toy",
    build_factory=_factory,
    build_tasks=_tasks,
    template=HOUSEHOLD_TEMPLATE,
    compact_template=HOUSEHOLD_COMPACT_TEMPLATE,
    parser=parse_action,
    privileged_sources=("skills", "expert_plan"),
    default_win_reward=10.0,
    experts={"plan": _solver, "search": _searcher},
    default_expert="search",
)
"""The household game: ALFWorld's wording and 10·won reward, the optimal and the searching demonstrator."""
