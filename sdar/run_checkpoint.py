"""Run checkpoints: the learner, the retriever's state and the next step, refused when the weights are not finite."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import torch

from sdar.distributed import load_run_checkpoint, save_run_checkpoint
from sdar.runtime import Parts

__all__ = ["nonfinite_weights", "restore", "save"]

log = logging.getLogger(__name__)


def nonfinite_weights(module: torch.nn.Module, limit: int = 3) -> list[str]:
    """Names of up to ``limit`` parameters of ``module`` that hold NaN or infinity (this process's shards under
    FSDP); one device sync."""
    named = [(name, p.to_local() if hasattr(p, "to_local") else p) for name, p in module.named_parameters()]
    if not named:
        return []
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok][:limit]


def save(parts: Parts, step: int) -> None:
    """Checkpoint the learner and the run state after ``step``; refuses (on every rank) to write weights that are
    not finite.

    Raises:
        NonFiniteWeightsError: when a weight is NaN or infinite; the previous checkpoint stays the latest.
    """
    bad = nonfinite_weights(parts.learner.policy_module)
    if not parts.dp.every(not bad):
        from sdar.errors import NonFiniteWeightsError
        from sdar.learner.checkpoint import latest_checkpoint

        last = latest_checkpoint(parts.ckpt_dir)
        raise NonFiniteWeightsError(
            f"after step {step} the weights are not finite ({', '.join(bad) or 'on another rank'}); no checkpoint "
            f"was written, the latest is {last if last is not None else 'none'}. Lower optim.lr or optim.grad_clip, "
            "or keep optim.rollback_nonfinite on")
    extra: dict[str, Any] = {"next_step": step + 1, "config": json.loads(json.dumps(dataclasses.asdict(parts.cfg)))}
    if parts.retriever is not None:
        extra["retriever"] = parts.retriever.state_dict()
    save_run_checkpoint(parts.learner, parts.ckpt_dir, step=step, extra=extra, keep_last=parts.cfg.keep_checkpoints,
                        dp=parts.dp)


def restore(parts: Parts) -> int:
    """Load the latest checkpoint into the parts; returns the step to continue from (0: none found)."""
    extra = load_run_checkpoint(parts.learner, parts.ckpt_dir, dp=parts.dp)
    if extra is None:
        log.warning("resume requested but no checkpoint in %s; starting from step 0", parts.ckpt_dir)
        return 0
    parts.weights.refresh()
    if parts.retriever is not None and "retriever" in extra:
        parts.retriever.load_state_dict(extra["retriever"])
    start = int(extra["next_step"])
    log.info("resuming at step %d", start)
    return start
