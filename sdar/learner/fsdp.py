"""Data-parallel learner: the policy sharded with FSDP2 (``fully_shard``) and losses normalised over the global batch.

Every rank holds a shard of the training rows. Each optimizer batch first all-reduces its trained-token and
non-empty-row counts; every micro-batch loss is then aggregated with those global counts times the world size, so
the gradient FSDP averages over ranks equals the gradient of the whole batch's loss in one process.

Sharding: every decoder layer (the model's ``_no_split_modules`` classes) is one FSDP unit; the remaining parameters
(embeddings, final norm, LM head, tied or not) belong to a root unit that wraps the whole model. Parameters,
gradients and AdamW state are sharded over all ranks (1-D device mesh).

FSDP gathers parameters with collectives inside every forward pass, so all ranks must run the same number of forward
(and backward) passes. Ranks whose shard needs fewer micro-batches (or optimizer mini-batches) than another rank run
filler passes on a one-token row whose loss mask is all False: they join the collectives and add exactly zero to
gradients and metrics.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

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
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from sdar.algo.methods import LossSpec
from sdar.atomic import clean_leftovers, new_tmp_dir, replace_dir
from sdar.batch import TokenBatch
from sdar.learner import dist as dist_util
from sdar.learner.base import ModelRole
from sdar.learner.local import LocalLearner, _enable_activation_checkpointing, _is_additive, _mode
from sdar.learner.packing import Layout, PackedMicroBatch, make_micro_batches

__all__ = ["FSDPLearner", "SHARDED_STATE_FILE"]

logger = logging.getLogger(__name__)

SHARDED_STATE_FILE = "learner_state.pt"
"""File of a sharded checkpoint folder holding the counters and shuffle RNGs; written last (marks completeness)."""

_FILLER_ROW = ((0,), (0,))  # one prompt token, one response token: the cheapest pass through the whole model


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


def _shard(model: nn.Module, mesh: DeviceMesh, *, reshard_after_forward: bool, policy: MixedPrecisionPolicy) -> _Root:
    """``fully_shard`` every decoder layer, then a :class:`_Root` around the whole model (in place)."""
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    root = _Root(model)
    fully_shard(root, mesh=mesh, mp_policy=policy)  # the root keeps its parameters gathered until backward
    return root


def _as_fsdp(module: nn.Module) -> FSDPModule:
    assert isinstance(module, FSDPModule)
    return module


class FSDPLearner(LocalLearner):
    """A :class:`~sdar.learner.LocalLearner` whose policy (and reference) is sharded over the data-parallel ranks.

    Every method is collective: all ranks call it in the same order, each with its own rows. ``logprobs`` and
    ``logprobs_many`` score this rank's rows; ``train_step`` trains on the union of all ranks' rows, with the loss
    normalised by the global token and row counts. Scoring, micro-batching and the objective are LocalLearner's.

    Needs an initialised default process group (:func:`sdar.learner.dist.init_from_env`). The model may be on the
    CPU or already on this rank's device; it is moved to ``device`` and sharded in place.

    Args:
        model, reference_model, lr, weight_decay, betas, grad_clip, warmup_steps, total_steps, ppo_epochs,
            micro_batch_tokens, layout, logprob_chunk, temperature, gradient_checkpointing, autocast_dtype, seed:
            As :class:`~sdar.learner.LocalLearner`. The reference model is sharded too (no gradients).
        mini_batch_rows: Rows of THIS rank per optimizer step (None = the whole shard in one step). Ranks with
            fewer mini-batches than another rank take part in the extra optimizer steps with filler passes.
        param_dtype: FSDP mixed precision: parameters are gathered in this dtype for compute (e.g.
            ``torch.bfloat16``) while the sharded master copy and the gradient reduction stay in fp32. None = the
            model's own dtype.
        reshard_after_forward: Free each decoder layer's gathered parameters after its forward (gather again in
            backward): less memory, more communication.
        defer_grad_sync: Accumulate unsharded gradients over the micro-batches of an optimizer batch and
            reduce-scatter once at the end: less communication, but every rank holds a full-size gradient. False
            (default) reduce-scatters after every micro-batch and keeps only gradient shards.
        device: Where this rank computes; None = ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        reference_model: nn.Module | None = None,
        lr: float = 1e-6,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        grad_clip: float | None = 1.0,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        ppo_epochs: int = 1,
        mini_batch_rows: int | None = None,
        micro_batch_tokens: int = 4096,
        layout: Layout = "packed",
        logprob_chunk: int = 1024,
        temperature: float = 1.0,
        gradient_checkpointing: bool = False,
        autocast_dtype: torch.dtype | None = None,
        seed: int = 0,
        param_dtype: torch.dtype | None = None,
        rollback_nonfinite: bool = True,
        reshard_after_forward: bool = True,
        defer_grad_sync: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if not dist_util.is_initialized():
            raise RuntimeError(
                "FSDPLearner needs a torch.distributed process group: launch with torchrun and call "
                "sdar.learner.dist.init_from_env() first, or use LocalLearner in a single process"
            )
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.defer_grad_sync = defer_grad_sync
        self._device = torch.device(device) if device is not None else dist_util.local_device()
        mesh = init_device_mesh(self._device.type, (self.world_size,))
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
        if gradient_checkpointing:  # wrap the layers' forward before FSDP hooks onto them
            _enable_activation_checkpointing(model)
        self._root = _shard(model.to(self._device), mesh, reshard_after_forward=reshard_after_forward, policy=policy)
        self._ref_root: _Root | None = None
        if reference_model is not None:
            reference_model.to(self._device).eval().requires_grad_(False)
            self._ref_root = _shard(reference_model, mesh, reshard_after_forward=reshard_after_forward, policy=policy)
        super().__init__(
            model,
            reference_model=reference_model,
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            grad_clip=grad_clip,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            ppo_epochs=ppo_epochs,
            mini_batch_rows=mini_batch_rows,
            micro_batch_tokens=micro_batch_tokens,
            layout=layout,
            logprob_chunk=logprob_chunk,
            temperature=temperature,
            gradient_checkpointing=False,
            autocast_dtype=autocast_dtype,
            seed=seed,
            rollback_nonfinite=rollback_nonfinite,
        )
        self._filler = make_micro_batches([_FILLER_ROW], max_tokens=micro_batch_tokens, layout=layout)[0]
        zeros = torch.zeros(1, 1)  # [1, 1]
        index = torch.zeros(1, dtype=torch.long)
        self._filler_batch = TokenBatch(
            prompts=(_FILLER_ROW[0],),
            responses=(_FILLER_ROW[1],),
            loss_mask=torch.zeros(1, 1, dtype=torch.bool),  # nothing counts: zero loss, zero gradient
            old_logprobs=zeros,
            advantages=zeros,
            group_ids=index,
            episode_ids=index,
            turn_ids=index,
        )

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def policy_module(self) -> nn.Module:
        """The sharded policy. Its parameters are DTensor shards: calling it outside this learner fails, so a
        generator needs its own copy, refreshed from :meth:`export_weights` after each training step."""
        return self.model

    # -------------------------------------------------------------------------------------------------- scoring
    def _score(
        self, parts: tuple[nn.Module, nn.Module], mb: PackedMicroBatch, *, with_entropy: bool
    ) -> tuple[Tensor, Tensor | None]:
        """LocalLearner's scoring, run inside the root FSDP unit of the policy or the reference."""
        root = self._root if parts[0] is self._body else self._ref_root
        assert root is not None
        return root(functools.partial(super()._score, parts, mb, with_entropy=with_entropy))

    def _global_max(self, **values: float) -> dict[str, float]:
        out = dist_util.all_reduce_tensors({k: torch.tensor(float(v)) for k, v in values.items()}, "max")
        return {k: float(v) for k, v in out.items()}

    @torch.no_grad()
    def _score_many(
        self, batches: Sequence[TokenBatch], *, model: ModelRole, with_entropy: bool
    ) -> list[tuple[Tensor, Tensor | None]]:
        """LocalLearner's scoring of this rank's rows, plus filler passes up to the busiest rank's micro-batches."""
        parts = self._parts(model)
        rows = [(p, r) for b in batches for p, r in zip(b.prompts, b.responses)]
        mine = len(make_micro_batches(rows, max_tokens=self.micro_batch_tokens, layout=self.layout))
        most = int(self._global_max(micro_batches=mine)["micro_batches"])
        out = super()._score_many(batches, model=model, with_entropy=with_entropy)
        root = self._root if model == "policy" else self._ref_root
        assert root is not None
        with _mode(root, False):
            for _ in range(most - mine):
                self._score(parts, self._filler, with_entropy=with_entropy)
        if most:
            _as_fsdp(root).reshard()  # the root unit stays gathered after a forward until told otherwise
        return out

    # ------------------------------------------------------------------------------------------------- training
    def _agree_on_inputs(
        self,
        batch: TokenBatch,
        spec: LossSpec,
        ref_logprobs: Tensor | None,
        teacher_logprobs: Tensor | None,
        is_weights: Tensor | None = None,
    ) -> None:
        """Validate the inputs on every rank; raise everywhere if any rank's inputs are wrong (never hang)."""
        error: ValueError | None = None
        try:
            if batch.size:
                self._check_train_inputs(batch, spec, ref_logprobs, teacher_logprobs, is_weights)
            else:  # an empty shard: check the spec-level requirements on the filler row instead
                filler = self._filler_batch.old_logprobs
                self._check_train_inputs(
                    self._filler_batch,
                    spec,
                    None if ref_logprobs is None else filler,
                    None if teacher_logprobs is None else filler,
                )
        except ValueError as exc:
            error = exc
        dist_util.raise_if_any_rank_failed(error)

    def accumulate_gradients(
        self,
        batch: TokenBatch,
        *,
        spec: LossSpec,
        ref_logprobs: Tensor | None = None,
        teacher_logprobs: Tensor | None = None,
        norm: float | None = None,
        is_weights: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], int, list[PackedMicroBatch]]:
        """Forward/backward this rank's rows as its part of ONE optimizer batch made of every rank's rows.

        Counts are all-reduced first (``global_tokens``, ``global_seqs``; ``norm`` and the micro-batch count take
        the maximum over ranks) and every loss is aggregated with them and ``dp_size = world_size``. FSDP averages
        the gradients over ranks (after every micro-batch, or once with ``defer_grad_sync``), so the sharded
        ``.grad`` ends up holding the global-batch gradient. An empty ``batch`` is allowed (the rank only runs
        filler passes).

        Returns:
            ``(metric sums of this rank, input tokens of this rank, this rank's micro-batches)``; pass the sums to
            :meth:`reduce_metrics` for the global values.
        """
        self._agree_on_inputs(batch, spec, ref_logprobs, teacher_logprobs, is_weights)
        rows = list(zip(batch.prompts, batch.responses))
        micro = make_micro_batches(rows, max_tokens=self.micro_batch_tokens, layout=self.layout)
        totals = dist_util.all_reduce_tensors(
            {"tokens": batch.loss_mask.sum(), "seqs": batch.loss_mask.any(-1).sum()}, "sum"
        )
        most = self._global_max(micro_batches=len(micro), norm=batch.response_len if norm is None else norm)
        counts = {
            "global_tokens": int(totals["tokens"]),
            "global_seqs": int(totals["seqs"]),
            "dp_size": self.world_size,
            "norm": most["norm"],
        }
        with_entropy = spec.entropy_coef > 0 or (spec.uses_aux and spec.gate in ("entropy", "soft_or"))
        filler_lp = self._filler_batch.old_logprobs
        filler_ref = None if ref_logprobs is None else filler_lp
        filler_teacher = None if teacher_logprobs is None else filler_lp
        filler_is = None if is_weights is None else torch.ones_like(filler_lp)  # same metric keys on every rank
        passes = int(most["micro_batches"])
        sums: dict[str, Tensor] = {}
        root = _as_fsdp(self._root)
        try:
            with _mode(self.model, True):
                for k in range(passes):
                    if self.defer_grad_sync:
                        root.set_requires_gradient_sync(k == passes - 1)
                    if k < len(micro):
                        self._micro_backward(
                            micro[k], batch, spec, ref_logprobs, teacher_logprobs, counts, with_entropy, sums,
                            is_weights=is_weights,
                        )
                    else:
                        self._micro_backward(
                            self._filler, self._filler_batch, spec, filler_ref, filler_teacher, counts,
                            with_entropy, sums, is_weights=filler_is,
                        )
        finally:
            root.set_requires_gradient_sync(True)
        return sums, sum(mb.num_tokens for mb in micro), micro

    def reduce_metrics(self, sums: Mapping[str, Tensor]) -> dict[str, float]:
        """Global objective metrics from every rank's :meth:`accumulate_gradients` sums (collective).

        Aggregated losses (``loss/...``, ``*_loss``, ...) were scaled by ``dp_size`` on each rank, so their sum over
        ranks is divided by the world size; token-mean metrics were already weighted by each rank's share of the
        global tokens, so they are summed.
        """
        reduced = dist_util.all_reduce_tensors(sums, "sum")
        return {k: float(v) / (self.world_size if _is_additive(k) else 1) for k, v in reduced.items()}

    def _optimizer_step(self, metrics: dict[str, Tensor], lr: float) -> dict[str, float]:
        """Reduce the metrics, clip by the global gradient norm, then step (or skip) identically on every rank."""
        out = self.reduce_metrics(metrics)
        max_norm = self.grad_clip if self.grad_clip is not None and self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        out["train/grad_norm"] = norm = float(grad_norm)
        loss = out.get("loss/total", 0.0)
        if math.isfinite(loss) and math.isfinite(norm):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._step_or_roll_back(out)  # every rank rolls back together: _weights_finite is global here
        else:
            self.skipped_steps += 1
            out["train/skipped"] = 1.0
            logger.warning("non-finite loss %.4g or grad norm %.4g: optimizer step skipped", loss, norm)
        self.optimizer.zero_grad(set_to_none=True)
        return out

    @torch.no_grad()
    def _weights_finite(self) -> bool:
        """Every trainable weight shard is finite on every rank (one all-reduce)."""
        local = all(bool(torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()) for p in self.params)
        flag = torch.tensor(1.0 if local else 0.0, device=self._device)
        return float(dist_util.all_reduce_tensors({"finite": flag}, "min")["finite"]) > 0.5

    def _mini_batches(self, n: int) -> list[list[int]]:
        """This rank's shuffled mini-batches, padded with empty ones up to the busiest rank's count."""
        mine = super()._mini_batches(n)
        most = int(self._global_max(mini_batches=len(mine))["mini_batches"])
        return mine + [[] for _ in range(most - len(mine))]

    def train_step(
        self,
        batch: TokenBatch,
        *,
        spec: LossSpec,
        ref_logprobs: Tensor | None = None,
        teacher_logprobs: Tensor | None = None,
        is_weights: Tensor | None = None,
    ) -> dict[str, float]:
        """LocalLearner's update on the union of every rank's rows (collective; each rank passes its own rows).

        Every rank needs at least one row. Returns the same metrics on every rank: objective metrics and
        ``train/grad_norm`` for the global batch; ``train/tokens``, ``train/tokens_per_s`` and
        ``train/micro_batches`` summed over ranks (filler passes not counted); ``train/padding_ratio`` averaged.
        """
        error: ValueError | None = None
        try:
            if batch.size == 0:
                raise ValueError(
                    f"rank {self.rank} got no training rows; give every rank at least one row "
                    "(sdar.learner.dist.shard_indices(n) with n >= world size)"
                )
            self._check_train_inputs(batch, spec, ref_logprobs, teacher_logprobs, is_weights)
        except ValueError as exc:
            error = exc
        dist_util.raise_if_any_rank_failed(error)
        out = super().train_step(batch, spec=spec, ref_logprobs=ref_logprobs, teacher_logprobs=teacher_logprobs,
                                 is_weights=is_weights)
        keys = ("train/tokens", "train/tokens_per_s", "train/micro_batches", "train/padding_ratio")
        summed = dist_util.all_reduce_tensors({k: torch.tensor(out[k]) for k in keys}, "sum")
        out.update({k: float(v) for k, v in summed.items()})
        out["train/padding_ratio"] /= self.world_size
        return out

    # -------------------------------------------------------------------------------------------------- state
    def _counters(self) -> dict[str, int]:
        return {
            "train_steps": self.train_steps,
            "optimizer_steps": self.optimizer_steps,
            "skipped_steps": self.skipped_steps,
        }

    def _set_counters(self, state: Mapping[str, Any]) -> None:
        self.train_steps = int(state["train_steps"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.skipped_steps = int(state["skipped_steps"])

    def _set_shuffle(self, states: Sequence[Tensor]) -> None:
        """This rank's shuffle RNG from one state per rank (rank 0's when the world size changed)."""
        self._shuffle.set_state(states[self.rank] if len(states) == self.world_size else states[0])

    def _gather_shuffle(self) -> list[Tensor]:
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, self._shuffle.get_state())
        return states

    def state_dict(self) -> dict[str, Any]:
        """Full (unsharded) state gathered on rank 0, on the CPU (collective).

        On rank 0: ``model`` (name -> tensor, tied weights under both names, as LocalLearner), ``optimizer`` (the
        full AdamW state keyed by parameter name), the counters, and ``shuffle_rng`` (one state per rank). On the
        other ranks ``model`` and ``optimizer`` are empty. Save it from rank 0 only.
        """
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {
            "model": get_model_state_dict(self.model, options=options),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=options),
            **self._counters(),
            "shuffle_rng": self._gather_shuffle(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (collective). Only rank 0's ``state`` is read; it is broadcast to the others."""
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        main = self.rank == 0
        set_model_state_dict(self.model, state["model"] if main else {}, options=options)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"] if main else {}, options=options)
        for param_state in self.optimizer.state.values():  # rank 0 took plain tensors (``step``) as given: own them
            for key, value in param_state.items():
                if isinstance(value, Tensor) and not isinstance(value, DTensor):
                    param_state[key] = value.clone()
        rest = dist_util.broadcast_object(
            {**{k: state[k] for k in self._counters()}, "shuffle_rng": state["shuffle_rng"]} if main else None
        )
        self._set_counters(rest)
        self._set_shuffle(rest["shuffle_rng"])

    def export_weights(self) -> Iterable[tuple[str, Tensor]]:
        """Full policy weights on EVERY rank, on the training device, by state-dict name (collective).

        For a generator holding its own unsharded copy, e.g. ``generator.load_weights(learner.export_weights())``.
        """
        options = StateDictOptions(full_state_dict=True)
        return list(get_model_state_dict(self.model, options=options).items())

    def save_sharded(self, path: str | os.PathLike[str]) -> Path:
        """Write a sharded checkpoint folder with ``torch.distributed.checkpoint`` (collective).

        Each rank writes its own shards of the model and optimizer state (the folder must be on storage every rank
        sees); rank 0 writes the metadata and :data:`SHARDED_STATE_FILE`. The folder is written under a hidden
        temporary name, flushed to disk, and put in place by rank 0 with :func:`sdar.atomic.replace_dir` (an
        existing folder of the same name is swapped out atomically), so a crash at any point leaves the previous
        folder or the new one, complete. Leftovers of an interrupted save beside ``path`` are removed first.

        Returns:
            The checkpoint folder.
        """
        final = Path(path)
        error: BaseException | None = None
        tmp_path = ""
        if self.rank == 0:
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                clean_leftovers(final.parent, writer=True)
                tmp_path = str(new_tmp_dir(final))
            except Exception as exc:  # noqa: BLE001 - raised on every rank just below
                error = exc
        dist_util.raise_if_any_rank_failed(error)
        tmp = Path(dist_util.broadcast_object(tmp_path))
        state = {
            "model": get_model_state_dict(self.model),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer),
        }
        dcp.save(state, checkpoint_id=tmp)
        shuffle = self._gather_shuffle()
        if self.rank == 0:
            try:
                torch.save({**self._counters(), "shuffle_rng": shuffle, "world_size": self.world_size},
                           tmp / SHARDED_STATE_FILE)
                replace_dir(tmp, final)
            except BaseException as exc:  # noqa: BLE001 - raised on every rank just below
                shutil.rmtree(tmp, ignore_errors=True)
                error = exc
        dist_util.raise_if_any_rank_failed(error)
        return final

    def load_sharded(self, path: str | os.PathLike[str]) -> None:
        """Resume from a folder written by :meth:`save_sharded` (collective; the world size may differ)."""
        folder = Path(path)
        clean_leftovers(folder.parent, writer=False)
        if not (folder / SHARDED_STATE_FILE).is_file():
            raise FileNotFoundError(
                f"{folder} is not a complete sharded checkpoint (no {SHARDED_STATE_FILE}); pass a folder written by "
                "FSDPLearner.save_sharded"
            )
        state = {
            "model": get_model_state_dict(self.model),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer),
        }
        dcp.load(state, checkpoint_id=folder)
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        extra = torch.load(folder / SHARDED_STATE_FILE, weights_only=True)
        self._set_counters(extra)
        self._set_shuffle(extra["shuffle_rng"])
