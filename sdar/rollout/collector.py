"""The rollout stage of a step as one call: plan the episodes, run this rank's share, let the skill retriever learn,
and reduce the rollout metrics over ranks.

The training loop sees trajectories and metrics only; data parallelism (which groups this rank runs, the rank mixed
into the sampling seed where the generator needs it, errors raised on every rank) and the bandit's updates stay here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sdar.distributed import DataParallel
from sdar.envs.base import EnvFactory
from sdar.metrics import RolloutProgress
from sdar.records import Trajectory
from sdar.rollout.collect import CollectSettings, collect_episodes
from sdar.rollout.generator import Generator
from sdar.rollout.plan import EpisodePlan, Planner, mix_seed
from sdar.stats import rollout_metrics

__all__ = ["Collector", "Rollout"]


@dataclass(frozen=True)
class Rollout:
    """This rank's episodes of one step (those that produced a turn) and the step's rollout metrics (all ranks)."""

    trajectories: list[Trajectory]
    metrics: dict[str, float]
    trainable: bool
    """Every rank has at least one episode with a turn (else the step's update is skipped on every rank)."""


@dataclass(frozen=True)
class Collector:
    """Runs training rollouts and evaluation panels for one rank."""

    planner: Planner
    make_env: EnvFactory
    generator: Generator
    tokenizer: Any
    """A Hugging Face tokenizer (chat template, decode)."""
    dp: DataParallel
    train_settings: CollectSettings
    """Training rollouts; the sampling seed is replaced per step."""
    eval_settings: CollectSettings
    """Evaluation rollouts (the same sampling seed at every evaluation)."""
    seed: int
    invalid_penalty: float
    progress: bool = True
    """Progress lines inside rollouts (rank 0)."""
    rank_seeds: bool = True
    """Mix the rank into the sampling seed, so that ranks draw independent random streams (a generator that samples
    a whole batch from one stream: the HF loop). False for a generator that seeds each row from its episode id
    (vLLM): episode ids differ across ranks already, and a world of N then samples exactly the episodes of one
    process."""

    def _run(self, plan: EpisodePlan, settings: CollectSettings, label: str, *, panel: bool) -> list[Trajectory]:
        with self.dp.together():  # an error on one rank is raised on every rank
            mine = self.dp.shard_panel(plan.requests) if panel else \
                self.dp.shard_requests(plan.requests, self.planner.group_size)  # whole groups per rank
            progress = RolloutProgress(label) if self.progress and self.dp.is_main else None
            return collect_episodes(mine, self.make_env, self.generator, self.tokenizer,
                                    self.dp.settings(settings) if self.rank_seeds else settings, progress=progress)

    def train(self, step: int) -> Rollout:
        """The episodes of training step ``step``; a learning retriever is told which of its choices won."""
        plan = self.planner.step(step)
        sampling = dataclasses.replace(self.train_settings.sampling, seed=mix_seed(self.seed, step, 1))
        trajs = self._run(plan, dataclasses.replace(self.train_settings, sampling=sampling), f"step {step} rollout",
                          panel=False)
        skill_metrics: dict[str, float] = {}
        retriever = self.planner.retriever
        if retriever is not None:  # bandit retrieval learns from success (0/1) of the episodes it served
            # goal-reading (keyword) retrievals of other ranks' groups stay None here: they do not learn, and the
            # skill metrics are then this rank's groups, averaged over ranks with the other metrics
            retrievals = plan.settled()
            for retrieval, won in zip(retrievals, self.dp.gather([t.won for t in trajs])):  # request order
                if retrieval is not None:
                    retriever.update(retrieval, float(won))
            from sdar.skills.retrieval import retrieval_metrics

            skill_metrics = retrieval_metrics([r for r in retrievals if r is not None])
        trajs = [t for t in trajs if t.turns]
        metrics = self.dp.reduce_rollout(trajs, rollout_metrics(trajs, self.invalid_penalty))
        metrics.update(skill_metrics)
        return Rollout(trajs, metrics, self.dp.every(bool(trajs)))

    def evaluate(self, step: int) -> dict[str, float]:
        """Success on the fixed evaluation panel (same task ids and seeds at every evaluation), as ``eval/*``."""
        trajs = self._run(self.planner.panel(), self.eval_settings, f"step {step} eval", panel=True)
        trajs = [t for t in trajs if t.turns]
        m = self.dp.reduce_rollout(trajs, rollout_metrics(trajs, self.invalid_penalty))
        return {k.replace("rollout/", "eval/"): v for k, v in m.items()}
