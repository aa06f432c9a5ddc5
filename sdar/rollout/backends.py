"""Picks the rollout generator named by ``rollout.backend``."""

from __future__ import annotations

from typing import Any

__all__ = ["build_generator"]


def build_generator(cfg: Any, policy: Any, tokenizer: Any, *, autocast_dtype: Any = None) -> Any:
    """The rollout generator named by ``cfg.rollout.backend``.

    ``hf``: an ``HFGenerator`` sampling with ``policy`` itself, under ``torch.autocast(autocast_dtype)`` when given
    (the learner's autocast, so sampling and scoring compute alike). ``vllm``: a ``VLLMGenerator`` started on the model
    folder of ``cfg.model.name`` in ``cfg.model.dtype``; it holds its own weights (so the mismatch correction
    applies) and is refreshed through ``load_weights`` after every update.

    Raises:
        VLLMNotInstalledError: ``vllm`` requested but not installed.
        ValueError: ``vllm`` requested inside a multi-process (torchrun) job, or an unknown backend.
    """
    backend = cfg.rollout.backend
    if backend == "hf":
        from sdar.rollout.hf import HFGenerator

        return HFGenerator(policy, tokenizer, batch_size=cfg.rollout.batch_size, autocast_dtype=autocast_dtype)
    if backend != "vllm":
        raise ValueError(f"rollout.backend must be 'hf' or 'vllm', got {backend!r}")
    from sdar.rollout.vllm_engine import vllm_generator_for

    return vllm_generator_for(cfg)
