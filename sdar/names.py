"""The training methods' names: the one list that the configuration (``algo.method``) and the method table
(``sdar.algo.methods.METHODS``) both read. Standard library only, so the bottom layers may import it."""

from __future__ import annotations

from typing import Literal

__all__ = ["MethodName"]

MethodName = Literal["grpo", "skill_grpo", "opsd", "grpo_opsd", "skill_sd", "rlsd", "sdar"]
"""GRPO and the baselines beside SDAR, in the order tables list them."""
