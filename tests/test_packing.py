"""Micro-batch packing: first-fit decreasing groups, scatter indices, padding, and packed == one-row-at-a-time."""

from __future__ import annotations

import dataclasses

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


# ------------------------------------------------------------------------------------------ shared prompts


def shared_rows() -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Rows 0 and 2 share the prompt (1, 2); row 1 has its own."""
    return [((1, 2), (7,)), ((3,), (8, 9)), ((1, 2), (5, 6))]


def test_shared_prompt_sequence_positions_mask_and_indices_by_hand():
    rows = shared_rows()
    (mb,) = bucket_rows(rows, max_tokens=64)
    # unit (0, 2): [1, 2 | 7 | 5, 6] (5 tokens) is longer than unit (1,): [3, 8, 9] (3 tokens, padded by 2)
    assert mb.row_ids == (0, 2, 1)
    assert mb.input_ids.tolist() == [[1, 2, 7, 5, 6], [3, 8, 9, 0, 0]]
    assert mb.num_tokens == 8 and mb.num_slots == 10
    # each response continues the prompt's positions; padding gets 0
    assert mb.position_ids.tolist() == [[0, 1, 2, 2, 3], [0, 1, 2, 0, 0]]
    t, f = True, False
    assert mb.attention_mask[0, 0].tolist() == [
        [t, f, f, f, f],  # prompt token 1
        [t, t, f, f, f],  # prompt token 2
        [t, t, t, f, f],  # response of row 0: the prompt and itself
        [t, t, f, t, f],  # response of row 2, token 5: the prompt and itself, not row 0's response
        [t, t, f, t, t],
    ]
    assert mb.attention_mask[1, 0].tolist() == [
        [t, f, f, f, f], [t, t, f, f, f], [t, t, t, f, f],
        [f, f, f, t, f], [f, f, f, f, t],  # padding sees itself only
    ]
    # predictors (flat over [2 * 5]): row 0's 7 <- flat 1 (last prompt token); row 2's 5 <- flat 1, its 6 <- flat 3;
    # row 1's 8 <- flat 5, its 9 <- flat 6
    assert mb.pred_index.tolist() == [1, 1, 3, 5, 6]
    assert mb.dest_row.tolist() == [0, 2, 2, 1, 1] and mb.dest_col.tolist() == [0, 0, 1, 0, 1]
    # without sharing: the layout of one row per sequence (and no mask)
    (plain,) = bucket_rows(rows, max_tokens=64, share_prompts=False)
    assert plain.attention_mask is None and plain.num_tokens == 10


def test_shared_prompt_unit_is_cut_at_the_budget():
    prompt = tuple(range(1, 7))  # 6 tokens
    rows = [(prompt, (10 + i, 20 + i)) for i in range(3)]  # 3 rows of 8 tokens; all in one unit: 12 tokens
    mbs = bucket_rows(rows, max_tokens=10)
    units = [mb.row_ids for mb in mbs]
    assert sorted(i for u in units for i in u) == [0, 1, 2]
    assert all(mb.num_slots <= 10 for mb in mbs)
    assert (0, 1) in units and (2,) in units  # 6 + 2 + 2 = 10 fits, the third response opens a new unit


def kernel_scored(model, mbs, n_rows: int, width: int, attn: str) -> torch.Tensor:
    """score_micro_batches with the mask in the form the learner hands the kernel."""
    from sdar.learner.local import _kernel_mask

    converted = [dataclasses.replace(mb, attention_mask=_kernel_mask(mb.attention_mask, attn, torch.device("cpu")))
                 for mb in mbs]
    return score_micro_batches(model, converted, n_rows, width)


def rows_with_repeated_prompts(seed: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    base = random_rows(8, seed)
    g = torch.Generator().manual_seed(seed + 100)
    extra = []
    for k in range(6):  # responses to earlier rows' prompts, of other lengths
        p = base[k % 3][0]
        extra.append((p, tuple(torch.randint(0, VOCAB, (int(torch.randint(1, 7, (1,), generator=g)),),
                                             generator=g).tolist())))
    return base + extra


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompts_match_one_row_at_a_time(attn: str):
    model = tiny_model(VOCAB)
    model.set_attn_implementation(attn)
    rows = rows_with_repeated_prompts(seed=2)
    width = max(len(r) for _, r in rows)
    expected = score_one_by_one(model, rows, width)
    mbs = bucket_rows(rows, max_tokens=40)
    assert any(mb.attention_mask is not None for mb in mbs)  # some micro-batch shares a prompt
    assert sum(mb.num_tokens for mb in mbs) < sum(len(p) + len(r) for p, r in rows)
    torch.testing.assert_close(kernel_scored(model, mbs, len(rows), width, attn), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompts_give_the_same_gradients_as_separate_rows(attn: str):
    from sdar.algo.methods import resolve_loss
    from sdar.batch import TokenBatch, pad_right
    from sdar.learner.local import LocalLearner

    rows = rows_with_repeated_prompts(seed=3)
    n, a = len(rows), max(len(r) for _, r in rows)
    g = torch.Generator().manual_seed(0)
    batch = TokenBatch(
        prompts=tuple(p for p, _ in rows), responses=tuple(r for _, r in rows),
        loss_mask=pad_right([[1.0] * len(r) for _, r in rows], a, dtype=torch.float32).bool(),
        old_logprobs=-torch.rand(n, a, generator=g), advantages=torch.randn(n, 1, generator=g).expand(n, a).clone(),
        group_ids=torch.arange(n) // 4, episode_ids=torch.arange(n), turn_ids=torch.zeros(n, dtype=torch.long))
    spec = resolve_loss("grpo", kl_coef=0.0, entropy_coef=0.01)
    grads = {}
    for share in (True, False):
        model = tiny_model(VOCAB)
        model.set_attn_implementation(attn)
        learner = LocalLearner(model, layout="bucketed", micro_batch_tokens=48, lr=1e-3)
        assert learner.share_prompts
        learner.share_prompts = share
        sums, fed, micro = learner.accumulate_gradients(batch, spec=spec)
        assert (any(mb.attention_mask is not None for mb in micro)) == share
        grads[share] = (torch.cat([p.grad.flatten() for p in learner.params]), learner.reduce_metrics(sums), fed)
    torch.testing.assert_close(grads[True][0], grads[False][0], atol=1e-5, rtol=1e-4)
    for key, value in grads[False][1].items():
        assert grads[True][1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert grads[True][2] < grads[False][2]  # fewer tokens fed forward


def test_learner_shares_prompts_only_where_the_kernel_takes_a_mask():
    from sdar.learner.local import LocalLearner

    model = tiny_model(VOCAB)
    assert LocalLearner(model, layout="bucketed").share_prompts
    assert not LocalLearner(model, layout="packed").share_prompts
    model.config._attn_implementation = "flash_attention_2"  # a kernel without 4-D masks
    assert not LocalLearner(model, layout="bucketed").share_prompts
