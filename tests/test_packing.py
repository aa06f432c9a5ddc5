"""Micro-batch packing: first-fit decreasing groups, scatter indices, padding, and packed == one-row-at-a-time."""

from __future__ import annotations

import pytest
import torch

from sdar.learner.packing import bucket_rows, make_micro_batches, pack_rows, padding_ratio
from sdar.tiny import tiny_model

VOCAB = 259


def rows_of_lengths(lengths: list[tuple[int, int]]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Rows whose token ids encode (row, position) so misplaced tokens are easy to spot."""
    return [
        (tuple(100 * i + j for j in range(p)), tuple(100 * i + 50 + j for j in range(r)))
        for i, (p, r) in enumerate(lengths)
    ]


def random_rows(n: int, seed: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        p = int(torch.randint(1, 10, (1,), generator=g))
        r = int(torch.randint(1, 9, (1,), generator=g))
        rows.append(
            (
                tuple(torch.randint(0, VOCAB, (p,), generator=g).tolist()),
                tuple(torch.randint(0, VOCAB, (r,), generator=g).tolist()),
            )
        )
    return rows


def test_first_fit_decreasing_groups_by_hand():
    # lengths: r0=6, r1=4, r2=5, r3=3, r4=2; budget 10.
    # longest first: r0(6) -> bin A; r2(5) does not fit A (11) -> bin B; r1(4) -> A (10);
    # r3(3) -> B (8); r4(2) -> B (10)
    rows = rows_of_lengths([(3, 3), (2, 2), (4, 1), (1, 2), (1, 1)])
    mbs = pack_rows(rows, max_tokens=10)
    assert [mb.row_ids for mb in mbs] == [(0, 1), (2, 3, 4)]
    assert [tuple(mb.input_ids.shape) for mb in mbs] == [(1, 10), (1, 10)]
    assert all(mb.attention_mask is None for mb in mbs)
    assert padding_ratio(mbs) == 0.0


def test_packed_positions_and_scatter_indices_by_hand():
    # row 0: prompt (0, 1), response (50, 51, 52); row 1: prompt (100,), response (150,)
    rows = rows_of_lengths([(2, 3), (1, 1)])
    (mb,) = pack_rows(rows, max_tokens=100)
    assert mb.input_ids.tolist() == [[0, 1, 50, 51, 52, 100, 150]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    # token 50 is predicted by position 1 (last prompt token of row 0), 51 by 2, 52 by 3; 150 by position 5
    assert mb.pred_index.tolist() == [1, 2, 3, 5]
    assert mb.targets.tolist() == [50, 51, 52, 150]
    assert mb.dest_row.tolist() == [0, 0, 0, 1]
    assert mb.dest_col.tolist() == [0, 1, 2, 0]
    assert mb.local_row.tolist() == [0, 0, 0, 1]
    assert mb.num_tokens == 7


def test_row_longer_than_budget_gets_its_own_micro_batch():
    rows = rows_of_lengths([(2, 2), (8, 4), (1, 1)])  # lengths 4, 12, 2; budget 6
    for fn in (pack_rows, bucket_rows):
        mbs = fn(rows, max_tokens=6)
        assert mbs[0].row_ids == (1,)
        assert mbs[0].num_tokens == 12
        assert sorted(i for mb in mbs for i in mb.row_ids) == [0, 1, 2]


def test_bucketed_groups_padding_and_mask_by_hand():
    # rows 0, 1 of lengths 3 and 2 (r1 one token shorter); budget 8 slots.
    # pass_cost 2: together 2 * 3 = 6 slots + 2 = 8 < apart 3 + 2 + 2 * 2 = 9 -> one micro-batch, r1 padded by 1
    rows = rows_of_lengths([(2, 1), (1, 1)])
    mbs = bucket_rows(rows, max_tokens=8, pass_cost=2)
    assert [mb.row_ids for mb in mbs] == [(0, 1)]
    mb = mbs[0]
    assert mb.input_ids.tolist() == [[0, 1, 50], [100, 150, 0]]
    assert mb.attention_mask is None  # right padding: causal attention keeps real tokens off it
    assert mb.position_ids.tolist() == [[0, 1, 2], [0, 1, 2]]  # no restart: not read as packed rows
    # flat [2 * 3] positions: row 0's 50 is predicted by flat 1; row 1's 150 by flat 3 (row 1 starts at 3)
    assert mb.pred_index.tolist() == [1, 3]
    assert padding_ratio(mbs) == pytest.approx(1 / 6)
    # pass_cost 0: apart 5 slots < together 6 -> two micro-batches, no padding
    assert [mb.row_ids for mb in bucket_rows(rows, max_tokens=8, pass_cost=0)] == [(0,), (1,)]


def test_bucketed_cuts_where_filling_the_budget_would_pad_short_rows():
    # lengths 8, 2, 2, 2; budget 16. Filling each micro-batch in sorted order pads r1 to 8: [r0, r1] (16 slots) +
    # [r2, r3] (4) = 20 slots. The optimal cut: [r0] (8) + [r1, r2, r3] (6) = 14 slots, the same two passes.
    rows = rows_of_lengths([(4, 4), (1, 1), (1, 1), (1, 1)])
    mbs = bucket_rows(rows, max_tokens=16, pass_cost=4)
    assert [mb.row_ids for mb in mbs] == [(0,), (1, 2, 3)]
    assert sum(mb.num_slots for mb in mbs) == 14 and padding_ratio(mbs) == 0.0
    # lengths 5, 3, 2, 2 (budget 8, pass_cost 0): [r0] [r1] [r2, r3] = 12 slots, no padding; ties go to fewer passes
    rows = rows_of_lengths([(3, 2), (2, 1), (1, 1), (1, 1)])
    assert [mb.row_ids for mb in bucket_rows(rows, max_tokens=8, pass_cost=0)] == [(0,), (1,), (2, 3)]
    with pytest.raises(ValueError, match="pass_cost"):
        bucket_rows(rows, max_tokens=8, pass_cost=-1)


@pytest.mark.parametrize("seed", range(4))
def test_bucketed_cost_is_the_least_over_every_split(seed: int):
    # brute force over every way to cut the sorted rows into consecutive groups within the budget
    import itertools

    g = torch.Generator().manual_seed(seed)
    lengths = [int(x) for x in torch.randint(2, 12, (8,), generator=g)]
    rows = rows_of_lengths([(n - 1, 1) for n in lengths])
    budget, cost = 24, 5
    mbs = bucket_rows(rows, max_tokens=budget, pass_cost=cost)
    got = sum(mb.num_slots for mb in mbs) + cost * len(mbs)
    w = sorted(lengths, reverse=True)
    best = None
    for cuts in itertools.product([False, True], repeat=len(w) - 1):
        bounds = [0] + [k + 1 for k, c in enumerate(cuts) if c] + [len(w)]
        groups = [w[a:b] for a, b in zip(bounds, bounds[1:])]
        if any(len(gr) > 1 and len(gr) * gr[0] > budget for gr in groups):
            continue
        total = sum(len(gr) * gr[0] + cost for gr in groups)
        best = total if best is None else min(best, total)
    assert got == best
    assert all(mb.num_slots <= budget or len(mb.row_ids) == 1 for mb in mbs)


def test_empty_prompt_is_refused_and_empty_response_left_out():
    with pytest.raises(ValueError, match="empty prompt"):
        pack_rows([((), (1, 2))], max_tokens=8)
    mbs = pack_rows([((1, 2), ()), ((3,), (4,))], max_tokens=8)
    assert [mb.row_ids for mb in mbs] == [(1,)]
    assert pack_rows([], max_tokens=8) == []
    with pytest.raises(ValueError, match="layout"):
        make_micro_batches([((1,), (2,))], max_tokens=8, layout="ragged")  # type: ignore[arg-type]


def score_micro_batches(model: torch.nn.Module, mbs, n_rows: int, width: int) -> torch.Tensor:
    """[N, A] log-probs from full logits of each micro-batch (the test oracle for the packing layout)."""
    out = torch.zeros(n_rows, width)
    with torch.no_grad():
        for mb in mbs:
            logits = model(
                input_ids=mb.input_ids,
                position_ids=mb.position_ids,
                attention_mask=mb.attention_mask,
                use_cache=False,
            ).logits  # [B, L, V]
            logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)[mb.pred_index]
            out[mb.dest_row, mb.dest_col] = logp.gather(-1, mb.targets[:, None])[:, 0]
    return out


def score_one_by_one(model: torch.nn.Module, rows, width: int) -> torch.Tensor:
    """[N, A] log-probs with one plain forward per row (no packing, no padding)."""
    out = torch.zeros(len(rows), width)
    with torch.no_grad():
        for i, (p, r) in enumerate(rows):
            logits = model(input_ids=torch.tensor([list(p) + list(r)])).logits[0]  # [L, V]
            logp = torch.log_softmax(logits.float(), dim=-1)[len(p) - 1 : len(p) - 1 + len(r)]
            out[i, : len(r)] = logp.gather(-1, torch.tensor(r)[:, None])[:, 0]
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", ["packed", "bucketed"])
def test_layouts_match_one_row_at_a_time(attn: str, layout: str):
    model = tiny_model(VOCAB)
    model.set_attn_implementation(attn)
    rows = random_rows(9, seed=1)
    width = max(len(r) for _, r in rows)
    expected = score_one_by_one(model, rows, width)
    mbs = make_micro_batches(rows, max_tokens=24, layout=layout)
    assert len(mbs) > 1 and max(len(mb.row_ids) for mb in mbs) > 1  # several rows share a micro-batch
    got = score_micro_batches(model, mbs, len(rows), width)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_bucketed_rows_run_sdpa_causal_kernel_without_a_mask(monkeypatch):
    # a padded bucket must reach sdpa as is_causal=True with no mask tensor (the kernel that skips the upper
    # triangle); a 2-D padding mask would make transformers build a [B, 1, L, L] mask and call it with is_causal=False
    import torch.nn.functional as F

    model = tiny_model(VOCAB)
    model.set_attn_implementation("sdpa")
    rows = rows_of_lengths([(5, 2), (2, 1)])  # lengths 7 and 3: row 1 padded by 4
    (mb,) = bucket_rows(rows, max_tokens=64)
    assert mb.padding_tokens == 4
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    score_micro_batches(model, [mb], 2, 2)
    assert calls, "sdpa was not called"
    assert all(mask is None and causal for mask, causal in calls)
