"""``EnvSpec``: everything the rest of the package needs to know about one environment, in one frozen record.

Each environment defines its spec next to its code (``sdar.envs.toy_spec``, ``sdar.envs.alfworld.spec``,
``sdar.envs.webshop.spec``, ``sdar.envs.search.spec``) and ``sdar.envs.registry`` lists them; config validation,
prompt rendering, action parsing, demonstrations, ``sdar eval`` and ``sdar envs`` look the environment up there
instead of comparing its name. A spec holds functions, never built objects: no game, catalogue, corpus or index is
loaded before a builder is called, and spec modules import only the package's own light modules, so importing a
spec (or the registry) never imports an optional backend (alfworld, textworld, faiss, bm25s, ...; checked by
tests/test_env_spec.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Protocol, Sequence

from sdar.envs.base import EnvFactory, EnvUnavailable, TaskSource, TaskSpec, TextEnv
from sdar.prompts.parse import ParsedAction
from sdar.prompts.render import PromptTemplate
from sdar.records import EnvInfo, Trajectory

__all__ = [
    "ActionParser",
    "EnvFactoryBuilder",
    "EnvSpec",
    "EpisodeScores",
    "EvalColumns",
    "Expert",
    "ExpertBuilder",
    "OnlyTypes",
    "Policy",
    "PolicyBuilder",
    "TaskSourceBuilder",
    "plan_expert_builder",
    "restrict_types",
]

ActionParser = Callable[[str, Sequence[str] | None], ParsedAction]
"""``parser(response_text, admissible_or_None) -> ParsedAction``: how a model reply becomes an action."""
Expert = Callable[[TextEnv, str, EnvInfo], str]
"""``expert(env, observation, info) -> action``: the next action of a demonstrator in the current state."""
ExpertBuilder = Callable[[], Expert]
"""Returns a fresh demonstrator (some keep per-episode memory, so each use gets its own)."""
Policy = Callable[[str, EnvInfo], str]
"""``policy(observation, info) -> action``: an action chooser that needs no environment handle."""
PolicyBuilder = Callable[[], Policy]
"""Returns a policy; lets a spec name an environment's solver without importing it."""
EvalMetrics = Literal["success", "score", "qa"]


class EnvFactoryBuilder(Protocol):
    """Builds the zero-argument, picklable factory of fresh environment instances from the run's env settings."""

    def __call__(self, *, max_turns: int, win_reward: float, data_dir: str | None,
                 retriever_url: str | None) -> EnvFactory:
        ...


class TaskSourceBuilder(Protocol):
    """Builds the environment's task lists; ``task_types`` (empty = all) restricts every split to those types."""

    def __call__(self, *, seed: int, data_dir: str | None, task_types: tuple[str, ...]) -> TaskSource:
        ...


@dataclass(frozen=True)
class EpisodeScores:
    """The graded outcome of one finished episode beyond won / lost (None = not measured in this environment)."""

    score: float | None = None
    """WebShop-style final score in [0, 1]."""
    em: float | None = None
    """Exact match of the final answer (0 or 1)."""
    f1: float | None = None
    """Token F1 of the final answer in [0, 1]."""


EpisodeScorer = Callable[[Trajectory], EpisodeScores]


@dataclass(frozen=True)
class EvalColumns:
    """What ``sdar eval`` measures for an environment and how its columns of the paper's Table 1 are laid out."""

    metrics: EvalMetrics = "success"
    """``success``: success overall and per task type. ``score``: also the mean final ``score`` and ``acc`` (the
    success rate under WebShop's name). ``qa``: success, then exact match and F1 per data source with their
    unweighted means ``em/avg`` and ``f1/avg`` instead of success per type."""
    group_prefix: str = "success"
    """The per-group metric shown as one column per task type or data source (``success``, ``em``); '' = none."""
    group_names: tuple[tuple[str, str], ...] = ()
    """Known groups in the paper's column order with their headers; other groups follow, sorted, under their own
    name."""
    totals: tuple[tuple[str, str], ...] = (("success", "Avg"),)
    """``(metric key, header)`` columns after the per-group ones."""
    episode_scores: EpisodeScorer | None = None
    """Grades a finished episode (needed by ``score`` and ``qa``); None = won / lost only."""


@dataclass(frozen=True)
class EnvSpec:
    """One environment as the rest of the package sees it; ``sdar.envs.checker.check_env_spec`` checks one."""

    name: str
    """Registry key and ``TextEnv.name`` of its instances (it is what ``env.name`` in a config selects)."""
    build_factory: EnvFactoryBuilder
    """``make_env_factory`` for this environment."""
    build_tasks: TaskSourceBuilder
    """``make_task_source`` for this environment."""
    template: PromptTemplate
    """Per-turn prompt wording (the default prompt style)."""
    parser: ActionParser
    """Turns a model reply into the action sent to the environment."""
    privileged_sources: tuple[str, ...]
    """Teacher contexts this environment can give (``teacher.source``); ``none`` is always allowed besides."""
    default_win_reward: float
    """Reward of a solved task when the run leaves ``env.win_reward`` unset."""
    experts: Mapping[str, ExpertBuilder] = field(hash=False)
    """Demonstrators for the supervised warm start by kind (``plan`` = knows the solution; ``search`` = acts only
    on what the agent sees)."""
    default_expert: str = "plan"
    """The kind ``expert=auto`` picks."""
    compact_template: PromptTemplate | None = None
    """Short wording for ``env.prompt_style=compact`` (small models trained from scratch); None = not offered."""
    eval_columns: EvalColumns = field(default_factory=EvalColumns)
    """How ``sdar eval`` scores and tabulates the environment."""
    check_policy: PolicyBuilder | None = None
    """The solver ``sdar envs check`` walks with; None = a seeded random walk over the admissible actions."""
    reply_format: str = "<think></think><action>{action}</action>"
    """A model reply that carries ``{action}`` in this environment's answer format (the spec checker feeds it to
    ``parser`` and expects the action back)."""
    uses_retriever: bool = False
    """Takes ``env.retriever_url`` (a shared ``/retrieve`` server)."""
    generate: Callable[[Sequence[str]], int] | None = None
    """``sdar envs generate <name> ...``: writes an offline data set from command-line arguments; None = no data
    to generate."""


@dataclass(frozen=True)
class OnlyTypes:
    """A task source that keeps only some task types of another (``env.task_types``)."""

    source: TaskSource
    types: tuple[str, ...]

    def tasks(self, split: str) -> list[TaskSpec]:
        kept = [t for t in self.source.tasks(split) if t.task_type in self.types]
        if not kept:
            raise EnvUnavailable(f"split {split!r} has no task of the types {list(self.types)}; check env.task_types")
        return kept


def restrict_types(source: TaskSource, task_types: tuple[str, ...]) -> TaskSource:
    """``source`` itself when ``task_types`` is empty, else the view of it that keeps only those types."""
    return OnlyTypes(source, tuple(task_types)) if task_types else source


def plan_expert_builder() -> Expert:
    """``sdar.envs.experts.plan_expert``: follows the first step of the environment's reported ``expert_plan``.

    Imported on use because ``sdar.envs.experts`` pulls in the training data stack, which an environment never needs."""
    from sdar.envs.experts import plan_expert

    return plan_expert
