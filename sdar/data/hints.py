"""Privileged hints at the turn level: the expert's next action, and seeded corruption for reliability sweeps.

An environment that knows the optimal play (the toy game, ALFWorld) reports it as ``expert_plan``: numbered lines
such as ``"1. go to cabinet 2\\n2. open cabinet 2"``, re-made from every state (``Turn.privileged``). Two uses:

* ``expert_next_action`` reads the plan's first step, so a sampled action can be split into "agrees with the
  expert" and "does not" (the teacher-informativeness diagnostic ``sdar/gap_action_agree`` / ``_disagree``).
* ``corrupt_plan`` swaps the first step for another admissible action, keeping the rest of the text: a plausible
  but wrong hint. ``hint_is_corrupted`` decides per (run seed, episode, turn) with a stable hash whether a hint is
  replaced, so a fraction p of the teacher's hints are wrong, identically for every method of a comparison.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Mapping, Sequence

__all__ = ["PLAN_SOURCE", "corrupt_plan", "expert_next_action", "hint_is_corrupted", "plan_steps"]

PLAN_SOURCE = "expert_plan"
"""Privileged source name of an environment's remaining optimal plan."""
_PLAN_NUMBER = re.compile(r"^\s*\d+\s*[.)]\s*")


def plan_steps(plan: str) -> list[str]:
    """The steps of a numbered plan, without their numbers (blank lines skipped)."""
    steps = (_PLAN_NUMBER.sub("", line, count=1).strip() for line in plan.splitlines())
    return [s for s in steps if s]


def expert_next_action(privileged: Mapping[str, str]) -> str | None:
    """The first step of ``privileged["expert_plan"]``, or None when there is no (non-empty) plan."""
    steps = plan_steps(privileged.get(PLAN_SOURCE, ""))
    return steps[0] if steps else None


def hint_is_corrupted(p: float, *, seed: int, episode_id: int, turn: int) -> bool:
    """True for a fraction ``p`` of (seed, episode, turn) triples; a pure function of its arguments.

    Raises:
        ValueError: for p outside [0, 1].
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"the corrupted fraction must be in [0, 1], got {p}")
    if p == 0.0:
        return False
    digest = hashlib.sha256(f"hint:{seed}:{episode_id}:{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < p


def corrupt_plan(plan: str, admissible: Sequence[str], *, seed: int) -> str:
    """``plan`` with its first step replaced by a different admissible action, drawn with ``seed``.

    The other steps and the numbering stay, so the hint looks like any other plan. A plan without steps, or a
    state where no other admissible action exists, is returned unchanged.
    """
    steps = plan_steps(plan)
    if not steps:
        return plan
    key = " ".join(steps[0].lower().split())
    others = sorted({a for a in admissible if " ".join(a.lower().split()) != key})
    if not others:
        return plan
    wrong = random.Random(seed).choice(others)
    return "\n".join(f"{i}. {s}" for i, s in enumerate([wrong, *steps[1:]], 1))
