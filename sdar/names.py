"""Names that the configuration and the layers it configures both read, spelled once: the training methods
(``algo.method`` and ``sdar.algo.methods.METHODS``) and the SFT demonstrators (``sft.expert`` and
``sdar.envs.registry.expert_for``). Standard library only, so the bottom layers may import it."""

from __future__ import annotations

from typing import Literal

__all__ = ["ExpertKind", "MethodName"]

MethodName = Literal["grpo", "skill_grpo", "opsd", "grpo_opsd", "skill_sd", "rlsd", "sdar"]
"""GRPO and the baselines beside SDAR, in the order tables list them."""

ExpertKind = Literal["auto", "plan", "search"]
"""The demonstrator of ``sdar sft``: plan = the environment's optimal plan, search = the toy expert that looks for the
object receptacle by receptacle, auto = search on toy, plan elsewhere."""
