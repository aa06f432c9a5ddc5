"""Expert demonstrators for the supervised warm start: the environment's reported plan, the toy solver, and a toy
searcher that acts only on what the agent can see (``sdar sft`` picks one with ``sdar.envs.registry.expert_for``;
which kinds an environment offers is its ``EnvSpec.experts``)."""

from __future__ import annotations

import weakref
from typing import Any

from sdar.data.hints import expert_next_action
from sdar.envs.base import TextEnv
from sdar.records import EnvInfo

__all__ = ["ToySearchExpert", "plan_expert", "toy_expert"]

# ----------------------------------------------------------------------------------------------------- experts
def plan_expert(env: TextEnv, observation: str, info: EnvInfo) -> str:
    """The first step of ``info.privileged["expert_plan"]`` (numbered lines such as ``"1. go to desk 1"``).

    Works for every environment that reports its remaining plan this way (the toy game, ALFWorld).

    Raises:
        ValueError: when the environment gives no (or an empty) ``expert_plan``.
    """
    step = expert_next_action(info.privileged)
    if step is not None:
        return step
    raise ValueError(
        f"task {info.task_id!r} has no expert_plan step in EnvInfo.privileged; expert demonstrations need an "
        "environment that reports its remaining plan (toy, alfworld) or a custom expert hook"
    )


def toy_expert(env: TextEnv, observation: str, info: EnvInfo) -> str:
    """The built-in game's optimal solver (``sdar.envs.toy.expert_action``)."""
    from sdar.envs.toy import ToyTextEnv, expert_action

    if not isinstance(env, ToyTextEnv):
        raise TypeError(f"toy_expert needs a ToyTextEnv, got {type(env).__name__}; use plan_expert instead")
    return expert_action(env)


_NO_START_TYPES = ("sinkbasin", "microwave")
"""Toy receptacle types that never hold an object at the start of an episode."""


class ToySearchExpert:
    """A toy-game demonstrator that acts only on what the agent can see.

    The optimal solver walks straight to the object, which the agent cannot know. This expert instead visits the
    receptacles in the order the room lists them (skipping the sink basin and microwave, which never hold an object
    at the start), opens closed ones to look inside, and follows the optimal plan once it stands at the object's
    receptacle or holds the object. One instance serves any number of episodes (it remembers each environment's
    listing order, read from the admissible ``go to`` actions of the first turn).
    """

    def __init__(self) -> None:
        self._order: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()

    def __call__(self, env: TextEnv, observation: str, info: EnvInfo) -> str:
        from sdar.envs.toy import ToyTextEnv

        if not isinstance(env, ToyTextEnv):
            raise TypeError(f"ToySearchExpert needs a ToyTextEnv, got {type(env).__name__}; use plan_expert instead")
        plan = env.expert_plan()
        if not plan:
            raise ValueError(f"task {info.task_id!r} is already solved; there is no expert action left")
        listed = tuple(a[len("go to "):] for a in info.admissible_actions if a.startswith("go to "))
        location = str(info.extra.get("location", ""))
        if not location:  # nowhere yet: every receptacle is listed, in the room's order
            self._order[env] = listed
        take = next((step for step in plan if step.startswith("take ")), None)
        if take is None:  # holding the object already
            return plan[0]
        source = take.split(" from ", 1)[1]
        if location == source:
            return plan[0]
        if location and f"open {location}" in info.admissible_actions:
            return f"open {location}"  # look inside before moving on
        order = self._order.get(env, listed)
        start = order.index(location) + 1 if location in order else 0
        for receptacle in order[start:]:
            if receptacle.rsplit(" ", 1)[0] not in _NO_START_TYPES:
                return f"go to {receptacle}"
        return plan[0]
