"""Expert demonstrations: play tasks with an expert policy and record each turn's prompt context and action, exactly
as the collector would render that turn (the warm start's training data and the testbed tokenizer's corpus)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

from sdar.envs.base import EnvFactory, TaskSpec
from sdar.envs.spec import Expert
from sdar.prompts.parse import parse_action
from sdar.prompts.render import build_context
from sdar.records import PromptContext

__all__ = ["ExpertTurn", "episode_seed", "expert_turns"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertTurn:
    """One demonstrated decision: the context the collector would render and the expert's (admissible) action."""

    task_id: str
    task_type: str
    episode_seed: int
    index: int
    """Turn index within the episode (= ``context.step``)."""
    context: PromptContext
    """Built with ``build_context`` exactly as ``collect_episodes`` builds it (before prompt fitting)."""
    action: str
    """The action as the environment received it (the matching admissible entry when there is a list)."""
    privileged: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The environment's privileged information in this state (e.g. the remaining ``expert_plan``)."""


def episode_seed(seed: int, index: int, *, purpose: str = "demo") -> int:
    """A 31-bit reset seed for the ``index``-th episode of ``purpose`` (``"demo"`` or ``"eval"``) of a run."""
    digest = hashlib.sha256(f"sft:{purpose}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def expert_turns(
    make_env: EnvFactory,
    tasks: Sequence[TaskSpec],
    *,
    expert: Expert,
    history_length: int,
    max_turns: int,
    seed: int,
    keep_failed: bool = False,
    style: str = "",
) -> list[ExpertTurn]:
    """Play every task with ``expert`` and record each turn's prompt context and action.

    Episode ``i`` is reset with ``episode_seed(seed, i)``. History pairs are (observation the turn saw, action), as
    in the collector. An episode whose expert action is not admissible, whose expert fails, or (unless
    ``keep_failed``) that is not won within ``max_turns`` is dropped with a warning. ``style`` is the prompt style
    of the recorded contexts.

    Returns:
        The turns of the kept episodes, episode by episode, in task order.
    """
    out: list[ExpertTurn] = []
    dropped = 0
    for i, task in enumerate(tasks):
        turns, won = _play(make_env, task, expert, history_length, max_turns, episode_seed(seed, i), style)
        if turns is None or not (won or keep_failed):
            dropped += 1
            continue
        out.extend(turns)
    if dropped:
        logger.warning("dropped %d of %d expert episodes (expert failed or did not win)", dropped, len(tasks))
    return out


def _play(
    make_env: EnvFactory, task: TaskSpec, expert: Expert, history_length: int, max_turns: int, seed: int,
    style: str = "",
) -> tuple[list[ExpertTurn] | None, bool]:
    """One expert episode; ``(None, False)`` when the expert fails or proposes an inadmissible action."""
    env = make_env()
    try:
        observation, info = env.reset(task_id=task.task_id, seed=seed)
        history: list[tuple[str, str]] = []
        turns: list[ExpertTurn] = []
        for turn in range(max_turns):
            ctx = build_context(
                env.name, info.goal, turn, observation, info.admissible_actions, history, history_length, style
            )
            try:
                proposed = expert(env, observation, info)
            except Exception:  # noqa: BLE001 - a failing expert only loses its episode
                logger.warning("expert failed on task %s, turn %d", task.task_id, turn, exc_info=True)
                return None, False
            parsed = parse_action(f"<think></think><action>{proposed}</action>", info.admissible_actions or None)
            if not parsed.valid:
                logger.warning("expert action %r on task %s is not admissible", proposed, task.task_id)
                return None, False
            turns.append(ExpertTurn(task.task_id, info.task_type or task.task_type, seed, turn, ctx, parsed.action,
                                    dict(info.privileged)))
            result = env.step(parsed.action)
            history.append((observation, parsed.action))
            observation, info = result.observation, result.info
            if result.terminated or result.truncated:
                return turns, bool(result.info.won)
        return turns, False
    finally:
        env.close()
