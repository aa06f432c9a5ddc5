"""The learner: memory-lean log-prob passes and PPO-style updates with micro-batch accumulation, on one process or
sharded over data-parallel ranks.

:class:`PolicyLearner` is the only learner class. Where the weights live (one process, or FSDP2 shards over ranks)
and how per-rank numbers become global ones is the job of the injected :class:`~sdar.learner.sharding.ShardingStrategy`
(:class:`~sdar.learner.sharding.NoSharding` by default; :func:`sdar.learner.fsdp.FSDPLearner` builds the learner with
the FSDP2 strategy). ``LocalLearner`` is the same class under the name single-process callers use.

Differences from verl's actor (``dp_actor.py``):
- Micro-batches are token-budgeted packs of rows (or padded length buckets), not a fixed number of rows.
- Log-probs come from the final hidden states and the LM-head weight in row chunks, so the ``[T, V]`` logits of a
  whole micro-batch never exist at once.
- The lr schedule advances once per :meth:`PolicyLearner.train_step` (as verl's scheduler does once per actor
  update), and warm-up step ``k`` (0-based) uses ``lr * (k + 1) / warmup_steps``, so the first update is not spent
  at lr 0 as in verl/transformers' ``k / warmup_steps``.
- A step whose loss or gradient norm is not finite is skipped (gradients dropped) instead of applied, and a step
  that leaves a weight non-finite is rolled back to the weights and AdamW state before it (``rollback_nonfinite``).
- The auxiliary full-vocabulary ``divergence`` term is not supported (it needs ``[N, A, V]`` teacher log-probs).

Under a distributed strategy every rank holds a shard of the training rows and every method is collective. Each
optimizer batch first reduces its trained-token and non-empty-row counts over ranks; every micro-batch loss is then
aggregated with those global counts times the world size, so the gradient averaged over ranks equals the gradient of
the whole batch's loss in one process. Sharded models gather parameters with collectives inside every forward pass,
so all ranks must run the same number of forward (and backward) passes: a rank whose shard needs fewer
micro-batches (or optimizer mini-batches) than another runs filler passes on a one-token row whose loss mask is all
False, which join the collectives and add exactly zero to gradients and metrics.

When the objective is the policy-gradient term alone (``LossSpec.zero_advantage_rows_inert``: no KL, entropy or
distillation term), rows whose advantages are all zero add exactly zero to the loss and its gradient, so they are left
out of the forward and backward passes; the aggregation still counts their tokens (the token-mean denominator is the
whole batch's), so the gradient is the same as with them. The objective's token-mean metrics are then means over the
trained rows' tokens.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from sdar.algo.logprobs import hidden_token_logprobs
from sdar.algo.methods import LossSpec
from sdar.algo.objective import policy_objective
from sdar.batch import TokenBatch
from sdar.learner.base import ModelRole, ShardedCheckpoints
from sdar.learner.modules import has_dropout, module_mode, split_model
from sdar.learner.packing import Layout, PackedMicroBatch, make_micro_batches, padding_ratio
from sdar.learner.sharding import NoSharding, ShardingStrategy, is_additive

__all__ = ["LocalLearner", "PolicyLearner", "live_rows", "lr_at"]

logger = logging.getLogger(__name__)

_FILLER_ROW = ((0,), (0,))  # one prompt token, one response token: the cheapest pass through the whole model
_COUNTERS = ("train_steps", "optimizer_steps", "skipped_steps")


def live_rows(batch: TokenBatch, spec: LossSpec) -> list[int]:
    """Indices of the rows of ``batch`` that can change the loss of ``spec``: every row, unless
    ``spec.zero_advantage_rows_inert``, then the rows with a nonzero advantage on a trained token."""
    if not spec.zero_advantage_rows_inert:
        return list(range(batch.size))
    signal = ((batch.advantages != 0) & batch.loss_mask).any(-1)  # [N]
    return torch.nonzero(signal).flatten().tolist()


def _kernel_mask(mask: Tensor | None, attn_implementation: str, device: torch.device) -> Tensor | None:
    """A micro-batch's ``[B, 1, L, L]`` boolean mask as the attention kernel takes it: sdpa reads True as "may
    attend"; other kernels (eager) add the mask to the scores, so they get 0 where allowed and a large negative
    number elsewhere."""
    if mask is None:
        return None
    mask = mask.to(device)
    if attn_implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape, device=device).masked_fill_(~mask, torch.finfo(torch.float32).min)


def lr_at(step: int, *, base_lr: float, warmup_steps: int = 0, total_steps: int | None = None) -> float:
    """Learning rate of the 0-based training step ``step``.

    Linear warm-up ``base_lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps; then constant when
    ``total_steps`` is None, else cosine decay from ``base_lr`` (end of warm-up) to 0 (at ``total_steps``).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps is None:
        return base_lr
    progress = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class PolicyLearner:
    """Owns the policy (and optional frozen reference); implements :class:`sdar.learner.Learner` and, when the
    strategy shards the state, :class:`sdar.learner.ShardedCheckpoints`.

    With a distributed ``sharding`` every method is collective: all ranks call it in the same order, each with its
    own rows. ``logprobs`` and ``logprobs_many`` score this rank's rows; ``train_step`` trains on the union of all
    ranks' rows.

    Args:
        model: A transformers causal LM (the policy); trained in place (and sharded in place by a sharding strategy).
        reference_model: Frozen model for the KL term; needed only when ``spec.kl_coef > 0``.
        lr, weight_decay, betas: AdamW settings (weight decay on every parameter, as verl).
        grad_clip: Max global gradient norm (``None`` or ``<= 0`` = no clipping, norm still reported).
        warmup_steps: Training steps of linear lr warm-up (see :func:`lr_at`).
        total_steps: None = constant lr after warm-up; else cosine decay to 0 at this training step.
        ppo_epochs: Passes over each training batch.
        mini_batch_rows: Rows (of this rank) per optimizer step (None = the whole batch in one optimizer step).
        micro_batch_tokens: Token budget of one forward/backward pass.
        layout: ``"packed"`` (rows concatenated, no padding) or ``"bucketed"`` (padded length buckets).
        logprob_chunk: Rows of the LM head computed at a time.
        temperature: Rollout sampling temperature; logits are divided by it before the softmax.
        gradient_checkpointing: Recompute decoder activations in the backward pass.
        autocast_dtype: e.g. ``torch.bfloat16`` to run forward passes under autocast; None = the model's dtype.
        seed: Seed of the mini-batch shuffling generator.
        rollback_nonfinite: Copy the trainable weights and the optimizer state before each optimizer step and
            restore them when the step leaves a weight NaN or infinite (the step then counts as skipped). Costs
            about three times the trainable parameters in memory during the step.
        sharding: Placement and collectives (None = :class:`~sdar.learner.sharding.NoSharding`, one process).
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
        rollback_nonfinite: bool = True,
        sharding: ShardingStrategy | None = None,
    ) -> None:
        if ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be >= 1, got {ppo_epochs}")
        if mini_batch_rows is not None and mini_batch_rows < 1:
            raise ValueError(f"mini_batch_rows must be >= 1 or None, got {mini_batch_rows}")
        if micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens must be >= 1, got {micro_batch_tokens}")
        if layout not in ("packed", "bucketed"):
            raise ValueError(f"layout must be 'packed' or 'bucketed', got {layout!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.sharding: ShardingStrategy = sharding if sharding is not None else NoSharding()
        self.model = model
        self.reference_model = reference_model
        # the parts stay the same module objects when the strategy moves or shards the models in place
        self._parts_of: dict[ModelRole, tuple[nn.Module, nn.Module]] = {"policy": split_model(model)}
        if reference_model is not None:
            self._parts_of["reference"] = split_model(reference_model)
        self.sharding.prepare(model, reference_model, gradient_checkpointing=gradient_checkpointing)
        self.base_lr, self.grad_clip = lr, grad_clip
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.ppo_epochs, self.mini_batch_rows = ppo_epochs, mini_batch_rows
        self.micro_batch_tokens, self.layout = micro_batch_tokens, layout
        self.attn_implementation = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "sdpa")
        self.share_prompts = layout == "bucketed" and self.attn_implementation in ("sdpa", "eager")
        """Rows with the same prompt feed it once (``bucket_rows(share_prompts=True)``): bucketed layout and a kernel
        that takes a ``[B, 1, L, L]`` mask (sdpa, eager). Exact: only the summation order changes."""
        self.logprob_chunk, self.temperature = logprob_chunk, temperature
        self.autocast_dtype = autocast_dtype
        self.rollback_nonfinite = rollback_nonfinite
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the policy model has no trainable parameters (requires_grad is False everywhere)")
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.train_steps = 0
        """Completed :meth:`train_step` calls (drives the lr schedule)."""
        self.optimizer_steps = 0
        self.skipped_steps = 0
        self._shuffle = torch.Generator().manual_seed(seed)
        if has_dropout(model):
            logger.warning("the policy has dropout > 0: training log-probs will not match the no-grad old log-probs")

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def policy_module(self) -> nn.Module:
        """The policy model. Under a sharding strategy its parameters are shards: calling it outside this learner
        fails, so a generator needs its own copy, refreshed from :meth:`export_weights` after each training step."""
        return self.model

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def rank(self) -> int:
        return self.sharding.rank

    @property
    def world_size(self) -> int:
        return self.sharding.world_size

    @property
    def sharded_checkpoints(self) -> ShardedCheckpoints | None:
        """This learner when the strategy shards its state (checkpoint with :meth:`save_sharded`), else None."""
        return self if self.sharding.distributed else None

    # -------------------------------------------------------------------------------------------------- scoring
    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _parts(self, model: ModelRole) -> tuple[nn.Module, nn.Module]:
        if model not in ("policy", "reference"):
            raise ValueError(f"model must be 'policy' or 'reference', got {model!r}")
        if model not in self._parts_of:
            raise ValueError("no reference model: build the learner with reference_model=... to score with it")
        return self._parts_of[model]

    def _score(self, model: ModelRole, mb: PackedMicroBatch, *, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        """Log-probs ``[R]`` (and entropies) of one micro-batch's response tokens; grad follows the caller's mode."""
        return self.sharding.forward(model, functools.partial(self._score_here, model, mb, with_entropy=with_entropy))

    def _score_here(
        self, model: ModelRole, mb: PackedMicroBatch, *, with_entropy: bool
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`_score` once the strategy made the weights usable in this process."""
        body, head = self._parts(model)
        device = head.weight.device
        with self._autocast(device):
            out = body(
                input_ids=mb.input_ids.to(device),
                position_ids=mb.position_ids.to(device),
                attention_mask=_kernel_mask(mb.attention_mask, self.attn_implementation, device),
                use_cache=False,  # a cache object would switch off transformers' packed-row isolation
            )
            hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state  # [B, L, H]
            picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, mb.pred_index.to(device))  # [R, H]
            return hidden_token_logprobs(
                picked,
                head.weight,
                mb.targets.to(device),
                bias=head.bias,
                temperature=self.temperature,
                chunk_size=self.logprob_chunk,
                with_entropy=with_entropy,
            )

    def _most(self, **counts: float) -> dict[str, float]:
        """The largest value of each count over ranks (how many passes every rank must run)."""
        return self.sharding.reduce_floats(counts, "max")

    @torch.no_grad()
    def _score_many(
        self, batches: Sequence[TokenBatch], *, model: ModelRole, with_entropy: bool
    ) -> list[tuple[Tensor, Tensor | None]]:
        """Score this rank's rows of every batch in one set of micro-batches (plus filler passes up to the busiest
        rank's count) and cut the result back into one ``(logprobs, entropy)`` pair per batch."""
        device = self._parts(model)[1].weight.device
        rows = [(p, r) for b in batches for p, r in zip(b.prompts, b.responses)]
        micro = make_micro_batches(rows, max_tokens=self.micro_batch_tokens, layout=self.layout,
                                   share_prompts=self.share_prompts)
        passes = int(self._most(micro_batches=len(micro))["micro_batches"])
        width = max((b.response_len for b in batches), default=0)
        lp = torch.zeros(len(rows), width, device=device)  # [sum N, A_max]
        ent = torch.zeros(len(rows), width, device=device) if with_entropy else None
        module = self.model if model == "policy" else self.reference_model
        assert module is not None
        with module_mode(module, False):
            for mb in micro:
                mb_lp, mb_ent = self._score(model, mb, with_entropy=with_entropy)
                where = (mb.dest_row.to(device), mb.dest_col.to(device))
                lp[where] = mb_lp.float()
                if ent is not None and mb_ent is not None:
                    ent[where] = mb_ent.float()
            for _ in range(passes - len(micro)):
                self._score(model, self._filler[0], with_entropy=with_entropy)
        if passes:
            self.sharding.release(model)
        out, start = [], 0
        for b in batches:
            stop = start + b.size
            dest = b.loss_mask.device
            out.append(
                (
                    lp[start:stop, : b.response_len].to(dest),
                    None if ent is None else ent[start:stop, : b.response_len].to(dest),
                )
            )
            start = stop
        return out

    def logprobs(
        self, batch: TokenBatch, *, model: ModelRole = "policy", with_entropy: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced ``(logprobs [N, A], entropy [N, A] or None)`` of the response tokens, without gradient.

        Response token ``j`` is scored from the position before it (the last prompt token for ``j = 0``), with the
        logits divided by ``temperature``. Padding positions hold 0. Returned on the batch's device, fp32.
        """
        return self._score_many([batch], model=model, with_entropy=with_entropy)[0]

    def logprobs_many(self, batches: Sequence[TokenBatch], *, model: ModelRole = "policy") -> list[Tensor]:
        """Log-probs of several batches (e.g. student and teacher views) packed into one shared set of micro-batches.

        Returns:
            One ``[N_i, A_i]`` tensor per batch, equal to ``logprobs(batches[i])[0]``.
        """
        return [lp for lp, _ in self._score_many(batches, model=model, with_entropy=False)]

    # ------------------------------------------------------------------------------------------------- training
    @functools.cached_property
    def _filler(self) -> tuple[PackedMicroBatch, TokenBatch]:
        """A one-token micro-batch and its batch with nothing trained: passes that only join the collectives."""
        mb = make_micro_batches([_FILLER_ROW], max_tokens=self.micro_batch_tokens, layout=self.layout)[0]
        zeros = torch.zeros(1, 1)  # [1, 1]
        index = torch.zeros(1, dtype=torch.long)
        batch = TokenBatch(
            prompts=(_FILLER_ROW[0],),
            responses=(_FILLER_ROW[1],),
            loss_mask=torch.zeros(1, 1, dtype=torch.bool),  # nothing counts: zero loss, zero gradient
            old_logprobs=zeros,
            advantages=zeros,
            group_ids=index,
            episode_ids=index,
            turn_ids=index,
        )
        return mb, batch

    def _check_train_inputs(
        self,
        batch: TokenBatch,
        spec: LossSpec,
        ref_logprobs: Tensor | None,
        teacher_logprobs: Tensor | None,
        is_weights: Tensor | None = None,
    ) -> None:
        if batch.size == 0:
            raise ValueError("train_step got an empty batch")
        if spec.uses_aux and spec.aux == "divergence":
            raise ValueError(
                "the learner does not support aux='divergence' (it needs [N, A, V] teacher log-probs); "
                "use aux='sdar' or aux='skill_sd'"
            )
        shape = tuple(batch.loss_mask.shape)
        for name, value, needed in (
            ("ref_logprobs", ref_logprobs, spec.needs_reference),
            ("teacher_logprobs", teacher_logprobs, spec.needs_teacher),
            ("is_weights", is_weights, False),
        ):
            if value is None and needed:
                raise ValueError(f"spec needs {name} ({shape} log-probs of the response tokens) but got None")
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {shape} like batch.loss_mask")

    def _agree_on_inputs(
        self,
        batch: TokenBatch,
        spec: LossSpec,
        ref_logprobs: Tensor | None,
        teacher_logprobs: Tensor | None,
        is_weights: Tensor | None = None,
    ) -> None:
        """Validate the inputs; raise on every rank if any rank's inputs are wrong (never hang in a collective).

        A distributed rank may hold an empty shard of an optimizer batch: the spec-level requirements are then
        checked on the filler row instead.
        """
        error: ValueError | None = None
        try:
            if batch.size or not self.sharding.distributed:
                self._check_train_inputs(batch, spec, ref_logprobs, teacher_logprobs, is_weights)
            else:
                filler = self._filler[1]
                self._check_train_inputs(
                    filler,
                    spec,
                    None if ref_logprobs is None else filler.old_logprobs,
                    None if teacher_logprobs is None else filler.old_logprobs,
                )
        except ValueError as exc:
            error = exc
        self.sharding.raise_together(error)

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
        """Forward/backward every micro-batch of ``batch`` as (this rank's part of) ONE optimizer batch; gradients
        add up in ``.grad``.

        Each micro-batch's loss is aggregated with the whole optimizer batch's counts, reduced over ranks
        (``global_tokens`` = trained tokens, ``global_seqs`` = rows with at least one; ``norm`` and the number of
        passes take the maximum), and ``dp_size`` = the world size, so the summed gradient (averaged over ranks by
        the strategy) equals that of the whole-batch loss. No optimizer step, no zeroing: :meth:`train_step` builds
        on this; tests call it to inspect gradients.

        Returns:
            ``(metric sums of this rank, input tokens of this rank, this rank's micro-batches)``; the sums are
            detached scalar tensors (no device sync); :meth:`reduce_metrics` gives the global values.
        """
        self._agree_on_inputs(batch, spec, ref_logprobs, teacher_logprobs, is_weights)
        norm = float(batch.response_len) if norm is None else norm
        whole_tokens, whole_seqs = batch.loss_mask.sum(), batch.loss_mask.any(-1).sum()
        live = live_rows(batch, spec)
        if len(live) < batch.size:  # rows that cannot change the loss: not fed forward (see the module docstring)
            it = torch.as_tensor(live, dtype=torch.long)
            ref_logprobs, teacher_logprobs, is_weights = (
                None if t is None else t[it] for t in (ref_logprobs, teacher_logprobs, is_weights)
            )
            batch = batch.select(live)
        rows = list(zip(batch.prompts, batch.responses))
        micro = make_micro_batches(rows, max_tokens=self.micro_batch_tokens, layout=self.layout,
                                   share_prompts=self.share_prompts) if rows else []
        totals = self.sharding.reduce(
            {"tokens": whole_tokens, "seqs": whole_seqs, "live_tokens": batch.loss_mask.sum()}, "sum"
        )
        # at least one pass: a batch with no live row still gives every metric (as zeros) and zero gradients
        most = self._most(micro_batches=max(len(micro), 1), norm=norm)
        counts = {
            "global_tokens": int(totals["tokens"]),
            "global_seqs": int(totals["seqs"]),
            "dp_size": self.sharding.world_size,
            "norm": most["norm"],
        }
        with_entropy = spec.entropy_coef > 0 or (spec.uses_aux and spec.gate in ("entropy", "soft_or"))
        passes = int(most["micro_batches"])
        metric_tokens = int(totals["live_tokens"])
        sums: dict[str, Tensor] = {}
        try:
            with module_mode(self.model, True):  # activation checkpointing only runs in training mode
                for k in range(passes):
                    if self.sharding.defer_grad_sync:
                        self.sharding.set_gradient_sync(k == passes - 1)
                    if k < len(micro):
                        self._micro_backward(micro[k], batch, spec, ref_logprobs, teacher_logprobs, counts,
                                             with_entropy, sums, is_weights=is_weights, metric_tokens=metric_tokens)
                    else:
                        self._filler_backward(spec, ref_logprobs, teacher_logprobs, is_weights, counts,
                                              with_entropy, sums, metric_tokens)
        finally:
            self.sharding.set_gradient_sync(True)
        return sums, sum(mb.num_tokens for mb in micro), micro

    def _filler_backward(
        self,
        spec: LossSpec,
        ref_logprobs: Tensor | None,
        teacher_logprobs: Tensor | None,
        is_weights: Tensor | None,
        counts: dict[str, Any],
        with_entropy: bool,
        sums: dict[str, Tensor],
        metric_tokens: int,
    ) -> None:
        """A pass that trains nothing, with the same optional inputs (hence metric keys) as the real rows."""
        mb, batch = self._filler
        filler_lp = batch.old_logprobs
        self._micro_backward(
            mb, batch, spec,
            None if ref_logprobs is None else filler_lp,
            None if teacher_logprobs is None else filler_lp,
            counts, with_entropy, sums,
            is_weights=None if is_weights is None else torch.ones_like(filler_lp),
            metric_tokens=metric_tokens,
        )

    def _micro_backward(
        self,
        mb: PackedMicroBatch,
        batch: TokenBatch,
        spec: LossSpec,
        ref_logprobs: Tensor | None,
        teacher_logprobs: Tensor | None,
        counts: dict[str, Any],
        with_entropy: bool,
        sums: dict[str, Tensor],
        *,
        is_weights: Tensor | None,
        metric_tokens: int,
    ) -> None:
        """One micro-batch: forward, objective with the optimizer batch's counts, backward, metrics into ``sums``
        (token means weighted by this micro-batch's share of ``metric_tokens``, the trained rows' tokens)."""
        device = self.device
        lp, ent = self._score("policy", mb, with_entropy=with_entropy)  # [R]
        idx = torch.as_tensor(mb.row_ids, dtype=torch.long)
        width = int(mb.dest_col.max()) + 1  # this micro-batch's longest response
        where = (mb.local_row.to(device), mb.dest_col.to(device))

        def to_rows(values: Tensor) -> Tensor:  # [R] -> [n, a]
            return torch.zeros(len(idx), width, device=device, dtype=values.dtype).index_put(where, values)

        def take(t: Tensor | None) -> Tensor | None:  # [N, A] -> [n, a]
            return None if t is None else t[idx, :width].to(device)

        mask = batch.loss_mask[idx, :width].to(device)  # [n, a]
        out = policy_objective(
            spec,
            logprobs=to_rows(lp),
            old_logprobs=batch.old_logprobs[idx, :width].to(device),
            advantages=batch.advantages[idx, :width].to(device),
            mask=mask,
            ref_logprobs=take(ref_logprobs),
            teacher_logprobs=take(teacher_logprobs),
            entropy=None if ent is None else to_rows(ent),
            is_weights=take(is_weights),
            **counts,
        )
        out.loss.backward()
        share = mask.sum() / max(metric_tokens, 1)
        for key, value in out.metrics.items():
            value = value.detach().float()
            contribution = value if is_additive(key) else value * share
            sums[key] = sums[key] + contribution if key in sums else contribution

    def reduce_metrics(self, sums: Mapping[str, Tensor]) -> dict[str, float]:
        """Global objective metrics from every rank's :meth:`accumulate_gradients` sums (collective when
        distributed: aggregated losses were scaled by the world size on each rank, token means were weighted by
        each rank's share of the global tokens)."""
        return self.sharding.reduce_metrics(sums)

    def _optimizer_step(self, sums: dict[str, Tensor], lr: float) -> dict[str, float]:
        """Clip by the global gradient norm, reduce the metrics, then step (or skip) identically on every rank."""
        max_norm = self.grad_clip if self.grad_clip is not None and self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        out = self.sharding.reduce_metrics(sums, grad_norm=grad_norm)
        norm, loss = out["train/grad_norm"], out.get("loss/total", 0.0)
        if math.isfinite(loss) and math.isfinite(norm):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._step_or_roll_back(out)
        else:
            self.skipped_steps += 1
            out["train/skipped"] = 1.0
            logger.warning("non-finite loss %.4g or grad norm %.4g: optimizer step skipped", loss, norm)
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def _step_or_roll_back(self, out: dict[str, float]) -> None:
        """Step the optimizer; with ``rollback_nonfinite``, undo a step that left a weight non-finite on any rank
        (every rank rolls back together)."""
        before = self._snapshot() if self.rollback_nonfinite else None
        self.optimizer.step()
        if before is not None and not self.sharding.all_finite(self.params):
            self._restore(before)
            self.skipped_steps += 1
            out["train/skipped"] = 1.0
            logger.warning("the optimizer step left a weight NaN or infinite: rolled back to the weights and "
                           "optimizer state before it (lower optim.lr?)")
        else:
            self.optimizer_steps += 1
            out["train/skipped"] = 0.0

    @torch.no_grad()
    def _snapshot(self) -> tuple[list[Tensor], dict[int, dict[str, Any]]]:
        """Copies of the trainable weights and of their optimizer state (keyed by position in ``self.params``)."""
        weights = [p.detach().clone() for p in self.params]
        state = {i: {k: v.clone() if isinstance(v, Tensor) else v for k, v in self.optimizer.state[p].items()}
                 for i, p in enumerate(self.params) if p in self.optimizer.state}
        return weights, state

    @torch.no_grad()
    def _restore(self, snapshot: tuple[list[Tensor], dict[int, dict[str, Any]]]) -> None:
        """Put back what :meth:`_snapshot` copied (weights in place: the model and generator keep their tensors)."""
        weights, state = snapshot
        for i, (p, saved) in enumerate(zip(self.params, weights)):
            p.copy_(saved)
            if i in state:
                self.optimizer.state[p] = state[i]
            else:
                self.optimizer.state.pop(p, None)

    def _mini_batches(self, n: int) -> list[list[int]]:
        """Shuffled row indices cut into optimizer mini-batches (one list per epoch per mini-batch), padded with
        empty ones up to the busiest rank's count."""
        size = self.mini_batch_rows or n
        out = []
        for _ in range(self.ppo_epochs):
            order = torch.randperm(n, generator=self._shuffle).tolist()
            out.extend(order[s : s + size] for s in range(0, n, size))
        most = int(self._most(mini_batches=len(out))["mini_batches"])
        return out + [[] for _ in range(most - len(out))]

    def train_step(
        self,
        batch: TokenBatch,
        *,
        spec: LossSpec,
        ref_logprobs: Tensor | None = None,
        teacher_logprobs: Tensor | None = None,
        is_weights: Tensor | None = None,
    ) -> dict[str, float]:
        """``ppo_epochs`` passes of shuffled mini-batches over ``batch``, one AdamW step per mini-batch.

        Args:
            batch: Training rows (``old_logprobs``, ``advantages``, ``loss_mask`` filled in); when distributed,
                this rank's rows (every rank needs at least one).
            spec: The objective; ``spec.needs_reference`` / ``spec.needs_teacher`` say which extra inputs are needed.
                ``spec.rlsd_lambda`` is used as given (the caller applies any schedule to it).
            ref_logprobs: ``[N, A]`` reference log-probs (ignored when ``spec.kl_coef == 0``).
            teacher_logprobs: ``[N, A]`` teacher log-probs.
            is_weights: ``[N, A]`` importance weights multiplying the PG term per token (e.g. the rollout/trainer
                mismatch correction of :func:`sdar.algo.correction.mismatch_weights`); None = 1.

        Returns:
            Objective metrics (``pg/...``, ``kl/...``, ``sdar/...``, ``loss/total``) of the global batch averaged
            over the applied optimizer steps, plus ``train/loss``, ``train/grad_norm``, ``train/lr``,
            ``train/tokens`` (tokens fed forward, all epochs), ``train/tokens_per_s``, ``train/optimizer_steps``,
            ``train/skipped_steps``, ``train/micro_batches``, ``train/padding_ratio`` and ``train/inert_rows``
            (rows not fed forward because they cannot change the loss, all epochs). When distributed, the
            same on every rank: tokens, throughput and micro-batches summed over ranks (filler passes not
            counted), the padding ratio averaged.
        """
        error: ValueError | None = None
        try:
            if batch.size == 0 and self.sharding.distributed:
                raise ValueError(
                    f"rank {self.sharding.rank} got no training rows; give every rank at least one row "
                    "(sdar.learner.dist.shard_indices(n) with n >= world size)"
                )
            self._check_train_inputs(batch, spec, ref_logprobs, teacher_logprobs, is_weights)
        except ValueError as exc:
            error = exc
        self.sharding.raise_together(error)
        start = time.perf_counter()
        lr = lr_at(self.train_steps, base_lr=self.base_lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps)
        steps: list[dict[str, float]] = []
        tokens, micro_all, inert = 0, [], 0
        self.optimizer.zero_grad(set_to_none=True)
        for index in self._mini_batches(batch.size):
            it = torch.as_tensor(index, dtype=torch.long)
            sub = batch.select(index)
            a = sub.response_len
            sums, n_tokens, micro = self.accumulate_gradients(
                sub,
                spec=spec,
                ref_logprobs=None if ref_logprobs is None else ref_logprobs[it, :a],
                teacher_logprobs=None if teacher_logprobs is None else teacher_logprobs[it, :a],
                norm=float(batch.response_len),
                **({} if is_weights is None else {"is_weights": is_weights[it, :a]}),
            )
            steps.append(self._optimizer_step(sums, lr))
            inert += sub.size - len(live_rows(sub, spec))
            tokens += n_tokens
            micro_all.extend(micro)
        self.train_steps += 1
        applied = [s for s in steps if s["train/skipped"] == 0.0] or steps
        keys = {k for s in applied for k in s} - {"train/skipped"}
        out = {k: sum(s.get(k, 0.0) for s in applied) / len(applied) for k in sorted(keys)}
        elapsed = time.perf_counter() - start
        throughput = {
            "train/tokens": float(tokens),
            "train/tokens_per_s": tokens / max(elapsed, 1e-9),
            "train/micro_batches": float(len(micro_all)),
            "train/padding_ratio": padding_ratio(micro_all),
            "train/inert_rows": float(inert),
        }
        throughput = self.sharding.reduce_floats(throughput, "sum")
        throughput["train/padding_ratio"] /= self.sharding.world_size
        out.update(
            {
                "train/loss": out.get("loss/total", 0.0),
                "train/lr": lr,
                "train/tokens": throughput["train/tokens"],
                "train/tokens_per_s": throughput["train/tokens_per_s"],
                "train/optimizer_steps": float(len(steps)),
                "train/skipped_steps": float(sum(s["train/skipped"] for s in steps)),
                "train/micro_batches": throughput["train/micro_batches"],
                "train/padding_ratio": throughput["train/padding_ratio"],
                "train/inert_rows": throughput["train/inert_rows"],
            }
        )
        return out

    # -------------------------------------------------------------------------------------------------- state
    def _counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _COUNTERS}

    def _set_counters(self, state: Mapping[str, Any]) -> None:
        for name in _COUNTERS:
            setattr(self, name, int(state[name]))

    def state_dict(self) -> dict[str, Any]:
        """``model`` and ``optimizer`` (tied weights under both names), the counters and ``shuffle_rng``.

        One process: the live tensors. Distributed (collective): the full state gathered on rank 0 on the CPU
        (empty ``model`` and ``optimizer`` elsewhere; save from rank 0 only), the optimizer state keyed by parameter
        name, and one shuffle state per rank.
        """
        return {
            **self.sharding.full_state_dict(self.model, self.optimizer),
            **self._counters(),
            "shuffle_rng": self.sharding.rng_state(self._shuffle),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (collective when distributed: only rank 0's ``state`` is read)."""
        self.sharding.load_full_state_dict(self.model, self.optimizer, state)
        main = self.sharding.rank == 0
        rest = self.sharding.broadcast_object(
            {**{k: state[k] for k in _COUNTERS}, "shuffle_rng": state["shuffle_rng"]} if main else None
        )
        self._set_counters(rest)
        self.sharding.set_rng_state(self._shuffle, rest["shuffle_rng"])

    def export_weights(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` for every entry of the policy's state dict, detached, on the training device, on every
        rank, one full tensor at a time and cast to ``dtype`` when given (collective when distributed: iterate to
        the end on every rank).

        A LoRA policy exports the base model's names with the adapters merged in, which is what a generator holding
        a plain copy of the model needs (see :func:`sdar.learner.lora.merged_state_dict`).
        """
        return self.sharding.export_weights(self.model, dtype)

    def save_sharded(self, path: str | os.PathLike[str]) -> Path:
        """Write a sharded checkpoint folder (collective; see :meth:`sdar.learner.fsdp.FSDP2Sharding.save_sharded`).

        Returns:
            The checkpoint folder.
        """
        extra = {**self._counters(), "shuffle_rng": self.sharding.rng_state(self._shuffle)}
        return self.sharding.save_sharded(path, self.model, self.optimizer, extra)

    def load_sharded(self, path: str | os.PathLike[str]) -> None:
        """Resume from a folder written by :meth:`save_sharded` (collective; the world size may differ)."""
        extra = self.sharding.load_sharded(path, self.model, self.optimizer)
        self._set_counters(extra)
        self.sharding.set_rng_state(self._shuffle, extra["shuffle_rng"])


LocalLearner = PolicyLearner
"""The learner under its single-process name (the default strategy is :class:`~sdar.learner.sharding.NoSharding`)."""
