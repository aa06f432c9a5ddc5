"""Which episodes a step (or an evaluation) runs: tasks, seeds, groups, and the privileged context decided up front.

Training draws tasks without replacement from a per-epoch shuffle of the train split (the data cursor is
``step * tasks_per_step``, so a resumed run draws exactly the same tasks) and runs ``group_size`` episodes of each,
sharing the task's seed and group id. The evaluation panel is a fixed set of eval-split tasks, one episode each, with
seeds offset from the training seeds so the two never share an episode.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from sdar.envs.base import TaskSpec, panel_tasks
from sdar.records import EnvInfo
from sdar.rollout.collect import EpisodeRequest
from sdar.skills.retrieval import Retrieval, SkillRetriever

__all__ = ["EVAL_SEED_OFFSET", "EpisodePlan", "GoalRetrieval", "Planner", "mix_seed"]

EVAL_SEED_OFFSET = 1_000_003
"""Evaluation episode seeds are offset from training seeds so the two never share an episode."""


def mix_seed(*values: int) -> int:
    """A deterministic 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    return random.Random(":".join(str(v) for v in values)).getrandbits(63)


@dataclass
class GoalRetrieval:
    """One task group's skill retrieval made once the goal is known: the collector calls it after each reset of the
    group's episodes with the ``EnvInfo``; the first call asks the retriever with ``info.goal``, later calls (the
    group's other episodes, which share task and seed) reuse that answer."""

    retriever: SkillRetriever
    learn: bool
    """``retrieve`` (training) or ``best`` (evaluation panels: the query is not counted)."""
    task_type: str
    result: Retrieval | None = None
    """The retrieval, once an episode of the group has been reset on this process."""

    def __call__(self, info: EnvInfo) -> dict[str, str]:
        if self.result is None:
            ask = self.retriever.retrieve if self.learn else self.retriever.best
            self.result = ask(task_type=self.task_type or info.task_type, goal=info.goal)
        return {"skills": self.result.text}


@dataclass(frozen=True)
class EpisodePlan:
    """The requests of one rollout and the skill retrieval behind each (request order; None: no retriever)."""

    requests: list[EpisodeRequest]
    retrievals: list[Retrieval | GoalRetrieval | None] = field(default_factory=list)

    def settled(self) -> list[Retrieval | None]:
        """The retrievals after the rollout: a ``GoalRetrieval`` becomes the retrieval it made, or None when its
        episodes ran on another process (or all failed to reset)."""
        return [r.result if isinstance(r, GoalRetrieval) else r for r in self.retrievals]


@dataclass(frozen=True)
class Planner:
    """Makes the episode requests of training steps and of the evaluation panel."""

    train_tasks: Sequence[TaskSpec]
    eval_tasks: Sequence[TaskSpec]
    seed: int
    tasks_per_step: int
    group_size: int
    panel_size: int
    """Tasks of the evaluation panel (``eval_tasks``)."""
    retriever: SkillRetriever | None = None

    def requests_for(self, tasks: Sequence[TaskSpec], *, first_group: int, group_size: int, seed_base: int,
                     learn: bool = True) -> EpisodePlan:
        """G episodes per task sharing the task's seed and group id; skills retrieved per task.

        A retrieval that reads the goal text (keyword retrieval of a task type the library does not map) waits for
        the goal the environment reports at reset: the requests carry a ``GoalRetrieval`` that the collector calls
        once per group after the reset. Retrievals that ignore the goal are made here, before the rollout,
        identically on every rank, as a learning retriever needs. ``learn=False`` (evaluation): a learning retriever
        answers with its current best choice and does not count the query."""
        requests: list[EpisodeRequest] = []
        retrievals: list[Retrieval | GoalRetrieval | None] = []
        for i, task in enumerate(tasks):
            privileged: dict[str, str] = {}
            at_reset: GoalRetrieval | None = None
            retrieval: Retrieval | GoalRetrieval | None = None
            if self.retriever is not None:
                if self.retriever.needs_goal(task.task_type):
                    retrieval = at_reset = GoalRetrieval(self.retriever, learn, task.task_type)
                else:  # the goal is not known before the reset, and this retrieval does not read it
                    ask = self.retriever.retrieve if learn else self.retriever.best
                    retrieval = ask(task_type=task.task_type, goal="")
                    privileged["skills"] = retrieval.text
            group_id = first_group + i
            for g in range(group_size):
                requests.append(EpisodeRequest(task=task, seed=seed_base + i, group_id=group_id,
                                               episode_id=group_id * group_size + g, privileged=privileged,
                                               privileged_at_reset=at_reset))
                retrievals.append(retrieval)
        return EpisodePlan(requests, retrievals)

    def step(self, step: int) -> EpisodePlan:
        """Training episodes of ``step`` (see the module docstring)."""
        n = len(self.train_tasks)
        cursor = step * self.tasks_per_step
        tasks: list[TaskSpec] = []
        for k in range(cursor, cursor + self.tasks_per_step):
            epoch, pos = divmod(k, n)
            order = list(range(n))
            random.Random(mix_seed(self.seed, epoch, 3)).shuffle(order)
            tasks.append(self.train_tasks[order[pos]])
        return self.requests_for(tasks, first_group=cursor, group_size=self.group_size,
                                 seed_base=mix_seed(self.seed, step, 4) % 1_000_000_000)

    def panel(self) -> EpisodePlan:
        """The fixed evaluation panel: ``panel_size`` tasks of the eval split (see ``panel_tasks``), one episode
        each."""
        tasks = panel_tasks(list(self.eval_tasks), self.panel_size)
        return self.requests_for(tasks, first_group=0, group_size=1, seed_base=EVAL_SEED_OFFSET, learn=False)
