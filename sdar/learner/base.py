"""The Learner protocol: what the training loop may ask of any backend that owns the policy weights.

:class:`Learner` lists every call the training loop (``sdar.commands.train``, ``sdar.runtime``, ``sdar.distributed``) makes
on a learner. Checkpointing a learner whose state is split over ranks needs two more calls, kept apart in
:class:`ShardedCheckpoints`; a learner says whether it has them through :attr:`Learner.sharded_checkpoints`
instead of the caller probing attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from sdar.batch import TokenBatch

if TYPE_CHECKING:
    from sdar.algo.methods import LossSpec

__all__ = ["Learner", "ModelRole", "ShardedCheckpoints"]

ModelRole = Literal["policy", "reference"]


@runtime_checkable
class ShardedCheckpoints(Protocol):
    """Checkpoint hooks of a learner whose weights and optimizer state live in shards over several ranks.

    Both calls are collective: every rank calls them with the same folder (on storage every rank sees).
    """

    def save_sharded(self, path: str | os.PathLike[str]) -> Path:
        """Write this rank's shards and the run counters into the folder ``path``; returns the folder."""
        ...

    def load_sharded(self, path: str | os.PathLike[str]) -> None:
        """Restore what :meth:`save_sharded` wrote (the number of ranks may differ)."""
        ...


@runtime_checkable
class Learner(Protocol):
    """Scores token batches and updates the policy. Backends (single process, FSDP, ...) implement these verbs.

    All per-token tensors use the response-aligned ``[N, A]`` layout of :class:`~sdar.batch.TokenBatch`.
    """

    @property
    def policy_module(self) -> nn.Module:
        """The live policy model (a generator running in the same process may share it)."""
        ...

    @property
    def sharded_checkpoints(self) -> ShardedCheckpoints | None:
        """Where to checkpoint a sharded state (save and load through it, not :meth:`state_dict`); None when
        :meth:`state_dict` and :meth:`load_state_dict` carry the whole state."""
        ...

    def logprobs(
        self, batch: TokenBatch, *, model: ModelRole = "policy", with_entropy: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced log-probs of the response tokens, without gradient.

        Args:
            batch: Rows to score (prompts are context, responses are scored).
            model: ``"policy"`` (current weights) or ``"reference"`` (the frozen initial model).
            with_entropy: Also return the entropy of each position's next-token distribution.

        Returns:
            ``(logprobs [N, A], entropy [N, A] or None)``, fp32 on CPU, 0 where the response is padding.
        """
        ...

    def logprobs_many(self, batches: Sequence[TokenBatch], *, model: ModelRole = "policy") -> list[Tensor]:
        """Log-probs of several batches (e.g. the student and teacher views of the same rows) in one scoring pass.

        Returns:
            One ``[N_i, A_i]`` tensor per batch, equal to ``logprobs(batches[i], model=model)[0]``.
        """
        ...

    def train_step(
        self,
        batch: TokenBatch,
        *,
        spec: LossSpec,
        ref_logprobs: Tensor | None = None,
        teacher_logprobs: Tensor | None = None,
        is_weights: Tensor | None = None,
    ) -> dict[str, float]:
        """Run the policy update(s) for one training step and return float metrics.

        Args:
            batch: Rows with ``old_logprobs``, ``advantages`` and ``loss_mask``.
            spec: The objective (PG / KL / entropy / distillation weights).
            ref_logprobs: ``[N, A]`` reference-model log-probs; required when ``spec.needs_reference``.
            teacher_logprobs: ``[N, A]`` teacher-view log-probs; required when ``spec.needs_teacher``.
            is_weights: ``[N, A]`` importance weights multiplying the policy-gradient term per token (rollout/trainer
                mismatch correction); None = 1.
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: ``"model"`` (name -> tensor) plus optimizer and schedule state."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...

    def export_weights(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        """Current policy weights by name, one full tensor at a time (cast to ``dtype`` when given), for a generator
        that keeps its own copy (e.g. vLLM). Collective when sharded: every rank iterates to the end."""
        ...
