"""Conformance checkers: ``check_env`` for the TextEnv contract (see ``sdar.envs.base``) and ``check_env_spec`` /
``check_env_registry`` for an environment's ``EnvSpec`` (see ``sdar.envs.spec``); every environment should pass
them in tests."""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Mapping, Sequence

from sdar.envs.base import EnvError, TaskSpec, TextEnv
from sdar.envs.spec import EnvSpec, Policy
from sdar.prompts.parse import ParsedAction, normalize_action
from sdar.prompts.render import PromptTemplate, build_context, render_user_message
from sdar.records import EnvInfo, StepResult

__all__ = ["PROBE_ACTION", "check_env", "check_env_registry", "check_env_spec"]

PROBE_ACTION = "xyzzy plugh frobnicate"
"""An action no environment should admit; it must produce a normal StepResult, not an exception."""



def _fail(where: str, message: str) -> AssertionError:
    return AssertionError(f"check_env: {where}: {message}")


def _check_info(info: Any, task: TaskSpec, where: str) -> None:
    if not isinstance(info, EnvInfo):
        raise _fail(where, f"info must be an EnvInfo, got {type(info).__name__}")
    if info.task_id != task.task_id:
        raise _fail(where, f"info.task_id is {info.task_id!r}, expected the task's id {task.task_id!r}")
    if info.task_type and task.task_type and info.task_type != task.task_type:
        raise _fail(where, f"info.task_type is {info.task_type!r} but the TaskSpec says {task.task_type!r}")
    if not isinstance(info.admissible_actions, tuple):
        raise _fail(where, f"admissible_actions must be a tuple, got {type(info.admissible_actions).__name__}")
    bad = [a for a in info.admissible_actions if not isinstance(a, str)]
    if bad:
        raise _fail(where, f"admissible actions must be strings, got {bad[:3]!r}")
    if not isinstance(info.privileged, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in info.privileged.items()
    ):
        raise _fail(where, "info.privileged must map str to str")


def _check_step(result: Any, task: TaskSpec, where: str) -> StepResult:
    if not isinstance(result, StepResult):
        raise _fail(where, f"step() must return a StepResult, got {type(result).__name__}")
    if not isinstance(result.observation, str):
        raise _fail(where, f"observation must be a str, got {type(result.observation).__name__}")
    reward = result.reward
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise _fail(where, f"reward must be a finite number, got {reward!r}")
    if not isinstance(result.terminated, bool) or not isinstance(result.truncated, bool):
        raise _fail(where, "terminated and truncated must be bools")
    _check_info(result.info, task, where)
    if result.info.won and not result.terminated:
        raise _fail(where, "info.won is True on a step that is not terminated")
    return result


def _check_close(env: TextEnv, where: str) -> None:
    for attempt in (1, 2):
        try:
            env.close()
        except Exception as exc:  # noqa: BLE001 - any exception is a contract violation here
            raise _fail(where, f"close() call {attempt} raised {exc!r}; close() must be idempotent") from exc


def _check_task(
    make_env: Callable[[], TextEnv], task: TaskSpec, seed: int, max_steps: int, policy: Policy | None
) -> None:
    where = f"task {task.task_id!r} (seed {seed})"
    env_a, env_b = make_env(), make_env()
    try:
        if not isinstance(getattr(env_a, "name", None), str):
            raise _fail(where, "the environment needs a `name: str` attribute (it selects the prompt template)")
        first_a, first_b = env_a.reset(task_id=task.task_id, seed=seed), env_b.reset(task_id=task.task_id, seed=seed)
        obs, info = first_a
        if not isinstance(obs, str):
            raise _fail(where, f"reset() observation must be a str, got {type(obs).__name__}")
        _check_info(info, task, f"{where} reset")
        if info.won:
            raise _fail(where, "info.won is True right after reset()")
        if first_a != first_b:
            raise _fail(where, f"reset is not deterministic: two fresh instances gave\n{first_a!r}\nand\n{first_b!r}")

        rng = random.Random(f"{task.task_id}|{seed}")
        action = PROBE_ACTION
        for k in range(1, max_steps + 1):
            if policy is not None:
                action = policy(obs, info)
            elif info.admissible_actions:
                action = rng.choice(info.admissible_actions)
            res_a = _check_step(env_a.step(action), task, f"{where} step {k}")
            res_b = env_b.step(action)
            if res_a != res_b:
                raise _fail(where, f"step {k} ({action!r}) is not deterministic:\n{res_a!r}\nvs\n{res_b!r}")
            if res_a.terminated or res_a.truncated:
                break
            obs, info = res_a.observation, res_a.info
        else:
            raise _fail(where, f"the walk neither terminated nor truncated within max_steps={max_steps}")

        try:
            env_a.step(action)
        except EnvError:
            pass
        else:
            raise _fail(where, "step() after the episode ended must raise EnvError (call reset() first)")

        again = env_a.reset(task_id=task.task_id, seed=seed)
        if again != first_a:
            raise _fail(where, "reset() on a used instance differs from reset() on a fresh one")
        if PROBE_ACTION in again[1].admissible_actions:
            raise _fail(where, f"the probe action {PROBE_ACTION!r} should not be admissible")
        try:
            probe = env_a.step(PROBE_ACTION)
        except Exception as exc:  # noqa: BLE001 - any exception is a contract violation here
            raise _fail(where, f"an inadmissible action raised {exc!r}; it must give a normal StepResult") from exc
        _check_step(probe, task, f"{where} inadmissible step")
        if probe.info.won:
            raise _fail(where, "an inadmissible action won the task")
    finally:
        _check_close(env_a, where)
        _check_close(env_b, where)


def check_env(
    make_env: Callable[[], TextEnv],
    tasks: Sequence[TaskSpec],
    *,
    seed: int = 0,
    max_steps: int = 50,
    policy: Policy | None = None,
) -> None:
    """Check the TextEnv contract on each task; raise ``AssertionError`` naming the first violation.

    For every task two fresh instances are reset with the same ``(task_id, seed)`` and must agree; both are then
    stepped with the same action sequence (``policy(observation, info)`` if given, else a seeded random choice of
    admissible actions, else a probe action) and must agree step by step, with well-typed results and a stable
    ``info.task_id``, until the episode terminates or truncates within ``max_steps``. A further ``step`` must
    raise ``EnvError``; a new ``reset`` must reproduce the first one; an inadmissible action must return a normal
    ``StepResult``; ``close()`` must be callable twice.

    Args:
        make_env: builds one fresh environment.
        tasks: tasks to check (at least one).
        seed: reset seed used throughout.
        max_steps: the walk must end (terminated or truncated) within this many steps.
        policy: optional action chooser, e.g. an expert, to check that the walk reaches the goal.
    """
    if not tasks:
        raise ValueError("check_env needs at least one task")
    for task in tasks:
        _check_task(make_env, task, seed, max_steps, policy)


# ----------------------------------------------------------------------------------------------------- env specs
EVAL_METRICS = ("success", "score", "qa")
"""The values ``EvalColumns.metrics`` can take (``sdar.commands.evaluate`` knows how to compute each)."""


def _spec_fail(name: object, message: str) -> AssertionError:
    return AssertionError(f"check_env_spec({name!r}): {message}")


def _check_template(spec: EnvSpec, template: object, which: str) -> None:
    """Render a first turn and a later turn (history, admissible list, privileged block) and look for the inputs."""
    if not isinstance(template, PromptTemplate):
        raise _spec_fail(spec.name, f"{which} must be a PromptTemplate, got {type(template).__name__}")
    goal, observation, note = "put a clean mug on the desk", "You see a desk 1.", "1. go to desk 1"
    contexts = (
        build_context(spec.name, goal, 0, observation, (), (), 2),
        build_context(spec.name, goal, 2, observation, ("look", "go to desk 1"), (("start", "look"),), 2),
    )
    for ctx in contexts:
        try:
            text = render_user_message(ctx, privileged=note, template=template)
        except (KeyError, IndexError, ValueError) as exc:
            raise _spec_fail(spec.name, f"{which} does not render ({exc!r}); its fields may use only the "
                             "placeholders of the default PromptTemplate") from exc
        missing = [part for part in (goal, note) if part not in text]
        if missing:
            raise _spec_fail(spec.name, f"{which} drops {missing!r} from the prompt; keep {{goal}} in `task` and "
                             "{text} in `privileged`")


def _check_parsed(spec: EnvSpec, parsed: object, what: str) -> ParsedAction:
    if not isinstance(parsed, ParsedAction):
        raise _spec_fail(spec.name, f"parser returned {type(parsed).__name__} for {what}; it must return a "
                         "ParsedAction")
    return parsed


def _check_static(spec: EnvSpec) -> None:
    """Every check that needs no environment instance."""
    name = spec.name
    if not isinstance(name, str) or not name or name != name.strip().lower() or " " in name:
        raise _spec_fail(name, "name must be a non-empty lower-case word (it is the value of env.name)")
    reward = spec.default_win_reward
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward) or reward <= 0:
        raise _spec_fail(name, f"default_win_reward must be a finite number > 0, got {reward!r}")
    sources = spec.privileged_sources
    if not isinstance(sources, tuple) or not sources or not all(isinstance(s, str) and s for s in sources):
        raise _spec_fail(name, f"privileged_sources must be a non-empty tuple of names, got {sources!r}; every "
                         "environment offers at least 'skills'")
    if len(set(sources)) != len(sources) or "none" in sources:
        raise _spec_fail(name, f"privileged_sources {sources!r} repeats a name or lists 'none' (always allowed)")
    _check_template(spec, spec.template, "template")
    if spec.compact_template is not None:
        _check_template(spec, spec.compact_template, "compact_template")
    if "{action}" not in spec.reply_format:
        raise _spec_fail(name, f"reply_format {spec.reply_format!r} must contain the {{action}} placeholder")
    if not callable(spec.parser):
        raise _spec_fail(name, "parser must be callable as parser(text, admissible)")
    garbage = _check_parsed(spec, spec.parser("no tags at all", None), "a reply without tags")
    if garbage.valid:
        raise _spec_fail(name, "parser accepted a reply without any tag; a malformed reply must be invalid")
    if not spec.experts or spec.default_expert not in spec.experts:
        raise _spec_fail(name, f"default_expert {spec.default_expert!r} is not one of the experts "
                         f"{sorted(spec.experts)}")
    columns = spec.eval_columns
    if columns.metrics not in EVAL_METRICS:
        raise _spec_fail(name, f"eval_columns.metrics must be one of {EVAL_METRICS}, got {columns.metrics!r}")
    if columns.metrics != "success" and columns.episode_scores is None:
        raise _spec_fail(name, f"eval_columns.metrics={columns.metrics!r} grades episodes, so eval_columns needs "
                         "an episode_scores function")
    if not columns.totals:
        raise _spec_fail(name, "eval_columns.totals is empty; name at least the overall column")
    if spec.generate is not None and not callable(spec.generate):
        raise _spec_fail(name, "generate must be a callable taking command-line arguments")


def _first_action(spec: EnvSpec, env: TextEnv, observation: str, info: EnvInfo) -> str:
    """The first action of the spec's solver (``check_policy``), or of its default demonstrator."""
    if spec.check_policy is not None:
        policy: Policy = spec.check_policy()
        return policy(observation, info)
    return spec.experts[spec.default_expert]()(env, observation, info)


def _check_live(spec: EnvSpec, data_dir: str | None, seed: int) -> None:
    """Build the environment through the spec and parse its solver's first action back from a model reply."""
    name = spec.name
    tasks = spec.build_tasks(seed=seed, data_dir=data_dir, task_types=()).tasks("train")
    if not tasks:
        raise _spec_fail(name, "build_tasks gave no train task")
    env = spec.build_factory(max_turns=10, win_reward=spec.default_win_reward, data_dir=data_dir,
                             retriever_url=None)()
    try:
        if getattr(env, "name", None) != name:
            raise _spec_fail(name, f"its environments are named {getattr(env, 'name', None)!r}; TextEnv.name must "
                             "equal the spec's name (prompts and parsers are looked up by it)")
        observation, info = env.reset(task_id=tasks[0].task_id, seed=seed)
        action = _first_action(spec, env, observation, info)
        reply = spec.reply_format.format(action=action)
        parsed = _check_parsed(spec, spec.parser(reply, info.admissible_actions or None), "the expert's reply")
        if not parsed.valid or normalize_action(parsed.action) != normalize_action(action):
            raise _spec_fail(name, f"parser does not give back the expert's first action {action!r} from the reply "
                             f"{reply!r} (got {parsed}); parser and reply_format must agree")
        ctx = build_context(name, info.goal, 0, observation, info.admissible_actions, (), 2)
        render_user_message(ctx, template=spec.template)
    finally:
        env.close()


def check_env_spec(spec: EnvSpec, *, key: str | None = None, live: bool = False, data_dir: str | None = None,
                   seed: int = 0) -> None:
    """Check an environment spec; raise ``AssertionError`` naming the first problem and its fix.

    Always (cheap, no environment built): the name is a lower-case word equal to ``key`` (the name it is
    registered under, when given); the default win reward is a finite number > 0; the privileged sources are a
    non-empty tuple of distinct names without ``none``; the template (and compact template) render a first and a
    later turn keeping the goal and the privileged text; the parser rejects a reply without tags; the default
    expert is one of the experts; the evaluation columns are consistent.

    With ``live=True`` also: the task source lists train tasks, the factory builds an environment whose ``name`` is
    the spec's, and the parser gives back the solver's first action (``check_policy``, else the default expert)
    from ``reply_format``. ``data_dir`` is passed to the builders (e.g. generated ALFWorld games).
    """
    if not isinstance(spec, EnvSpec):
        raise _spec_fail(getattr(spec, "name", spec), f"expected an EnvSpec, got {type(spec).__name__}")
    if key is not None and key != spec.name:
        raise _spec_fail(spec.name, f"registered as {key!r} but named {spec.name!r}; the key must be the name")
    _check_static(spec)
    if live:
        _check_live(spec, data_dir, seed)


def check_env_registry(specs: Sequence[EnvSpec]) -> None:
    """Check a registry's specs: names are distinct and each spec passes the cheap ``check_env_spec`` checks."""
    names = [spec.name for spec in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AssertionError(f"check_env_registry: environment names {repeated} are registered more than once")
    for spec in specs:
        check_env_spec(spec)
