"""Gap diagnostics: by relative position, on action tokens, and the saved Δ sample."""

from __future__ import annotations

import pytest
import torch

from sdar.stats import action_token_mask, delta_sample, gap_by_position, gap_on_tokens

# a toy "tokenizer": every id is one piece of text
PIECES = {0: "<think>", 1: "go", 2: "</think>", 3: "<act", 4: "ion>", 5: "open ", 6: "box", 7: "</action>", 8: "x"}


def decode(ids):
    return "".join(PIECES[i] for i in ids)


def test_gap_by_position_quarters_by_hand():
    # row 0 has 4 loss tokens (one per quarter), row 1 has 2 loss tokens (parts floor(4*0/2)=0 and floor(4*1/2)=2)
    teacher = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0]])
    student = torch.zeros(2, 4)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    out = gap_by_position(teacher, student, mask)
    assert out["sdar/gap_by_pos/q1"] == pytest.approx((1.0 + 10.0) / 2)
    assert out["sdar/gap_by_pos/q2"] == pytest.approx(2.0)
    assert out["sdar/gap_by_pos/q3"] == pytest.approx((3.0 + 20.0) / 2)
    assert out["sdar/gap_by_pos/q4"] == pytest.approx(4.0)


def test_action_token_mask_finds_tokens_inside_the_tags():
    rows = [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 8], [3, 4, 6]]  # tagged, no action tag, unclosed tag
    mask = action_token_mask(rows, decode, width=9)
    assert mask.shape == (3, 9)
    assert mask[0].tolist() == [False] * 5 + [True, True] + [False, False]  # "open " and "box"
    assert not mask[1].any() and not mask[2].any()


def test_action_token_mask_uses_the_last_action_block_and_partial_overlap():
    pieces = {**PIECES, 9: "<action>a</action> <action>b", 10: "c</action>"}
    mask = action_token_mask([[9, 10]], lambda ids: "".join(pieces[i] for i in ids), width=2)
    assert mask.tolist() == [[True, True]]  # "b" ends token 9 and "c" starts token 10


def test_gap_on_tokens_by_hand_and_empty_selection():
    teacher = torch.tensor([[0.5, -1.0, 2.0]])
    student = torch.zeros(1, 3)
    sel = torch.tensor([[True, True, False]])
    out = gap_on_tokens(teacher, student, sel, "action")
    assert out == {"sdar/gap_action_mean": pytest.approx(-0.25), "sdar/gap_action_positive_ratio": pytest.approx(0.5)}
    assert gap_on_tokens(teacher, student, torch.zeros(1, 3, dtype=torch.bool), "action") == {}


def test_delta_sample_keeps_masked_values_and_caps_the_count():
    teacher = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    student = torch.ones(2, 3)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    assert delta_sample(teacher, student, mask, k=10, seed=0) == [0.0, 2.0, 3.0, 4.0, 5.0]
    picked = delta_sample(teacher, student, mask, k=3, seed=1)
    assert len(picked) == 3 and set(picked) <= {0.0, 2.0, 3.0, 4.0, 5.0}
    assert picked == delta_sample(teacher, student, mask, k=3, seed=1)  # deterministic per seed
