"""Turn-level privileged hints: the expert's next action, seeded corruption, and the agree/disagree gap split."""

from __future__ import annotations

import pytest
import torch

from sdar.data.hints import corrupt_plan, expert_next_action, hint_is_corrupted, plan_steps
from sdar.stats import gap_by_agreement

PLAN = "1. go to cabinet 2\n2. open cabinet 2\n3. take apple 1 from cabinet 2"


def test_plan_steps_and_next_action() -> None:
    assert plan_steps(PLAN) == ["go to cabinet 2", "open cabinet 2", "take apple 1 from cabinet 2"]
    assert expert_next_action({"expert_plan": PLAN}) == "go to cabinet 2"
    assert expert_next_action({"expert_plan": ""}) is None
    assert expert_next_action({"skills": "x"}) is None


def test_corrupt_plan_swaps_the_first_step_for_another_admissible_action() -> None:
    admissible = ["go to cabinet 2", "go to drawer 1", "look"]
    out = corrupt_plan(PLAN, admissible, seed=0)
    steps = plan_steps(out)
    assert steps[0] in {"go to drawer 1", "look"}
    assert steps[1:] == plan_steps(PLAN)[1:]
    assert out.startswith("1. ") and "\n2. open cabinet 2" in out  # looks like any other plan
    assert corrupt_plan(PLAN, admissible, seed=0) == out  # seeded
    assert {plan_steps(corrupt_plan(PLAN, admissible, seed=s))[0] for s in range(40)} == {"go to drawer 1", "look"}


def test_corrupt_plan_leaves_a_plan_without_alternatives_unchanged() -> None:
    assert corrupt_plan(PLAN, ["Go To  Cabinet 2"], seed=1) == PLAN  # the only action is the expert's
    assert corrupt_plan("", ["look"], seed=1) == ""


def test_hint_is_corrupted_hits_the_requested_fraction() -> None:
    for p in (0.0, 0.3, 0.6, 1.0):
        hits = sum(hint_is_corrupted(p, seed=7, episode_id=e, turn=t) for e in range(100) for t in range(20))
        assert abs(hits / 2000 - p) < 0.03
    assert hint_is_corrupted(0.5, seed=1, episode_id=3, turn=2) == hint_is_corrupted(0.5, seed=1, episode_id=3, turn=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hint_is_corrupted(1.5, seed=0, episode_id=0, turn=0)


def test_gap_by_agreement_by_hand() -> None:
    # rows 0, 1 agree, row 2 disagrees, row 3 has no expert action (left out)
    teacher = torch.tensor([[-0.1, -0.2], [-0.3, -0.4], [-3.0, -1.0], [0.0, 0.0]])
    student = torch.tensor([[-1.1, -0.2], [-0.3, -1.4], [-1.0, -1.0], [-5.0, -5.0]])
    action = torch.tensor([[True, False], [True, True], [True, True], [True, True]])
    agree = torch.tensor([True, True, False, False])
    known = torch.tensor([True, True, True, False])
    out = gap_by_agreement(teacher, student, action, agree, known)
    # agree tokens: row 0 col 0 (+1.0), row 1 cols 0, 1 (0.0, +1.0) -> mean 2/3
    assert out["sdar/gap_action_agree"] == pytest.approx(2 / 3)
    # disagree tokens: row 2 (-2.0, 0.0) -> mean -1.0
    assert out["sdar/gap_action_disagree"] == pytest.approx(-1.0)
    assert out["sdar/gap_action_agree_minus_disagree"] == pytest.approx(5 / 3)
    assert out["sdar/expert_agree_ratio"] == pytest.approx(2 / 3)
    assert gap_by_agreement(teacher, student, action, agree, torch.zeros(4, dtype=torch.bool)) == {}
