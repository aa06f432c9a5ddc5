"""Environment lookup by name: a factory for episode instances and the task source for splits."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

from sdar.envs.base import EnvFactory, EnvUnavailable, TaskSource, TaskSpec

ENV_NAMES = ("toy", "alfworld", "webshop", "search")

WIN_REWARDS = {"toy": 10.0, "alfworld": 10.0, "webshop": 10.0, "search": 1.0}
"""Reward of a solved task per environment when the run does not set one: 10·won for the household games and WebShop
(the paper's ALFWorld and WebShop reward), exact match in {0, 1} for Search-QA (Search-R1's EM reward)."""


def default_win_reward(name: str) -> float:
    """The environment's reward for a solved task (``WIN_REWARDS``; 10 for an environment not listed)."""
    return WIN_REWARDS.get(name, 10.0)


def make_env_factory(
    name: str, *, max_turns: int = 50, win_reward: float | None = None, data_dir: str | None = None,
    retriever_url: str | None = None,
) -> EnvFactory:
    """A zero-argument, picklable callable that builds one fresh environment instance of ``name``.

    ``win_reward=None`` takes the environment's default (``default_win_reward``). ``retriever_url`` (Search-QA
    only) makes the environments query that ``/retrieve`` server instead of an in-process index."""
    if win_reward is None:
        win_reward = default_win_reward(name)
    if retriever_url and name != "search":
        raise ValueError(f"retriever_url is for the search environment only, not {name!r}; leave env.retriever_url "
                         "unset")
    if name == "toy":
        from sdar.envs.toy import ToyTextEnv

        return functools.partial(ToyTextEnv, win_reward=win_reward, max_turns=max_turns)
    if name == "alfworld":
        from sdar.envs.alfworld import AlfWorldEnv, resolve_data_dir

        folder = resolve_data_dir(data_dir)  # fails early, naming the generate command, when there is no data
        return functools.partial(AlfWorldEnv, folder, win_reward=win_reward, max_turns=max_turns)
    if name == "webshop":
        from sdar.envs.webshop import WebShopFactory

        return WebShopFactory(data_dir=data_dir, win_reward=win_reward, max_turns=max_turns)
    if name == "search":
        from sdar.envs.search import make_search_env_factory

        return make_search_env_factory(data_dir=data_dir, max_turns=max_turns, win_reward=win_reward,
                                       retriever_url=retriever_url)
    raise _unavailable(name)


def make_task_source(name: str, *, seed: int = 0, data_dir: str | None = None,
                     task_types: Sequence[str] = ()) -> TaskSource:
    """The task lists (``train`` / ``eval`` splits) of environment ``name``, restricted to ``task_types`` when
    given (the toy game then draws all its tasks from those types)."""
    if name == "toy":
        from sdar.envs.toy import ToyTaskSource

        if not task_types:
            return ToyTaskSource(seed=seed)
        # a game restricted to some task types gets a larger train split, so warm starts see many worlds
        return ToyTaskSource(seed=seed, num_train=1000, task_types=tuple(task_types))
    source = _task_source(name, data_dir)
    return _OnlyTypes(source, tuple(task_types)) if task_types else source


@dataclass(frozen=True)
class _OnlyTypes:
    """A task source that keeps only some task types of another."""

    source: TaskSource
    types: tuple[str, ...]

    def tasks(self, split: str) -> list[TaskSpec]:
        kept = [t for t in self.source.tasks(split) if t.task_type in self.types]
        if not kept:
            raise EnvUnavailable(f"split {split!r} has no task of the types {list(self.types)}; check env.task_types")
        return kept


def _task_source(name: str, data_dir: str | None) -> TaskSource:
    if name == "alfworld":
        from sdar.envs.alfworld import AlfWorldTaskSource

        return AlfWorldTaskSource(data_dir)
    if name == "webshop":
        from sdar.envs.webshop import WebShopTaskSource

        return WebShopTaskSource(data_dir)
    if name == "search":
        from sdar.envs.search import make_search_task_source

        return make_search_task_source(data_dir)
    raise _unavailable(name)


def _unavailable(name: str) -> EnvUnavailable:
    if name not in ENV_NAMES:
        return EnvUnavailable(f"unknown environment {name!r}; known: {', '.join(ENV_NAMES)}")
    return EnvUnavailable(f"environment {name!r} is not available in this version of sdar; use one of toy, alfworld, webshop, search")
