"""ALFWorld's ``EnvSpec`` (``ALFWORLD_SPEC``), listed by ``sdar.envs.registry``.

Importing it imports neither ``alfworld`` nor ``textworld``: building an environment does (``_engine``).
"""

from __future__ import annotations

import functools

from sdar.envs.alfworld.env import AlfWorldEnv, expert_policy
from sdar.envs.alfworld.games import AlfWorldTaskSource, resolve_data_dir
from sdar.envs.alfworld.generate import main_generate
from sdar.envs.base import EnvFactory, TaskSource
from sdar.envs.spec import EnvSpec, EvalColumns, Policy, plan_expert_builder, restrict_types
from sdar.prompts.parse import parse_action
from sdar.prompts.render import HOUSEHOLD_COMPACT_TEMPLATE, HOUSEHOLD_TEMPLATE

__all__ = ["ALFWORLD_COLUMNS", "ALFWORLD_SPEC"]

ALFWORLD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pick_and_place_simple", "Pick"), ("look_at_obj_in_light", "Look"), ("pick_clean_then_place_in_recep", "Clean"),
    ("pick_heat_then_place_in_recep", "Heat"), ("pick_cool_then_place_in_recep", "Cool"),
    ("pick_two_obj_and_place", "Pick2"),
)
"""ALFWorld task types in the paper's column order, with its column names."""


def _factory(*, max_turns: int, win_reward: float, data_dir: str | None, retriever_url: str | None) -> EnvFactory:
    """Resolves the game folder now, so a missing data set fails early with the generate command in the message."""
    del retriever_url
    folder = resolve_data_dir(data_dir)
    return functools.partial(AlfWorldEnv, folder, win_reward=win_reward, max_turns=max_turns)


def _tasks(*, seed: int, data_dir: str | None, task_types: tuple[str, ...]) -> TaskSource:
    """The games of the data folder; the split is fixed by the data, not by the seed."""
    del seed
    return restrict_types(AlfWorldTaskSource(data_dir), task_types)


def _solver() -> Policy:
    """Follows the engine's expert plan."""
    return expert_policy


ALFWORLD_SPEC = EnvSpec(
    name="alfworld",
    build_factory=_factory,
    build_tasks=_tasks,
    template=HOUSEHOLD_TEMPLATE,
    compact_template=HOUSEHOLD_COMPACT_TEMPLATE,
    parser=parse_action,
    privileged_sources=("skills", "expert_plan"),
    default_win_reward=10.0,
    experts={"plan": plan_expert_builder},
    eval_columns=EvalColumns(group_names=ALFWORLD_COLUMNS, totals=(("success", "ALF Avg"),)),
    check_policy=_solver,
    generate=main_generate,
)
"""ALFWorld on its real engine: the paper's 10·won reward and Table-1 columns Pick … Pick2, ALF Avg."""
