"""Single-process learner: memory-lean log-prob passes and PPO-style updates with micro-batch accumulation.

Differences from verl's actor (``dp_actor.py``):
- Micro-batches are token-budgeted packs of rows (or padded length buckets), not a fixed number of rows.
- Log-probs come from the final hidden states and the LM-head weight in row chunks, so the ``[T, V]`` logits of a
  whole micro-batch never exist at once.
- The lr schedule advances once per :meth:`LocalLearner.train_step` (as verl's scheduler does once per actor
  update), and warm-up step ``k`` (0-based) uses ``lr * (k + 1) / warmup_steps``, so the first update is not spent
  at lr 0 as in verl/transformers' ``k / warmup_steps``.
- A step whose loss or gradient norm is not finite is skipped (gradients dropped) instead of applied, and a step
  that leaves a weight non-finite is rolled back to the weights and AdamW state before it (``rollback_nonfinite``).
- The auxiliary full-vocabulary ``divergence`` term is not supported (it needs ``[N, A, V]`` teacher log-probs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from sdar.algo.logprobs import hidden_token_logprobs
from sdar.algo.methods import LossSpec
from sdar.algo.objective import policy_objective
from sdar.batch import TokenBatch
from sdar.learner.base import ModelRole
from sdar.learner.packing import Layout, PackedMicroBatch, make_micro_batches, padding_ratio

__all__ = ["LocalLearner", "lr_at"]

logger = logging.getLogger(__name__)

# Objective metrics that are aggregated losses (already divided by the global count): they add up over
# micro-batches. Every other objective metric is a token mean over its micro-batch and is token-weighted.
_ADDITIVE_SUFFIXES = ("_loss", "/kl", "/entropy", "/divergence")


def _is_additive(key: str) -> bool:
    return key.startswith("loss/") or key.endswith(_ADDITIVE_SUFFIXES)


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


def _split_model(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder body returning last hidden states, LM head) of a transformers causal LM."""
    config = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, attr, None) not in (None, 1.0):
            raise ValueError(
                f"the model's config sets {attr}={getattr(config, attr)}; LocalLearner scores tokens from hidden "
                "states with a plain linear LM head and would give wrong log-probs for this model"
            )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or body is model:
        body = getattr(model, "base_model", None)
    if not isinstance(head, nn.Linear) or body is None or body is model:
        raise TypeError(
            f"{type(model).__name__} does not expose a decoder (get_decoder/base_model) and a linear LM head "
            "(get_output_embeddings); pass a transformers *ForCausalLM model"
        )
    return body, head


def _enable_activation_checkpointing(model: nn.Module) -> None:
    """Turn on non-reentrant activation checkpointing with whichever name this transformers version has."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise TypeError(f"{type(model).__name__} has no activation checkpointing; set gradient_checkpointing=False")


def _has_dropout(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    probs = [getattr(config, a, 0.0) or 0.0 for a in ("attention_dropout", "hidden_dropout", "resid_pdrop")]
    return any(p > 0 for p in probs) or any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


@contextlib.contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[None]:
    before = module.training
    module.train(training)
    try:
        yield
    finally:
        module.train(before)


class LocalLearner:
    """Owns the policy (and optional frozen reference) in one process; implements :class:`sdar.learner.Learner`.

    Args:
        model: A transformers causal LM (the policy); trained in place.
        reference_model: Frozen model for the KL term; needed only when ``spec.kl_coef > 0``.
        lr, weight_decay, betas: AdamW settings (weight decay on every parameter, as verl).
        grad_clip: Max global gradient norm (``None`` or ``<= 0`` = no clipping, norm still reported).
        warmup_steps: Training steps of linear lr warm-up (see :func:`lr_at`).
        total_steps: None = constant lr after warm-up; else cosine decay to 0 at this training step.
        ppo_epochs: Passes over each training batch.
        mini_batch_rows: Rows per optimizer step (None = the whole batch in one optimizer step).
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
        self.model = model
        self.reference_model = reference_model
        self._body, self._head = _split_model(model)
        if reference_model is not None:
            reference_model.eval().requires_grad_(False)
            self._ref_parts = _split_model(reference_model)
        self.base_lr, self.grad_clip = lr, grad_clip
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.ppo_epochs, self.mini_batch_rows = ppo_epochs, mini_batch_rows
        self.micro_batch_tokens, self.layout = micro_batch_tokens, layout
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
        if gradient_checkpointing:
            _enable_activation_checkpointing(model)
        if _has_dropout(model):
            logger.warning("the policy has dropout > 0: training log-probs will not match the no-grad old log-probs")

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def policy_module(self) -> nn.Module:
        return self.model

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    # -------------------------------------------------------------------------------------------------- scoring
    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _score(
        self, parts: tuple[nn.Module, nn.Module], mb: PackedMicroBatch, *, with_entropy: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Log-probs ``[R]`` (and entropies) of one micro-batch's response tokens; grad follows the caller's mode."""
        body, head = parts
        device = head.weight.device
        with self._autocast(device):
            out = body(
                input_ids=mb.input_ids.to(device),
                position_ids=mb.position_ids.to(device),
                attention_mask=None if mb.attention_mask is None else mb.attention_mask.to(device),
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

    def _parts(self, model: ModelRole) -> tuple[nn.Module, nn.Module]:
        if model == "policy":
            return self._body, self._head
        if model == "reference":
            if self.reference_model is None:
                raise ValueError("no reference model: build LocalLearner(..., reference_model=...) to score with it")
            return self._ref_parts
        raise ValueError(f"model must be 'policy' or 'reference', got {model!r}")

    @torch.no_grad()
    def _score_many(
        self, batches: Sequence[TokenBatch], *, model: ModelRole, with_entropy: bool
    ) -> list[tuple[Tensor, Tensor | None]]:
        parts = self._parts(model)
        device = parts[1].weight.device
        rows = [(p, r) for b in batches for p, r in zip(b.prompts, b.responses)]
        width = max((b.response_len for b in batches), default=0)
        lp = torch.zeros(len(rows), width, device=device)  # [sum N, A_max]
        ent = torch.zeros(len(rows), width, device=device) if with_entropy else None
        module = self.model if model == "policy" else self.reference_model
        assert module is not None
        with _mode(module, False):
            for mb in make_micro_batches(rows, max_tokens=self.micro_batch_tokens, layout=self.layout):
                mb_lp, mb_ent = self._score(parts, mb, with_entropy=with_entropy)
                where = (mb.dest_row.to(device), mb.dest_col.to(device))
                lp[where] = mb_lp.float()
                if ent is not None and mb_ent is not None:
                    ent[where] = mb_ent.float()
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
                "LocalLearner does not support aux='divergence' (it needs [N, A, V] teacher log-probs); "
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
        """Forward/backward every micro-batch of ``batch`` as ONE optimizer batch; gradients add up in ``.grad``.

        Each micro-batch's loss is aggregated with the whole batch's counts (``global_tokens`` = trained tokens,
        ``global_seqs`` = rows with at least one), so the summed gradient equals that of the whole-batch loss.
        No optimizer step, no zeroing: :meth:`train_step` builds on this; tests call it to inspect gradients.

        Returns:
            ``(metrics, input_tokens, micro_batches)``; metrics are detached scalar tensors (no device sync).
        """
        self._check_train_inputs(batch, spec, ref_logprobs, teacher_logprobs, is_weights)
        counts = {
            "global_tokens": int(batch.loss_mask.sum()),
            "global_seqs": int(batch.loss_mask.any(-1).sum()),
            "dp_size": 1,
            "norm": float(batch.response_len) if norm is None else norm,
        }
        with_entropy = spec.entropy_coef > 0 or (spec.uses_aux and spec.gate in ("entropy", "soft_or"))
        rows = list(zip(batch.prompts, batch.responses))
        micro = make_micro_batches(rows, max_tokens=self.micro_batch_tokens, layout=self.layout)
        sums: dict[str, Tensor] = {}
        with _mode(self.model, True):  # activation checkpointing only runs in training mode
            for mb in micro:
                self._micro_backward(mb, batch, spec, ref_logprobs, teacher_logprobs, counts, with_entropy, sums,
                                     is_weights=is_weights)
        return sums, sum(mb.num_tokens for mb in micro), micro

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
        is_weights: Tensor | None = None,
    ) -> None:
        """One micro-batch: forward, objective with the optimizer batch's counts, backward, metrics into ``sums``."""
        device = self.device
        lp, ent = self._score((self._body, self._head), mb, with_entropy=with_entropy)  # [R]
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
        share = mask.sum() / max(counts["global_tokens"], 1)
        for key, value in out.metrics.items():
            value = value.detach().float()
            contribution = value if _is_additive(key) else value * share
            sums[key] = sums[key] + contribution if key in sums else contribution

    def _optimizer_step(self, metrics: dict[str, Tensor], lr: float) -> dict[str, float]:
        """Clip, check finiteness (the one device sync), then step or drop the gradients."""
        max_norm = self.grad_clip if self.grad_clip is not None and self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        keys = list(metrics)
        device = grad_norm.device
        values = torch.stack([grad_norm.float(), *(metrics[k].to(device) for k in keys)]).tolist()
        out = {k: v for k, v in zip(keys, values[1:])}
        out["train/grad_norm"] = values[0]
        loss = out.get("loss/total", 0.0)
        if math.isfinite(loss) and math.isfinite(values[0]):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._step_or_roll_back(out)
        else:
            self.skipped_steps += 1
            out["train/skipped"] = 1.0
            logger.warning("non-finite loss %.4g or grad norm %.4g: optimizer step skipped", loss, values[0])
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def _step_or_roll_back(self, out: dict[str, float]) -> None:
        """Step the optimizer; with ``rollback_nonfinite``, undo a step that left a weight non-finite
        (``_weights_finite`` decides: per process here, over every rank under FSDP)."""
        before = self._snapshot() if self.rollback_nonfinite else None
        self.optimizer.step()
        if before is not None and not self._weights_finite():
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

    @torch.no_grad()
    def _weights_finite(self) -> bool:
        """Every trainable weight is finite (one device sync)."""
        return bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all())

    def _mini_batches(self, n: int) -> list[list[int]]:
        """Shuffled row indices cut into optimizer mini-batches (one list per epoch per mini-batch)."""
        size = self.mini_batch_rows or n
        out = []
        for _ in range(self.ppo_epochs):
            order = torch.randperm(n, generator=self._shuffle).tolist()
            out.extend(order[s : s + size] for s in range(0, n, size))
        return out

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
            batch: Training rows (``old_logprobs``, ``advantages``, ``loss_mask`` filled in).
            spec: The objective; ``spec.needs_reference`` / ``spec.needs_teacher`` say which extra inputs are needed.
                ``spec.rlsd_lambda`` is used as given (the caller applies any schedule to it).
            ref_logprobs: ``[N, A]`` reference log-probs (ignored when ``spec.kl_coef == 0``).
            teacher_logprobs: ``[N, A]`` teacher log-probs.
            is_weights: ``[N, A]`` importance weights multiplying the PG term per token (e.g. the rollout/trainer
                mismatch correction of :func:`sdar.algo.correction.mismatch_weights`); None = 1.

        Returns:
            Objective metrics (``pg/...``, ``kl/...``, ``sdar/...``, ``loss/total``) averaged over the applied
            optimizer steps, plus ``train/loss``, ``train/grad_norm``, ``train/lr``, ``train/tokens`` (tokens fed
            forward, all epochs), ``train/tokens_per_s``, ``train/optimizer_steps``, ``train/skipped_steps``,
            ``train/micro_batches`` and ``train/padding_ratio``.
        """
        self._check_train_inputs(batch, spec, ref_logprobs, teacher_logprobs, is_weights)
        start = time.perf_counter()
        lr = lr_at(self.train_steps, base_lr=self.base_lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps)
        steps: list[dict[str, float]] = []
        tokens, micro_all = 0, []
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
            tokens += n_tokens
            micro_all.extend(micro)
        self.train_steps += 1
        applied = [s for s in steps if s["train/skipped"] == 0.0] or steps
        keys = {k for s in applied for k in s} - {"train/skipped"}
        out = {k: sum(s.get(k, 0.0) for s in applied) / len(applied) for k in sorted(keys)}
        elapsed = time.perf_counter() - start
        out.update(
            {
                "train/loss": out.get("loss/total", 0.0),
                "train/lr": lr,
                "train/tokens": float(tokens),
                "train/tokens_per_s": tokens / max(elapsed, 1e-9),
                "train/optimizer_steps": float(len(steps)),
                "train/skipped_steps": float(sum(s["train/skipped"] for s in steps)),
                "train/micro_batches": float(len(micro_all)),
                "train/padding_ratio": padding_ratio(micro_all),
            }
        )
        return out

    # -------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``model`` (live tensors; tied weights appear under both names), ``optimizer``, counters, shuffle RNG."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_steps": self.train_steps,
            "optimizer_steps": self.optimizer_steps,
            "skipped_steps": self.skipped_steps,
            "shuffle_rng": self._shuffle.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.train_steps = int(state["train_steps"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.skipped_steps = int(state["skipped_steps"])
        self._shuffle.set_state(state["shuffle_rng"])

    def export_weights(self) -> Iterable[tuple[str, Tensor]]:
        """``(name, tensor)`` for every entry of the policy's state dict (detached, on the training device).

        A LoRA policy exports the base model's names with the adapters merged in, which is what a generator holding
        a plain copy of the model needs (see :func:`sdar.learner.lora.merged_state_dict`).
        """
        from sdar.learner.lora import merged_state_dict

        return list(merged_state_dict(self.model).items())
