"""A Hugging Face transformers generator with its own KV-cache sampling loop and exact behaviour log-probs."""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Callable, ContextManager, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from sdar.records import FinishReason

from .generator import Sample, SamplingParams

logger = logging.getLogger(__name__)


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids: the tokenizer's eos plus every id in ``model.generation_config.eos_token_id``."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = head.weight.shape[0] if head is not None else None
    return frozenset(i for i in ids if vocab is None or 0 <= i < vocab)  # ids outside the vocabulary never occur


def _cache_kwarg(model: Any) -> str:
    """Name of the KV-cache argument of ``model.forward`` (``cache`` in recent transformers, else the older name)."""
    try:
        names = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in names else "past_key_values"


def unique_prompts(prompts: Sequence[Sequence[int]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The distinct prompts in first-seen order, and for each prompt the index of its distinct prompt.

    Episodes of one GRPO group start from the same state, so their first-turn prompts are identical (and stay so
    while they act alike): the generator prefills each distinct prompt once and copies its cache rows.
    """
    index: dict[tuple[int, ...], int] = {}
    of_row = [index.setdefault(tuple(p), len(index)) for p in prompts]
    return list(index), of_row


SHARED_PREFIX_MIN = 8
"""Shortest common prefix (tokens) that a call prefills once for all its distinct prompts; shorter ones are not
worth the extra forward call."""


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all ``prompts`` share, at most the shortest length minus one (every prompt keeps
    a token of its own, whose logits give its first sampled token); 0 for fewer than two prompts."""
    if len(prompts) < 2:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def truncated_logits(logits: Tensor, *, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Logits of the distribution that is sampled from: temperature, then top-k, then top-p (nucleus).

    Removed entries are ``-inf``, so ``log_softmax`` of the result gives the renormalised truncated distribution.
    top-k keeps every entry tied with the k-th largest; top-p keeps the smallest prefix of the sorted distribution
    whose mass reaches ``top_p`` (at least one token).

    Args:
        logits: [B, V] float32.
        temperature: > 0.
        top_k: 0 = off.
        top_p: 1.0 = off.

    Returns:
        [B, V] float32.
    """
    scaled = logits / temperature  # [B, V]
    if 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]  # [B, 1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # [B, V]
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # the first token always has mass_before == 0
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


class HFGenerator:
    """Samples with a transformers causal LM, one ``Sample`` per prompt, log-probs of the sampled distribution.

    The loop is written out (left padding, one prefill, then one token per step through the KV cache) instead of
    calling ``model.generate``: the log-prob of each sampled token is taken from the very distribution it was drawn
    from, so ``Sample.logprobs`` equal teacher-forced log-probs of the same model (see ``truncated_logits``).
    Identical prompts in one call are prefilled once (their cache rows are copied; each row then samples on its own),
    and so is the prefix all of a call's distinct prompts share (the chat template's system turn, the task preamble):
    its cache is copied to every row, which then prefills only its own suffix.
    Rows that finish leave the batch (their cache rows are dropped).

    By default the generator shares the training model object: updated weights are already in place, and
    ``load_weights`` skips every tensor that is the model's own storage (so it costs nothing). When it holds a
    separate copy (e.g. an inference model on another device), ``load_weights`` copies the tensors in;
    ``set_model`` swaps the model object.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 32,
                 autocast_dtype: torch.dtype | None = None, share_prompts: bool = True,
                 sampling_view: Callable[[Any], ContextManager[Any]] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.autocast_dtype = autocast_dtype
        """Run the model under ``torch.autocast`` in this dtype (mixed precision: the learner's compute dtype)."""
        self.sampling_view = sampling_view
        """Entered around every ``generate`` call with the model (e.g. LoRA adapters merged into one weight copy for
        the call: ``sdar.learner.lora.merged_for_sampling``), or once around the calls of a ``session``; it must leave
        the model as it found it."""
        self._held = False
        self.share_prompts = share_prompts
        """Prefill identical prompts of a call once, and their common prefix once (off: every row on its own, e.g. to
        measure the saving)."""
        self.shared_prefix_min = SHARED_PREFIX_MIN
        """Shortest common prefix split off and prefilled once (a larger value turns the prefix saving off alone)."""
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_ids = eos_token_ids(model, tokenizer)
        self._cache_arg = _cache_kwarg(model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        self.pad_id = int(pad)

    def set_model(self, model: Any) -> None:
        """Generate with another model object from now on (same tokenizer)."""
        self.model = model
        self.eos_ids = eos_token_ids(model, self.tokenizer)
        self._cache_arg = _cache_kwarg(model)

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Copy updated weights into the generator's model.

        A no-op for tensors that already are the model's own storage, i.e. when the generator shares the training
        model (the usual single-process set-up).
        """
        own = self.model.state_dict(keep_vars=True)
        copied = 0
        for name, tensor in named_tensors:
            target = own.get(name)
            if target is None:
                raise KeyError(f"load_weights: the generator's model has no tensor named {name!r}")
            if target.data_ptr() == tensor.data_ptr():
                continue
            target.data.copy_(tensor.detach().to(device=target.device, dtype=target.dtype))
            copied += 1
        logger.debug("load_weights copied %d tensors", copied)

    def sleep(self) -> None:
        """Nothing to free: the model is the caller's."""

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Enter the sampling view once for every ``generate`` call inside (one rollout: the weights do not change
        between its turns), instead of once per call; with merged LoRA weights this saves a merge per turn (3% of a
        SmolLM2 rollout). The weights must not change inside. Nested sessions are one session."""
        if self.sampling_view is None or self._held:
            yield
            return
        with self.sampling_view(self.model):
            self._held = True
            try:
                yield
            finally:
                self._held = False

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        """One ``Sample`` per prompt, in order (see ``Sample`` for what the log-probs mean)."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        generator = torch.Generator(device=self._device)
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed)
        was_training = self.model.training
        self.model.eval()
        try:
            out: list[Sample] = []
            with contextlib.ExitStack() as stack:
                if self.sampling_view is not None and not self._held:
                    stack.enter_context(self.sampling_view(self.model))
                if self.autocast_dtype is not None:
                    stack.enter_context(torch.autocast(device_type=self._device.type, dtype=self.autocast_dtype))
                for start in range(0, len(prompts), self.batch_size):
                    out.extend(self._generate_chunk(prompts[start : start + self.batch_size], params, generator))
            return out
        finally:
            self.model.train(was_training)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _generate_chunk(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, generator: torch.Generator
    ) -> list[Sample]:
        from transformers import DynamicCache

        device = self._device
        b = len(prompts)
        if self.share_prompts:  # identical prompts (a group's first turn) are prefilled once
            unique, of_row = unique_prompts(prompts)
        else:
            unique, of_row = [tuple(p) for p in prompts], list(range(b))
        shared = common_prefix(unique) if self.share_prompts else 0
        shared = shared if shared >= self.shared_prefix_min else 0
        cache = DynamicCache(config=self.model.config)
        if shared:  # the common prefix once, at batch 1; every distinct prompt continues from a copy of its cache
            prefix = torch.as_tensor([unique[0][:shared]], dtype=torch.long, device=device)  # [1, C]
            self.model(input_ids=prefix, attention_mask=torch.ones_like(prefix),
                       position_ids=torch.arange(shared, device=device)[None], use_cache=True, logits_to_keep=1,
                       **{self._cache_arg: cache})
            cache.batch_repeat_interleave(len(unique))
        suffixes = [p[shared:] for p in unique]
        width = max(len(p) for p in suffixes)
        input_ids = torch.full((len(unique), width), self.pad_id, dtype=torch.long, device=device)  # [U, S] left-padded
        attention = torch.zeros((len(unique), shared + width), dtype=torch.long, device=device)  # [U, C + S]
        attention[:, :shared] = 1
        for i, p in enumerate(suffixes):
            input_ids[i, width - len(p) :] = torch.as_tensor(p, dtype=torch.long, device=device)
            attention[i, shared + width - len(p) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, shared:]  # [U, S] pads sit between prefix and suffix
        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        ).logits[:, -1].float()  # [U, V]
        if len(unique) < b:  # every row gets its own copy of its prompt's cache, then samples on its own
            rows = torch.as_tensor(of_row, dtype=torch.long, device=device)  # [B]
            cache.batch_select_indices(rows)
            logits, attention, positions = logits[rows], attention[rows], positions[rows]  # [B, ...]

        tokens: list[list[int]] = [[] for _ in range(b)]
        logps: list[list[float]] = [[] for _ in range(b)]
        finish: list[FinishReason] = ["length"] * b
        active = torch.arange(b, device=device)  # [B'] original row of each active row
        next_pos = positions[:, -1] + 1  # [B']
        stop_window = max((len(s.encode("utf-8")) for s in params.stop), default=0) + 1

        for step in range(params.max_new_tokens):
            chosen, chosen_logp = self._pick(logits, params, generator)  # [B'], [B']
            keep: list[int] = []
            for j, (row, tok, lp) in enumerate(zip(active.tolist(), chosen.tolist(), chosen_logp.tolist())):
                tokens[row].append(tok)
                logps[row].append(lp)
                if tok in self.eos_ids or self._hit_stop(tokens[row], params.stop, stop_window):
                    finish[row] = "stop"
                else:
                    keep.append(j)
            if not keep or step == params.max_new_tokens - 1:
                break
            if len(keep) < len(active):
                idx = torch.as_tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(idx)
                active, attention, next_pos, chosen = active[idx], attention[idx], next_pos[idx], chosen[idx]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)  # [B', P + t + 1]
            logits = self.model(
                input_ids=chosen[:, None],
                attention_mask=attention,
                position_ids=next_pos[:, None],
                use_cache=True,
                **{self._cache_arg: cache},
            ).logits[:, -1].float()  # [B', V]
            next_pos = next_pos + 1
        return [Sample(tuple(t), tuple(lp), f) for t, lp, f in zip(tokens, logps, finish)]

    @staticmethod
    def _pick(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Choose the next token of each row and its log-prob.

        Args:
            logits: [B, V] float32 next-token logits.

        Returns:
            ([B] long chosen ids, [B] float32 their log-probs).
        """
        if params.temperature == 0.0:
            logp = torch.log_softmax(logits, dim=-1)  # greedy: log-probs under the temperature-1 softmax
            chosen = torch.argmax(logits, dim=-1)
        else:
            logp = torch.log_softmax(
                truncated_logits(logits, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p),
                dim=-1,
            )
            chosen = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        return chosen, logp.gather(-1, chosen[:, None]).squeeze(-1)

    def _hit_stop(self, tokens: list[int], stop: tuple[str, ...], window: int) -> bool:
        """True when the text of the newest token completes one of the stop strings."""
        if not stop:
            return False
        tail = self.tokenizer.decode(tokens[-window:], skip_special_tokens=False)
        return any(s in tail for s in stop)
