"""Frozen data records that flow between environments, the rollout collector and the token-batch builder.

Nothing here does tensor math. Text and token ids are both kept: token ids are what was really sampled or fed to
the model ("tokens in, tokens out"); text is for environments, logs and people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: Role
    content: str


@dataclass(frozen=True)
class EnvInfo:
    """What an environment reports besides the observation text (explicit fields instead of an untyped dict)."""

    task_id: str
    """Stable id of the task instance; all G episodes of a GRPO group share it."""
    task_type: str = ""
    """Category used for per-type metrics and keyword skill retrieval (e.g. ``pick_and_place``)."""
    goal: str = ""
    """The task description shown to the agent."""
    admissible_actions: tuple[str, ...] = ()
    """Actions the environment accepts in the current state (empty when the action space is free text)."""
    won: bool = False
    """True once the task is solved."""
    privileged: Mapping[str, str] = field(default_factory=dict)
    """Training-only context by source name (``expert_plan``, ``gold_answer``, ...). Never shown to the student."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Environment-specific details that no generic code relies on."""


@dataclass(frozen=True)
class StepResult:
    """Outcome of one ``env.step`` (Gymnasium semantics for ``terminated`` / ``truncated``)."""

    observation: str
    reward: float
    terminated: bool
    """The episode ended inside the task (success or unrecoverable failure)."""
    truncated: bool
    """The episode was stopped from outside (turn limit)."""
    info: EnvInfo


@dataclass(frozen=True)
class PromptContext:
    """Everything a prompt template needs for one turn; rendering is done by ``sdar.prompts``.

    Keeping the structure (instead of only the rendered text) lets the teacher view be re-rendered with privileged
    context and, if needed, a shorter history, without ever decoding model output.
    """

    env_name: str
    goal: str
    step: int
    """Number of turns already taken in this episode (0 on the first turn)."""
    observation: str
    admissible_actions: tuple[str, ...] = ()
    history: tuple[tuple[str, str], ...] = ()
    """The most recent (observation, action) pairs, oldest first, already cut to the history window."""
    style: str = ""
    """Prompt style: '' = the environment's own template, 'compact' = its short variant (``sdar.prompts``)."""


@dataclass(frozen=True)
class Turn:
    """One policy decision: the exact prompt ids it saw, the ids it sampled, and what the environment answered."""

    index: int
    context: PromptContext
    prompt_ids: tuple[int, ...]
    """Student prompt token ids given to the generator."""
    response_ids: tuple[int, ...]
    """Sampled token ids, verbatim (never re-tokenized)."""
    response_logprobs: tuple[float, ...]
    """Log-probability of each sampled id under the sampling distribution; ``len == len(response_ids)``."""
    response_text: str
    action: str
    """The parsed action sent to the environment ('' when the response could not be parsed)."""
    valid: bool
    """False when the response was malformed or the action was not admissible."""
    finish_reason: FinishReason
    reward: float
    """Environment reward of this turn, before any invalid-action penalty."""
    observation: str
    """Observation returned by the environment after this action."""
    done: bool
    privileged: Mapping[str, str] = field(default_factory=dict)
    """The environment's privileged information in the state this turn acted in (``EnvInfo.privileged`` before the
    action, e.g. the remaining ``expert_plan`` from this state). Teacher-only, like ``Trajectory.privileged``."""


@dataclass(frozen=True)
class Trajectory:
    """One episode. Episodes of the same task in the same step share ``group_id`` (GRPO group)."""

    task_id: str
    task_type: str
    group_id: int
    episode_id: int
    seed: int
    turns: tuple[Turn, ...]
    won: bool
    privileged: Mapping[str, str] = field(default_factory=dict)
    """Teacher-only context by source (skills, expert plan, ...), fixed for the episode."""
    failed: bool = False
    """True when the environment broke mid-episode; such episodes count as failures."""
    final_extra: Mapping[str, Any] = field(default_factory=dict)
    """``EnvInfo.extra`` of the last environment step (e.g. WebShop's ``score``, Search-QA's ``em`` / ``f1``)."""

    @property
    def episode_return(self) -> float:
        """Sum of environment rewards (penalties are applied later, per turn)."""
        return float(sum(t.reward for t in self.turns))

    @property
    def num_invalid(self) -> int:
        return sum(not t.valid for t in self.turns)
