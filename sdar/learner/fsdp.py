"""Data-parallel training with the policy sharded by FSDP2 (``fully_shard``): the :class:`FSDP2Sharding` strategy,
and :func:`FSDPLearner`, which builds the one learner class (:class:`~sdar.learner.local.PolicyLearner`) with it.

The learner keeps the training logic (global-count loss normalisation, filler passes that keep every rank in the
same collectives, skip and roll-back rules); this module supplies what changes when the state is sharded.

Sharding: every decoder layer (the model's ``_no_split_modules`` classes) is one FSDP unit; the remaining parameters
(embeddings, final norm, LM head, tied or not) belong to a root unit that wraps the whole model. Parameters,
gradients and AdamW state are sharded over all ranks (1-D device mesh). Mixed precision gathers parameters in
``param_dtype`` for compute while the sharded master copy and the gradient reduction stay in fp32.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from sdar.atomic import clean_leftovers, new_tmp_dir, replace_dir
from sdar.learner import dist as dist_util
from sdar.learner.base import ModelRole
from sdar.learner.dist import ReduceOp
from sdar.learner.local import PolicyLearner
from sdar.learner.modules import enable_activation_checkpointing
from sdar.learner.sharding import is_additive

__all__ = ["FSDP2Sharding", "FSDPLearner", "SHARDED_STATE_FILE"]

T = TypeVar("T")

SHARDED_STATE_FILE = "learner_state.pt"
"""File of a sharded checkpoint folder holding the counters and shuffle RNGs; written last (marks completeness)."""


class _Root(nn.Module):
    """Outermost FSDP unit around a causal LM: runs a closure inside its forward.

    Calling it gathers the parameters that live outside the decoder layers for the duration of the closure, so the
    decoder body and the LM head can be called separately (the memory-lean scoring path) on a sharded model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, fn: Callable[[], Any]) -> Any:
        return fn()


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (the classes named in ``model._no_split_modules``)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TypeError(
            f"{type(model).__name__} names no decoder-layer class in _no_split_modules; FSDPLearner shards per "
            "decoder layer and needs a transformers *ForCausalLM model"
        )
    return layers


def _as_fsdp(module: nn.Module) -> FSDPModule:
    assert isinstance(module, FSDPModule)
    return module


class FSDP2Sharding:
    """:class:`~sdar.learner.sharding.ShardingStrategy` over every rank of the default process group with FSDP2.

    Needs an initialised default process group (:func:`sdar.learner.dist.init_from_env`). The models may be on the
    CPU or already on this rank's device; :meth:`prepare` moves them to ``device`` and shards them in place.

    Args:
        param_dtype: Mixed precision: parameters are gathered in this dtype for compute (e.g. ``torch.bfloat16``)
            while the sharded master copy and the gradient reduction stay in fp32. None = the model's own dtype.
        reshard_after_forward: Free each decoder layer's gathered parameters after its forward (gather again in
            backward): less memory, more communication.
        defer_grad_sync: Accumulate unsharded gradients over the micro-batches of an optimizer batch and
            reduce-scatter once at the end: less communication, but every rank holds a full-size gradient. False
            reduce-scatters after every micro-batch and keeps only gradient shards.
        device: Where this rank computes; None = ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU.
    """

    def __init__(
        self,
        *,
        param_dtype: torch.dtype | None = None,
        reshard_after_forward: bool = True,
        defer_grad_sync: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if not dist_util.is_initialized():
            raise RuntimeError(
                "FSDPLearner needs a torch.distributed process group: launch with torchrun and call "
                "sdar.learner.dist.init_from_env() first, or use LocalLearner in a single process"
            )
        self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        self._defer_grad_sync = defer_grad_sync
        self.reshard_after_forward = reshard_after_forward
        self.device = torch.device(device) if device is not None else dist_util.local_device()
        self.mesh = init_device_mesh(self.device.type, (self._world_size,))
        self.policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
        self._roots: dict[ModelRole, _Root] = {}

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def distributed(self) -> bool:
        return True

    @property
    def defer_grad_sync(self) -> bool:
        return self._defer_grad_sync

    # ------------------------------------------------------------------------------------------ placement
    def _shard(self, model: nn.Module) -> _Root:
        """``fully_shard`` every decoder layer, then a :class:`_Root` around the whole model (in place)."""
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=self.mesh, reshard_after_forward=self.reshard_after_forward, mp_policy=self.policy)
        root = _Root(model)
        fully_shard(root, mesh=self.mesh, mp_policy=self.policy)  # keeps its parameters gathered until backward
        return root

    def prepare(self, model: nn.Module, reference_model: nn.Module | None, *, gradient_checkpointing: bool) -> None:
        """Move both models to this rank's device and shard them; the reference is frozen first."""
        if gradient_checkpointing:  # wrap the layers' forward before FSDP hooks onto them
            enable_activation_checkpointing(model)
        self._roots["policy"] = self._shard(model.to(self.device))
        if reference_model is not None:
            reference_model.to(self.device).eval().requires_grad_(False)
            self._roots["reference"] = self._shard(reference_model)

    def forward(self, role: ModelRole, fn: Callable[[], T]) -> T:
        """Run ``fn`` inside the root FSDP unit of the policy or the reference (its parameters gathered)."""
        return self._roots[role](fn)

    def release(self, role: ModelRole) -> None:
        """Reshard the root unit, which stays gathered after a forward until told otherwise."""
        _as_fsdp(self._roots[role]).reshard()

    def set_gradient_sync(self, enabled: bool) -> None:
        _as_fsdp(self._roots["policy"]).set_requires_gradient_sync(enabled)

    # ------------------------------------------------------------------------------------------ collectives
    def reduce(self, values: Mapping[str, Tensor], op: ReduceOp) -> dict[str, Tensor]:
        return dist_util.all_reduce_tensors(values, op)

    def reduce_floats(self, values: Mapping[str, float], op: ReduceOp) -> dict[str, float]:
        out = dist_util.all_reduce_tensors({k: torch.tensor(float(v)) for k, v in values.items()}, op)
        return {k: float(v) for k, v in out.items()}

    def reduce_metrics(self, sums: Mapping[str, Tensor], *, grad_norm: Tensor | None = None) -> dict[str, float]:
        """Sum every rank's metric sums: aggregated losses (``loss/...``, ``*_loss``, ...) were scaled by the world
        size on each rank and are divided by it; token means were already weighted by each rank's share of the
        global tokens. The gradient norm of sharded gradients is a DTensor whose full value is the global norm."""
        reduced = dist_util.all_reduce_tensors(sums, "sum")
        out = {k: float(v) / (self._world_size if is_additive(k) else 1) for k, v in reduced.items()}
        if grad_norm is not None:
            out["train/grad_norm"] = float(grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm)
        return out

    @torch.no_grad()
    def all_finite(self, params: Sequence[Tensor]) -> bool:
        """Every trainable weight shard is finite on every rank (one all-reduce)."""
        local = all(bool(torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()) for p in params)
        flag = torch.tensor(1.0 if local else 0.0, device=self.device)
        return float(dist_util.all_reduce_tensors({"finite": flag}, "min")["finite"]) > 0.5

    def raise_together(self, error: BaseException | None) -> None:
        dist_util.raise_if_any_rank_failed(error)

    def broadcast_object(self, obj: T) -> T:
        return dist_util.broadcast_object(obj)

    # ------------------------------------------------------------------------------------------ state
    def full_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full (unsharded) state gathered on rank 0 on the CPU; empty on the other ranks. The optimizer state
        is keyed by parameter name."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {
            "model": get_model_state_dict(model, options=options),
            "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
        }

    def load_full_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
    ) -> None:
        """Only rank 0's ``state`` is read; it is broadcast to the others."""
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        main = self._rank == 0
        set_model_state_dict(model, state["model"] if main else {}, options=options)
        set_optimizer_state_dict(model, optimizer, state["optimizer"] if main else {}, options=options)
        for param_state in optimizer.state.values():  # rank 0 took plain tensors (``step``) as given: own them
            for key, value in param_state.items():
                if isinstance(value, Tensor) and not isinstance(value, DTensor):
                    param_state[key] = value.clone()

    def rng_state(self, generator: torch.Generator) -> list[Tensor]:
        """Every rank's generator state (collective), in rank order."""
        states: list[Any] = [None] * self._world_size
        dist.all_gather_object(states, generator.get_state())
        return states

    def set_rng_state(self, generator: torch.Generator, saved: Any) -> None:
        """This rank's state from one state per rank (rank 0's when the world size changed)."""
        generator.set_state(saved[self._rank] if len(saved) == self._world_size else saved[0])

    def export_weights(self, model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        """Full policy weights on EVERY rank, on the training device, by state-dict name, gathered ONE tensor at a
        time (collective: every rank must iterate to the end, in the same order).

        Each sharded entry is cast to ``dtype`` on its shard first and then all-gathered, so the gather moves the
        engine's dtype (bf16: half of fp32) and no rank ever holds more than the tensor being handed over beside its
        own shards — never a second full copy of the model (a full fp32 state dict is 4 bytes a parameter on every
        rank, 12 GB for a 3B model)."""
        for name, value in model.state_dict().items():
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            yield name, (value.full_tensor() if isinstance(value, DTensor) else value).detach()

    def save_sharded(
        self, path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer,
        extra: Mapping[str, Any],
    ) -> Path:
        """Write a sharded checkpoint folder with ``torch.distributed.checkpoint`` (collective).

        Each rank writes its own shards of the model and optimizer state (the folder must be on storage every rank
        sees); rank 0 writes the metadata and :data:`SHARDED_STATE_FILE` (``extra`` plus the world size). The folder
        is written under a hidden temporary name, flushed to disk, and put in place by rank 0 with
        :func:`sdar.atomic.replace_dir` (an existing folder of the same name is swapped out atomically), so a crash
        at any point leaves the previous folder or the new one, complete. Leftovers of an interrupted save beside
        ``path`` are removed first.
        """
        final = Path(path)
        error: BaseException | None = None
        tmp_path = ""
        if self._rank == 0:
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                clean_leftovers(final.parent, writer=True)
                tmp_path = str(new_tmp_dir(final))
            except Exception as exc:  # noqa: BLE001 - raised on every rank just below
                error = exc
        dist_util.raise_if_any_rank_failed(error)
        tmp = Path(dist_util.broadcast_object(tmp_path))
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.save(state, checkpoint_id=tmp)
        if self._rank == 0:
            try:
                torch.save({**extra, "world_size": self._world_size}, tmp / SHARDED_STATE_FILE)
                replace_dir(tmp, final)
            except BaseException as exc:  # noqa: BLE001 - raised on every rank just below
                shutil.rmtree(tmp, ignore_errors=True)
                error = exc
        dist_util.raise_if_any_rank_failed(error)
        return final

    def load_sharded(
        self, path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """Load a :meth:`save_sharded` folder into the sharded model and optimizer (collective; the world size may
        differ); returns the contents of its :data:`SHARDED_STATE_FILE`."""
        folder = Path(path)
        clean_leftovers(folder.parent, writer=False)
        if not (folder / SHARDED_STATE_FILE).is_file():
            raise FileNotFoundError(
                f"{folder} is not a complete sharded checkpoint (no {SHARDED_STATE_FILE}); pass a folder written by "
                "FSDPLearner.save_sharded"
            )
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=folder)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
        return dict(torch.load(folder / SHARDED_STATE_FILE, weights_only=True))


def FSDPLearner(  # noqa: N802 - keeps the constructor-style name callers use
    model: nn.Module,
    *,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    defer_grad_sync: bool = False,
    device: torch.device | str | None = None,
    **learner_options: Any,
) -> PolicyLearner:
    """The learner with its policy (and reference) sharded over the data-parallel ranks by :class:`FSDP2Sharding`.

    Every method of the result is collective: all ranks call it in the same order, each with its own rows.
    ``mini_batch_rows`` counts THIS rank's rows per optimizer step; ranks with fewer mini-batches than another rank
    take part in the extra optimizer steps with filler passes.

    Args:
        model: The policy; moved to ``device`` and sharded in place.
        param_dtype, reshard_after_forward, defer_grad_sync, device: As :class:`FSDP2Sharding`.
        learner_options: Every other keyword of :class:`~sdar.learner.local.PolicyLearner` (``reference_model``,
            ``lr``, ``micro_batch_tokens``, ...); the reference model is sharded too (no gradients).
    """
    sharding = FSDP2Sharding(param_dtype=param_dtype, reshard_after_forward=reshard_after_forward,
                             defer_grad_sync=defer_grad_sync, device=device)
    return PolicyLearner(model, sharding=sharding, **learner_options)
