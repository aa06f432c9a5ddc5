"""Picks the rollout generator named by ``rollout.backend`` (flat arguments: config objects stop at the builder)."""

from __future__ import annotations

from typing import Any

import torch

from sdar.rollout.generator import Generator

__all__ = ["build_generator"]


def build_generator(backend: str, policy: Any, tokenizer: Any, *, batch_size: int = 64,
                    autocast_dtype: torch.dtype | None = None, model_name: str = "", model_dtype: str = "auto",
                    seed: int = 0, max_model_len: int = 4096, sampling_view: Any = None) -> Generator:
    """The rollout generator named by ``backend``.

    ``hf``: an ``HFGenerator`` sampling with ``policy`` itself, ``batch_size`` prompts at a time, under
    ``torch.autocast(autocast_dtype)`` when given (the learner's autocast, so sampling and scoring compute alike), and
    inside ``sampling_view(policy)`` when given (e.g. LoRA adapters merged for the call).
    ``vllm``: a ``VLLMGenerator`` started on the model folder ``model_name`` in ``model_dtype`` with engine length
    ``max_model_len``; it holds its own weights (so the mismatch correction applies) and is refreshed through
    ``load_weights`` after every update. Under torchrun every rank starts its own engine (whole model per rank).

    Raises:
        VLLMNotInstalledError: ``vllm`` requested but not installed.
        ValueError: an unknown backend.
    """
    if backend == "hf":
        from sdar.rollout.hf import HFGenerator

        return HFGenerator(policy, tokenizer, batch_size=batch_size, autocast_dtype=autocast_dtype,
                           sampling_view=sampling_view)
    if backend != "vllm":
        raise ValueError(f"rollout.backend must be 'hf' or 'vllm', got {backend!r}")
    from sdar.rollout.vllm_engine import vllm_generator_for

    return vllm_generator_for(model_name, dtype=model_dtype, seed=seed, max_model_len=max_model_len)
