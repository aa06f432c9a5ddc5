"""The environment registry: every ``EnvSpec`` the package ships, and lookups by name.

Adding an environment is its folder (the ``TextEnv``, its task source and its ``EnvSpec``) plus one entry in
``ENV_SPECS``; ``make_env_factory``, ``make_task_source``, prompt rendering, action parsing, demonstrations,
``sdar eval``, ``sdar envs`` and the configuration's validation (``sdar.config.validate`` reads the names,
privileged sources, template styles and retriever use from here) then find it.
"""

from __future__ import annotations

import difflib
from typing import Mapping, Sequence

from sdar.envs.alfworld.spec import ALFWORLD_SPEC
from sdar.envs.base import EnvFactory, EnvUnavailable, TaskSource
from sdar.envs.search.spec import SEARCH_SPEC
from sdar.envs.spec import ActionParser, EnvSpec, Expert, ExpertBuilder, OnlyTypes, plan_expert_builder
from sdar.envs.toy_spec import TOY_SPEC
from sdar.envs.webshop.spec import WEBSHOP_SPEC
from sdar.prompts.parse import parse_action
from sdar.names import ExpertKind
from sdar.prompts.render import COMPACT_TEMPLATES, TEMPLATES, PromptTemplate, get_template

__all__ = [
    "ENV_NAMES",
    "ENV_SPECS",
    "WIN_REWARDS",
    "ExpertKind",
    "default_win_reward",
    "expert_for",
    "find_env_spec",
    "get_env_spec",
    "get_parser",
    "make_env_factory",
    "make_task_source",
    "prompt_template",
]

ENV_SPECS: tuple[EnvSpec, ...] = (TOY_SPEC, ALFWORLD_SPEC, WEBSHOP_SPEC, SEARCH_SPEC)
"""Every environment this version can train on, in display order."""

_BY_NAME: dict[str, EnvSpec] = {spec.name: spec for spec in ENV_SPECS}
ENV_NAMES: tuple[str, ...] = tuple(_BY_NAME)

WIN_REWARDS: dict[str, float] = {spec.name: spec.default_win_reward for spec in ENV_SPECS}
"""Reward of a solved task per environment when the run does not set one: 10·won for the household games and WebShop
(the paper's ALFWorld and WebShop reward), exact match in {0, 1} for Search-QA (Search-R1's EM reward)."""

_OnlyTypes = OnlyTypes  # its older name here


def _register_prompt_templates() -> None:
    """Give ``sdar.prompts`` each spec's wording, so code that holds only a ``PromptContext`` (and renders without
    passing a template) sees the environment's template; ``sdar.prompts`` never imports the environments."""
    for spec in ENV_SPECS:
        TEMPLATES.setdefault(spec.name, spec.template)
        if spec.compact_template is not None:
            COMPACT_TEMPLATES.setdefault(spec.name, spec.compact_template)


_register_prompt_templates()


def find_env_spec(name: str) -> EnvSpec | None:
    """The spec registered as ``name``, or None."""
    return _BY_NAME.get(name)


def get_env_spec(name: str) -> EnvSpec:
    """The spec registered as ``name``.

    Raises:
        EnvUnavailable: for an unknown name; the message suggests the closest known one and lists them all.
    """
    spec = _BY_NAME.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, ENV_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise EnvUnavailable(f"unknown environment {name!r}; {hint}known: {', '.join(ENV_NAMES)}")
    return spec


def default_win_reward(name: str) -> float:
    """The environment's reward for a solved task (its spec's ``default_win_reward``; 10 for an unknown name)."""
    spec = _BY_NAME.get(name)
    return spec.default_win_reward if spec is not None else 10.0


def make_env_factory(
    name: str, *, max_turns: int = 50, win_reward: float | None = None, data_dir: str | None = None,
    retriever_url: str | None = None,
) -> EnvFactory:
    """A zero-argument, picklable callable that builds one fresh environment instance of ``name``.

    ``win_reward=None`` takes the environment's default (``default_win_reward``). ``retriever_url`` (environments
    whose spec ``uses_retriever``: Search-QA) makes the environments query that ``/retrieve`` server instead of an
    in-process index.

    Raises:
        ValueError: for a ``retriever_url`` given to an environment without a retriever.
        EnvUnavailable: for an unknown name, or when the environment's package or data is missing.
    """
    if win_reward is None:
        win_reward = default_win_reward(name)
    spec = _BY_NAME.get(name)
    if retriever_url and (spec is None or not spec.uses_retriever):
        users = " and ".join(s.name for s in ENV_SPECS if s.uses_retriever)
        raise ValueError(f"retriever_url is for the {users} environment only, not {name!r}; leave "
                         "env.retriever_url unset")
    return get_env_spec(name).build_factory(max_turns=max_turns, win_reward=win_reward, data_dir=data_dir,
                                            retriever_url=retriever_url)


def make_task_source(name: str, *, seed: int = 0, data_dir: str | None = None,
                     task_types: Sequence[str] = ()) -> TaskSource:
    """The task lists (``train`` / ``eval`` splits) of environment ``name``, restricted to ``task_types`` when
    given (the toy game then draws all its tasks from those types).

    Raises:
        EnvUnavailable: for an unknown name, or when the environment's data is missing.
    """
    return get_env_spec(name).build_tasks(seed=seed, data_dir=data_dir, task_types=tuple(task_types))


def prompt_template(env_name: str, style: str = "") -> PromptTemplate:
    """The template a turn of ``env_name`` is rendered with: the spec's (``style="compact"``: its short variant);
    for a name no spec has, whatever ``sdar.prompts.render.get_template`` holds (``GENERIC_TEMPLATE`` unless one
    was added to ``TEMPLATES``).

    Raises:
        ValueError: for an unknown style, or a compact style the environment has no template for.
    """
    spec = _BY_NAME.get(env_name)
    if spec is None:
        return get_template(env_name, style)
    if not style:
        return spec.template
    if style != "compact" or spec.compact_template is None:
        compact = sorted(s.name for s in ENV_SPECS if s.compact_template is not None)
        raise ValueError(f"prompt style {style!r} is not available for {env_name!r}; compact exists for "
                         f"{compact}, or use the default style ''")
    return spec.compact_template


def get_parser(env_name: str) -> ActionParser:
    """The action parser of ``env_name``: its spec's, or ``parse_action`` (``<action>`` tags) for an environment no
    spec describes."""
    spec = _BY_NAME.get(env_name)
    return spec.parser if spec is not None else parse_action




def expert_for(env_name: str, kind: ExpertKind = "plan") -> Expert:
    """The demonstrator of kind ``kind`` that the spec of ``env_name`` offers (``EnvSpec.experts``).

    ``"plan"``: one that knows the solution: the optimal solver (``sdar.envs.experts.toy_expert``) for ``toy``, the reported plan
    (``sdar.envs.experts.plan_expert``) otherwise. ``"search"``: ``ToySearchExpert`` (toy only), which searches for the object
    instead of knowing where it is. ``"auto"``: the spec's ``default_expert`` (``"search"`` for ``toy``,
    ``"plan"`` otherwise). An environment no spec describes gets ``plan_expert``.

    Raises:
        ValueError: for an unknown kind, or a kind the environment does not offer.
    """
    spec = find_env_spec(env_name)
    offered: Mapping[str, ExpertBuilder] = spec.experts if spec is not None else {"plan": plan_expert_builder}
    chosen: str = kind
    if kind == "auto":
        chosen = spec.default_expert if spec is not None else "plan"
    if chosen in offered:
        return offered[chosen]()
    if chosen not in ("plan", "search"):
        raise ValueError(f"expert must be 'auto', 'plan' or 'search', got {chosen!r}")
    owners = " and ".join(s.name for s in ENV_SPECS if chosen in s.experts)
    raise ValueError(f"the {chosen} expert exists for the {owners} environment only, not {env_name!r}; use 'plan'")
