"""Data-parallel wiring of the training loop: learner placement, each rank's task groups, cross-rank metrics, and
run checkpoints whose weights are sharded.

Launched with ``torchrun``, every process builds the same runtime, rolls out whole GRPO groups of the step's tasks
(so group advantages stay exact), and trains one :class:`~sdar.learner.fsdp.FSDPLearner` whose losses use the
global token and row counts. Every helper here also works in a plain single process (rank 0 of a world of 1), where
it does nothing, so the loop calls them unconditionally.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist

from sdar.atomic import clean_leftovers, remove_dir
from sdar.learner import dist as dist_util
from sdar.learner.base import Learner
from sdar.learner.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from sdar.records import Trajectory
from sdar.rollout.collect import CollectSettings

__all__ = [
    "SHARDED_DIR",
    "DataParallel",
    "combine_weighted",
    "consolidate_sharded",
    "finish",
    "load_run_checkpoint",
    "resolve_strategy",
    "rollout_weights",
    "save_run_checkpoint",
    "weighted_sums",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Strategy = Literal["local", "fsdp"]

SHARDED_DIR = "sharded"
"""Sub-folder of the checkpoint root that holds one ``torch.distributed.checkpoint`` folder per saved step."""

_COUNTS = ("rollout/episodes", "rollout/failed_episodes", "rollout/truncated_responses")
_PER_TURN = ("rollout/invalid_ratio", "rollout/response_tokens")
_SUMMED = ("perf/tokens_per_s",)
_WEIGHT = "weight:"


def resolve_strategy(strategy: str, *, world_size: int, initialized: bool, lora: bool) -> Strategy:
    """The learner placement for ``optim.strategy`` in a job of ``world_size`` processes.

    Raises:
        ValueError: ``local`` under a multi-process launch, ``fsdp`` without a process group, or LoRA with FSDP.
    """
    chosen: Strategy = "fsdp" if strategy == "fsdp" or (strategy == "auto" and world_size > 1) else "local"
    if chosen == "local" and world_size > 1:
        raise ValueError(f"optim.strategy=local cannot train data-parallel over {world_size} processes; use "
                         "optim.strategy=fsdp (or auto), or launch a single process")
    if chosen == "fsdp" and not initialized:
        raise ValueError("optim.strategy=fsdp needs a process group: launch with torchrun (e.g. torchrun "
                         "--nproc-per-node 2 -m sdar train ...), or use optim.strategy=local in a single process")
    if chosen == "fsdp" and lora:
        raise ValueError("FSDP training does not support LoRA adapters; set model.lora_rank=0 or train LoRA in a "
                         "single process")
    return chosen


def rollout_weights(trajs: Sequence[Trajectory], metrics: Mapping[str, float]) -> dict[str, float | None]:
    """How much each key of ``sdar.stats.rollout_metrics(trajs)`` weighs when ranks are combined (None = a count,
    summed): episodes for per-episode means, turns for per-turn ratios, a task type's episodes for its success."""
    turns = float(sum(len(t.turns) for t in trajs))
    by_type: dict[str, float] = defaultdict(float)
    for t in trajs:
        by_type[t.task_type or "all"] += 1.0
    out: dict[str, float | None] = {}
    for key in metrics:
        if key in _COUNTS:
            out[key] = None
        elif key in _PER_TURN:
            out[key] = turns
        elif key.startswith("rollout/success/"):
            out[key] = by_type.get(key.removeprefix("rollout/success/"), 0.0)
        else:
            out[key] = float(len(trajs))
    return out


def weighted_sums(metrics: Mapping[str, float], weights: Mapping[str, float | None]) -> dict[str, float]:
    """What one rank contributes to a weighted mean over ranks: ``value * weight`` and ``weight`` per key (a key
    weighted None is sent as is and summed). Add the contributions of all ranks, then :func:`combine_weighted`."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        w = weights[key]
        out[key] = float(value) if w is None else float(value) * w
        if w is not None:
            out[_WEIGHT + key] = float(w)
    return out


def combine_weighted(total: Mapping[str, float]) -> dict[str, float]:
    """The weighted means (and sums) from the summed :func:`weighted_sums` of every rank."""
    return {k: v if _WEIGHT + k not in total else v / max(total[_WEIGHT + k], 1e-12)
            for k, v in total.items() if not k.startswith(_WEIGHT)}


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the data-parallel job, with the few collective verbs the loop needs.

    With ``world_size == 1`` every method is the identity (no process group is touched).
    """

    rank: int = 0
    world_size: int = 1
    initialized: bool = False
    """True when a ``torch.distributed`` process group exists (torchrun launch, even with one process)."""
    local_device: torch.device | None = None
    """This rank's device under torchrun (``cuda:<LOCAL_RANK>`` or the CPU); None in a plain process."""

    @classmethod
    def from_env(cls) -> DataParallel:
        """Join the process group named by torchrun's environment (nothing to join: a world of 1).

        On ranks other than 0, INFO records are filtered out of the root logger's handlers (warnings still show).
        """
        info = dist_util.init_from_env()
        if info.initialized and info.rank != 0:
            for handler in logging.getLogger().handlers:
                if not any(isinstance(f, dist_util.RankZeroFilter) for f in handler.filters):
                    handler.addFilter(dist_util.RankZeroFilter())
        return cls(info.rank, info.world_size, info.initialized, info.device if info.initialized else None)

    @property
    def enabled(self) -> bool:
        """More than one process shares the work."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs, metrics and checkpoint metadata."""
        return self.rank == 0

    def device(self, name: str) -> torch.device | None:
        """This rank's device for ``cfg.device`` (None: decide as a single process does)."""
        return self.local_device if self.initialized and name in ("auto", "cuda") else None

    # -------------------------------------------------------------------------------------------------- work split
    def shard_requests(self, requests: Sequence[T], group_size: int) -> list[T]:
        """This rank's requests: whole consecutive groups of ``group_size``, contiguous blocks in rank order.

        Raises:
            ValueError: when there are fewer groups than ranks (some rank would have nothing to train on).
        """
        groups = len(requests) // group_size
        if self.world_size > groups:
            raise ValueError(f"{groups} task group(s) per step cannot be split over {self.world_size} processes; "
                             f"set rollout.tasks_per_step >= {self.world_size}")
        mine = dist_util.shard_indices(groups, rank=self.rank, world_size=self.world_size)
        return [r for g in mine for r in requests[g * group_size : (g + 1) * group_size]]

    def shard_panel(self, requests: Sequence[T]) -> list[T]:
        """This rank's part of an evaluation panel (one block of requests; may be empty)."""
        return [requests[i] for i in dist_util.shard_indices(len(requests), rank=self.rank,
                                                              world_size=self.world_size)]

    def settings(self, settings: CollectSettings) -> CollectSettings:
        """``settings`` with the rank mixed into the sampling seed, so ranks draw independent random numbers
        (rank 0 keeps the seed: a world of 1 samples exactly as a plain process)."""
        sampling = settings.sampling
        if self.rank == 0 or sampling.seed is None:
            return settings
        seed = random.Random(f"{sampling.seed}:{self.rank}").getrandbits(63)
        return dataclasses.replace(settings, sampling=dataclasses.replace(sampling, seed=seed))

    # -------------------------------------------------------------------------------------------------- collectives
    def gather(self, items: Sequence[T]) -> list[T]:
        """Every rank's ``items`` concatenated in rank order (picklable items; collective)."""
        if not self.enabled:
            return list(items)
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, list(items))
        return [x for part in parts for x in part]

    def every(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank (collective)."""
        if not self.enabled:
            return flag
        return dist_util.all_reduce_metrics({"flag": float(flag)}, "min")["flag"] > 0

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Run rank-local work; if it raises on any rank, raise on every rank instead of leaving the others
        waiting in the next collective (the failing rank re-raises its own error)."""
        error: Exception | None = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks have been told
            error = exc
        if self.enabled:
            dist_util.raise_if_any_rank_failed(error)
        elif error is not None:
            raise error

    def reduce_rollout(self, trajs: Sequence[Trajectory], metrics: Mapping[str, float]) -> dict[str, float]:
        """``rollout_metrics`` of this rank's episodes -> the same metrics over every rank's episodes (collective).

        Counts are summed; every other key is a weighted mean with :func:`rollout_weights`, which is exact.
        """
        if not self.enabled:
            return dict(metrics)
        return combine_weighted(dist_util.all_reduce_metrics(weighted_sums(metrics, rollout_weights(trajs, metrics)),
                                                             "sum"))

    def mean_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Step metrics averaged over ranks (throughputs summed); keys missing on a rank count as 0 (collective)."""
        if not self.enabled:
            return dict(metrics)
        out = dist_util.all_reduce_metrics(metrics, "mean")
        return {k: v * self.world_size if k in _SUMMED else v for k, v in out.items()}


# ------------------------------------------------------------------------------------------------- checkpoints
def save_run_checkpoint(learner: Learner, directory: Path, *, step: int, extra: Mapping[str, Any], keep_last: int,
                        dp: DataParallel) -> None:
    """Save the learner and the run state ``extra`` as ``directory/step_XXXXXX`` (collective with FSDP).

    A single-process learner writes the usual full checkpoint. A sharded learner first writes its shards to
    ``directory/sharded/step_XXXXXX`` (every rank), then rank 0 writes the step folder with the run state, the RNG
    streams and a pointer to the shards; the step folder's ``state.json`` is written last, so a crash never leaves
    a checkpoint that :func:`~sdar.learner.checkpoint.latest_checkpoint` would pick. Shards of pruned steps go too.
    """
    shards = learner.sharded_checkpoints
    if shards is None:
        with dp.together():
            if dp.is_main:
                save_checkpoint(directory, step=step, learner_state=learner.state_dict(), extra=extra,
                                keep_last=keep_last)
        return
    name = f"step_{step:06d}"
    shards.save_sharded(directory / SHARDED_DIR / name)
    with dp.together():  # a failed write on rank 0 is raised everywhere instead of leaving the others waiting
        if dp.is_main:
            save_checkpoint(directory, step=step, extra=extra, keep_last=keep_last,
                            learner_state={"model": {}, "sharded_folder": f"{SHARDED_DIR}/{name}"})
            kept = {p.name for p in directory.glob("step_*")}
            for folder in (directory / SHARDED_DIR).glob("step_*"):
                if folder.name not in kept:
                    remove_dir(folder)  # renamed aside first: never a half-deleted shard folder


def load_run_checkpoint(learner: Learner, directory: Path, *, dp: DataParallel) -> dict[str, Any] | None:
    """Restore the latest checkpoint under ``directory`` into ``learner``; returns its run state (None: none).

    Every rank reads the step folder (the checkpoint root must be on storage all ranks see); a sharded learner then
    loads its shards, a single-process learner the full state. A full checkpoint cannot be loaded into a sharded
    learner or the other way round (the error says which).
    """
    ckpt = latest_checkpoint(directory)
    if not dp.every(ckpt is not None):
        if not dp.every(ckpt is None):
            raise FileNotFoundError(f"some ranks see no checkpoint in {directory}; put out_dir on storage that "
                                    "every node mounts at the same path")
        return None
    assert ckpt is not None
    state, extra = load_checkpoint(ckpt)
    sharded = state.get("sharded_folder")
    shards = learner.sharded_checkpoints
    if shards is not None:
        if sharded is None:
            raise ValueError(f"{ckpt} is a single-process checkpoint; resume it with optim.strategy=local in one "
                             "process, or start the data-parallel run from its weights (model.name)")
        shards.load_sharded(directory / sharded)
    else:
        if sharded is not None:
            raise ValueError(f"{ckpt} holds sharded weights from a torchrun job; resume it under torchrun with "
                             "optim.strategy=fsdp (any number of processes), or export full weights with "
                             "sdar.distributed.consolidate_sharded")
        learner.load_state_dict(state)
    log.info("resumed from %s", ckpt)
    return extra


def consolidate_sharded(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """Full model weights (name -> CPU tensor) of a checkpoint written by a data-parallel run, read in one process.

    Args:
        checkpoint: A ``step_XXXXXX`` folder whose shards live in ``../sharded/step_XXXXXX``, or the shard folder.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = Path(checkpoint)
    clean_leftovers(folder.parent, writer=False)
    if not (folder / ".metadata").is_file():
        folder = folder.parent / SHARDED_DIR / folder.name
        clean_leftovers(folder.parent, writer=False)
    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"no sharded checkpoint at {checkpoint}; pass a step_XXXXXX folder of a torchrun run")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "full.pt"
        dcp_to_torch_save(folder, target)
        state = torch.load(target, weights_only=True)
    return dict(state["model"])


def finish(exit_code: int) -> int:
    """End a command's process: under torchrun, wait for every rank and leave the process group, then exit now.

    The immediate exit (after flushing logs and streams) skips interpreter finalization, which gloo's worker
    threads can abort with SIGABRT after a clean run, turning a finished CPU job into a failure. Without a
    process group ``exit_code`` is simply returned.
    """
    if not dist_util.is_initialized():
        return exit_code
    dist_util.cleanup()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
