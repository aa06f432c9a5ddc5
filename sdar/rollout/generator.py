"""The Generator protocol: token ids in, sampled token ids and their log-probs out."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Iterable, Literal, Protocol, Sequence

from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one response per prompt.

    ``top_k=0`` and ``top_p=1.0`` mean "no truncation": the behaviour policy is then exactly the model's softmax at
    ``temperature``, which is what on-policy RL assumes.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    """Generation of a row stops after a token whose decoded text completes one of these strings."""
    seed: int | None = None
    row_keys: tuple[int, ...] | None = None
    """Optional per-row identities (the collector passes episode ids): a backend that seeds every row on its own
    (vLLM) derives row i's seed from ``(seed, row_keys[i])`` instead of its position in the call, so a row samples
    the same tokens whatever else is in the call — across data-parallel ranks, or as episodes finish. A backend that
    samples a whole batch from one random stream (the Hugging Face loop) cannot, and ignores it."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


@dataclass(frozen=True)
class Sample:
    """One generated response."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    """Log-prob of each sampled id under the distribution actually sampled from (after temperature, top-k, top-p;
    for greedy decoding, under the temperature-1 softmax)."""
    finish_reason: Literal["stop", "length"]


class Generator(Protocol):
    """Anything that can sample continuations of token-id prompts."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        """One ``Sample`` per prompt, in order."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Receive updated policy weights (a no-op for a backend that shares the training model)."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory until the next call (vLLM sleep mode; a no-op for backends without one)."""
        ...


def session(generator: Generator) -> ContextManager[object]:
    """``generator.session()`` for a generator that keeps per-call state across the calls of one rollout (the HF
    loop's merged LoRA weights), else a context that does nothing. The weights must not change inside."""
    opened = getattr(generator, "session", None)
    return opened() if callable(opened) else contextlib.nullcontext()
