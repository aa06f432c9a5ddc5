"""How a learner's models are laid out over processes, and how per-rank numbers become global ones.

:class:`~sdar.learner.local.PolicyLearner` holds the training logic once (scoring, micro-batch accumulation, the
optimizer step with its skip and roll-back rules, mini-batching, counters) and asks an injected
:class:`ShardingStrategy` for everything that depends on placement:

- preparing the models (activation checkpointing, moving and sharding them),
- running a forward pass (a sharded model must gather its parameters first) and freeing what it gathered,
- reducing counts, metrics, the gradient norm and the finiteness check over ranks,
- turning gradient synchronisation off between micro-batches,
- full and sharded state dicts, and the full weights a separate generator needs.

:class:`NoSharding` is the single-process strategy: every reduction is the identity and the model's own state dict
is the checkpoint. The FSDP2 strategy lives in :mod:`sdar.learner.fsdp`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

from sdar.learner.base import ModelRole
from sdar.learner.dist import ReduceOp
from sdar.learner.modules import enable_activation_checkpointing

__all__ = ["NoSharding", "ShardingStrategy", "is_additive"]

T = TypeVar("T")

# Objective metrics that are aggregated losses (already divided by the global count): they add up over
# micro-batches and ranks. Every other objective metric is a token mean over its micro-batch and is token-weighted.
_ADDITIVE_SUFFIXES = ("_loss", "/kl", "/entropy", "/divergence")


def is_additive(key: str) -> bool:
    """True for objective metrics that are summed over micro-batches (losses), False for token-weighted means."""
    return key.startswith("loss/") or key.endswith(_ADDITIVE_SUFFIXES)


@runtime_checkable
class ShardingStrategy(Protocol):
    """Placement and collectives of a learner. Under a multi-process strategy every method is collective."""

    @property
    def rank(self) -> int:
        """This process's index among the data-parallel ranks."""
        ...

    @property
    def world_size(self) -> int:
        """Number of data-parallel ranks (1 for a single process)."""
        ...

    @property
    def distributed(self) -> bool:
        """True when learner calls are collectives over ranks that each pass their own rows, and the state is
        sharded over them (checkpoint with :meth:`save_sharded`)."""
        ...

    @property
    def defer_grad_sync(self) -> bool:
        """Synchronise gradients only after the last micro-batch of an optimizer batch (see
        :meth:`set_gradient_sync`)."""
        ...

    def prepare(self, model: nn.Module, reference_model: nn.Module | None, *, gradient_checkpointing: bool) -> None:
        """Make the policy and the frozen reference ready to train and score, in place, before the optimizer
        collects the trainable parameters."""
        ...

    def forward(self, role: ModelRole, fn: Callable[[], T]) -> T:
        """Run ``fn`` (one forward computation of the policy or the reference) where its weights are usable."""
        ...

    def release(self, role: ModelRole) -> None:
        """Free what :meth:`forward` gathered once a run of no-grad forward passes is over."""
        ...

    def reduce(self, values: Mapping[str, Tensor], op: ReduceOp) -> dict[str, Tensor]:
        """Scalar tensors reduced over ranks (same keys on every rank)."""
        ...

    def reduce_floats(self, values: Mapping[str, float], op: ReduceOp) -> dict[str, float]:
        """Python numbers reduced over ranks (same keys on every rank)."""
        ...

    def reduce_metrics(self, sums: Mapping[str, Tensor], *, grad_norm: Tensor | None = None) -> dict[str, float]:
        """Global objective metrics from this rank's micro-batch sums; with ``grad_norm`` (what
        ``clip_grad_norm_`` returned) also ``train/grad_norm`` of the whole model."""
        ...

    def all_finite(self, params: Sequence[Tensor]) -> bool:
        """Every trainable weight is finite, on every rank."""
        ...

    def raise_together(self, error: BaseException | None) -> None:
        """Raise on every rank when any rank passes an error, so no rank is left waiting in a collective."""
        ...

    def set_gradient_sync(self, enabled: bool) -> None:
        """Switch the synchronisation of gradients over ranks in the next backward passes on or off."""
        ...

    def full_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``{"model": ..., "optimizer": ...}``, complete where a checkpoint is written from (rank 0)."""
        ...

    def load_full_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
    ) -> None:
        """Load ``state["model"]`` and ``state["optimizer"]`` as :meth:`full_state_dict` wrote them."""
        ...

    def rng_state(self, generator: torch.Generator) -> Any:
        """What a checkpoint keeps of the learner's shuffle generator (every rank's stream when distributed)."""
        ...

    def set_rng_state(self, generator: torch.Generator, saved: Any) -> None:
        """Restore the shuffle generator from what :meth:`rng_state` returned."""
        ...

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        ...

    def export_weights(self, model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        """The full policy weights by state-dict name, on every rank, one tensor at a time (in ``dtype`` when
        given), for a generator with its own copy."""
        ...

    def save_sharded(
        self, path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer,
        extra: Mapping[str, Any],
    ) -> Path:
        """Write a sharded checkpoint folder of the model, the optimizer and the picklable ``extra``."""
        ...

    def load_sharded(
        self, path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """Load the model and optimizer of a :meth:`save_sharded` folder; returns its ``extra``."""
        ...


class NoSharding:
    """One process owns the whole model: reductions are the identity, the model's state dict is the checkpoint."""

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def distributed(self) -> bool:
        return False

    @property
    def defer_grad_sync(self) -> bool:
        return False

    def prepare(self, model: nn.Module, reference_model: nn.Module | None, *, gradient_checkpointing: bool) -> None:
        """Freeze the reference and turn on activation checkpointing; the models stay where they are."""
        if reference_model is not None:
            reference_model.eval().requires_grad_(False)
        if gradient_checkpointing:
            enable_activation_checkpointing(model)

    def forward(self, role: ModelRole, fn: Callable[[], T]) -> T:
        return fn()

    def release(self, role: ModelRole) -> None:
        return None

    def reduce(self, values: Mapping[str, Tensor], op: ReduceOp) -> dict[str, Tensor]:
        return dict(values)

    def reduce_floats(self, values: Mapping[str, float], op: ReduceOp) -> dict[str, float]:
        return {k: float(v) for k, v in values.items()}

    def reduce_metrics(self, sums: Mapping[str, Tensor], *, grad_norm: Tensor | None = None) -> dict[str, float]:
        """The sums as floats, fetched from the device together with the gradient norm in one sync."""
        keys = list(sums)
        head = [] if grad_norm is None else [grad_norm.float()]
        if not keys and not head:
            return {}
        device = grad_norm.device if grad_norm is not None else sums[keys[0]].device
        values = torch.stack([*head, *(sums[k].to(device) for k in keys)]).tolist()
        out = dict(zip(keys, values[len(head):]))
        if grad_norm is not None:
            out["train/grad_norm"] = values[0]
        return out

    @torch.no_grad()
    def all_finite(self, params: Sequence[Tensor]) -> bool:
        """One device sync for every weight."""
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())

    def raise_together(self, error: BaseException | None) -> None:
        if error is not None:
            raise error

    def set_gradient_sync(self, enabled: bool) -> None:
        return None

    def full_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The live tensors (tied weights appear under both names)."""
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    def load_full_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
    ) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    def rng_state(self, generator: torch.Generator) -> Tensor:
        return generator.get_state()

    def set_rng_state(self, generator: torch.Generator, saved: Any) -> None:
        generator.set_state(saved)

    def broadcast_object(self, obj: T) -> T:
        return obj

    def export_weights(self, model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        """The policy's state dict, one tensor at a time (cast to ``dtype`` when given); a LoRA policy exports the
        base names with the adapters merged in, one layer at a time (what a plain copy of the model needs, see
        :func:`sdar.learner.lora.merged_weights`)."""
        from sdar.learner.lora import merged_weights

        for name, value in merged_weights(model):
            yield name, (value if dtype is None or not value.is_floating_point() else value.to(dtype))

    def save_sharded(
        self, path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer,
        extra: Mapping[str, Any],
    ) -> Path:
        raise TypeError("a single-process learner keeps its whole state in state_dict(); save that instead")

    def load_sharded(
        self, path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        raise TypeError("a single-process learner loads its whole state with load_state_dict(); sharded "
                        "checkpoints come from a data-parallel (FSDP) run")
