"""Training precision: which dtype the master weights (and AdamW state) live in, and which dtype the maths runs in.

AdamW adds ``lr * m / sqrt(v)`` to every weight. At the RL learning rates used here (1e-6) that step is far below
half a bf16 ulp of a typical weight (bf16 keeps 8 significant bits), so updating bf16 weights in place rounds most
steps away: measured, 10 steps change about 2% of the weights of an N(0, 0.02) matrix against all of them in fp32.
The default therefore keeps fp32 master weights and optimizer state and runs the forward and backward passes in
bf16 where the hardware makes that worthwhile, as verl and torchtune do:

* ``fp32``: fp32 weights, fp32 compute.
* ``mixed_bf16``: fp32 weights and optimizer state; compute under ``torch.autocast(bfloat16)`` (the single-process
  learner and the HF generator) or with FSDP2 ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` over
  fp32 shards (plus the same autocast, so norms and softmaxes stay in fp32).
* ``pure_bf16``: bf16 weights and optimizer state (half the memory); small updates are lost, see above.
* ``auto``: ``mixed_bf16`` on a CUDA device with bf16 support; on a CPU ``mixed_bf16`` only when the one-time probe
  of :mod:`sdar.hardware` found bf16 autocast fast on this chip, else ``fp32``; ``fp32`` elsewhere.

:func:`plan_precision` is the pure decision; :func:`resolve_precision` looks at the machine first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["PRECISIONS", "PrecisionName", "PrecisionPlan", "plan_precision", "resolve_precision"]

logger = logging.getLogger(__name__)

PrecisionName = Literal["auto", "fp32", "mixed_bf16", "pure_bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "mixed_bf16", "pure_bf16")

PURE_BF16_WARNING = (
    "model.precision=pure_bf16: the weights and the AdamW state are bfloat16, so any update smaller than half a "
    "bf16 step of the weight (about 0.4%% of its size) rounds away; at lr %s most weights will barely move. "
    "Use model.precision=auto (fp32 master weights, bf16 compute) unless memory forces this."
)


@dataclass(frozen=True)
class PrecisionPlan:
    """The resolved precision of one run."""

    name: Literal["fp32", "mixed_bf16", "pure_bf16"]
    weight_dtype: torch.dtype
    """dtype of the model's parameters, i.e. of the master weights the optimizer updates (and of its state)."""
    compute_dtype: torch.dtype
    """dtype the matmuls run in."""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """dtype for ``torch.autocast`` around forward passes (None: run in the weights' dtype)."""
        return self.compute_dtype if self.compute_dtype != self.weight_dtype else None

    @property
    def fsdp_param_dtype(self) -> torch.dtype | None:
        """``MixedPrecisionPolicy.param_dtype`` for FSDP2: the dtype shards are gathered in (None: as stored)."""
        return self.autocast_dtype

    @property
    def load_dtype(self) -> Literal["float32", "bfloat16"]:
        """The ``dtype`` name to pass to :func:`sdar.models.load_model`."""
        return "bfloat16" if self.weight_dtype == torch.bfloat16 else "float32"


_PLANS = {
    "fp32": PrecisionPlan("fp32", torch.float32, torch.float32),
    "mixed_bf16": PrecisionPlan("mixed_bf16", torch.float32, torch.bfloat16),
    "pure_bf16": PrecisionPlan("pure_bf16", torch.bfloat16, torch.bfloat16),
}


def plan_precision(setting: str, *, device_type: str, cuda_bf16: bool = False,
                   cpu_bf16_fast: bool = False) -> PrecisionPlan:
    """The plan for ``setting`` on a ``device_type`` device (a pure function of its arguments).

    Args:
        setting: ``auto``, ``fp32``, ``mixed_bf16`` or ``pure_bf16``.
        device_type: ``"cuda"``, ``"cpu"``, ...
        cuda_bf16: the CUDA device supports bfloat16.
        cpu_bf16_fast: bf16 autocast is faster than fp32 on this CPU (the :mod:`sdar.hardware` probe).

    Raises:
        ValueError: an unknown setting, or a bf16 setting on a CUDA device without bf16 support.
    """
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {setting!r}")
    if device_type == "cuda" and not cuda_bf16 and setting != "fp32":
        if setting != "auto":
            raise ValueError(f"precision {setting} needs bfloat16, which this GPU does not support; use fp32")
        return _PLANS["fp32"]
    if setting == "auto":
        bf16 = (device_type == "cuda" and cuda_bf16) or (device_type == "cpu" and cpu_bf16_fast)
        return _PLANS["mixed_bf16" if bf16 else "fp32"]
    return _PLANS[setting]


def resolve_precision(setting: str, device: torch.device | str, *, lr: float | None = None) -> PrecisionPlan:
    """:func:`plan_precision` for this machine's ``device``; warns when ``pure_bf16`` was asked for.

    The CPU probe (:func:`sdar.hardware.cpu_bf16_probe`, cached per machine) runs only for ``auto`` on a CPU.
    """
    from sdar.hardware import resolve_autocast

    kind = torch.device(device).type
    cuda_bf16 = kind == "cuda" and torch.cuda.is_bf16_supported()
    cpu_fast = kind == "cpu" and setting == "auto" and resolve_autocast("auto", "cpu") is not None
    plan = plan_precision(setting, device_type=kind, cuda_bf16=cuda_bf16, cpu_bf16_fast=cpu_fast)
    if plan.name == "pure_bf16":
        logger.warning(PURE_BF16_WARNING, "n/a" if lr is None else f"{lr:g}")
    return plan
