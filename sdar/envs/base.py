"""The text-environment contract: the TextEnv and TaskSource protocols, task records and environment errors.

Contract every environment follows (``sdar.envs.checker.check_env`` verifies it):

* ``reset(task_id=..., seed=...)`` starts an episode and is deterministic given ``(task_id, seed)``.
* ``step(action)`` returns a ``StepResult`` with Gymnasium semantics: ``terminated`` when the episode ended inside
  the task (won, or lost for good), ``truncated`` when it was cut from outside (turn limit). ``info.task_id`` never
  changes within an episode, and ``info.won`` is only True on a terminating step.
* An inadmissible or unparseable action is *not* an exception: the environment answers with a normal
  ``StepResult`` whose observation is feedback text (e.g. "Nothing happens.").
* Calling ``step`` before ``reset``, after the episode ended (terminated or truncated) or after ``close`` raises
  ``EnvError``; ``reset`` starts a new episode on the same instance.
* ``close()`` releases resources and may be called any number of times.
* Backend failures raise ``EnvError`` subclasses whose message says how to fix the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

from sdar.errors import ShowTraceback, UserError
from sdar.records import EnvInfo, StepResult

__all__ = [
    "EnvCrashed",
    "EnvError",
    "EnvFactory",
    "EnvUnavailable",
    "TaskSource",
    "TaskSpec",
    "TextEnv",
    "panel_tasks",
]


@runtime_checkable
class TextEnv(Protocol):
    """One stream of episodes. Text in, text out; knows nothing about tokens, prompts or models."""

    name: str
    """Environment family name (``"toy"``, ``"alfworld"``, ...); selects the prompt template."""

    def reset(self, *, task_id: str, seed: int) -> tuple[str, EnvInfo]:
        """Start an episode of task ``task_id``; the same ``(task_id, seed)`` always gives the same episode.

        Returns:
            The first observation and the episode's info (goal, task type, admissible actions, privileged text).
        """
        ...

    def step(self, action: str) -> StepResult:
        """Apply one action. Inadmissible actions give feedback text, never an exception.

        Raises:
            EnvError: before ``reset``, after the episode ended, after ``close``, or when the backend broke.
        """
        ...

    def close(self) -> None:
        """Release resources; idempotent."""
        ...


EnvFactory = Callable[[], TextEnv]
"""Builds one fresh environment instance; the collector makes one per parallel episode."""


@dataclass(frozen=True)
class TaskSpec:
    """One task instance an episode can be started on."""

    task_id: str
    """Passed to ``TextEnv.reset``; all episodes of a GRPO group share it."""
    task_type: str
    """Category for per-type metrics and skill retrieval (e.g. ``pick_and_place``)."""


class TaskSource(Protocol):
    """Lists the tasks of an environment by split."""

    def tasks(self, split: str) -> list[TaskSpec]:
        """Tasks of ``split`` (e.g. ``"train"`` or ``"eval"``), in a fixed order.

        Raises:
            ValueError: for an unknown split.
        """
        ...


class EnvError(UserError, RuntimeError):
    """Base class of environment errors (misuse of the episode life cycle or a broken backend)."""


class EnvCrashed(ShowTraceback, EnvError):
    """The environment backend failed while running an episode; the episode cannot continue."""


class EnvUnavailable(EnvError):
    """The environment cannot be built here (missing package or data); the message says how to install it."""

    @classmethod
    def missing_package(cls, env: str, package: str, *, extra: str) -> "EnvUnavailable":
        """The error for an environment whose backend package is not installed.

        Args:
            env: environment name, e.g. ``"alfworld"``.
            package: the import that failed, e.g. ``"textworld"``.
            extra: the ``sdar`` pip extra that installs it, e.g. ``"alfworld"``.
        """
        return cls(
            f"the {env!r} environment needs the Python package {package!r}, which is not installed; "
            f"install it with: pip install 'sdar[{extra}]'"
        )


def panel_tasks(tasks: Sequence[TaskSpec], k: int) -> list[TaskSpec]:
    """The first ``k`` tasks taken round-robin over task types, so that a small panel covers every type.

    Types come in the order of their first task, and each type's tasks in split order: types a, a, a, b, b and
    ``k=3`` give a1, b1, a2. A panel of every task is the whole split in that interleaved order.
    """
    by_type: dict[str, list[TaskSpec]] = {}
    for task in tasks:
        by_type.setdefault(task.task_type, []).append(task)
    out: list[TaskSpec] = []
    for rank in range(max((len(v) for v in by_type.values()), default=0)):
        out.extend(v[rank] for v in by_type.values() if rank < len(v))
    return out[: max(k, 0)]
