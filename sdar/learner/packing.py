"""Group ragged (prompt, response) rows into micro-batches: packed 1-D sequences or padded length buckets.

Both layouts produce the same :class:`PackedMicroBatch` record, which carries everything needed to run the model
once and to put each response token's log-prob back at its ``[N, A]`` position:

- ``packed``: rows are concatenated into one sequence (batch dimension 1) and ``position_ids`` restart at 0 for each
  row. With ``attention_mask=None`` and no KV cache, transformers 5 reads the position restarts as sequence
  boundaries and builds a block-diagonal causal mask, so rows never attend to each other (checked against one row
  at a time for the eager and sdpa kernels; for another attention kernel, check it or use ``bucketed``). The model
  must be called with ``use_cache=False``: with a cache object the packed-sequence detection is switched off and
  rows leak into each other.
- ``bucketed``: rows are sorted by length, split into the consecutive groups that waste the fewest slots (padding
  plus a fixed cost per pass), and right-padded to the longest row of their micro-batch. No attention mask: under
  causal attention a real token only sees the tokens before it, never the padding after it, so plain causal
  attention gives every real position exactly what a padding mask would. Without a mask tensor transformers hands
  sdpa ``is_causal=True`` (its causal kernel skips the upper triangle: about half the attention work of a masked
  call), and position ids simply count on through the padding (no restart, so no packed-sequence detection).

  Rows with the same prompt share it (``share_prompts``, on by default): such rows become one sequence, the prompt
  once and then each response, every response attending to the prompt and to itself only, its positions counting
  on from the end of the prompt. A group's episodes send identical prompts at their first turn and while they act
  alike, so a GRPO batch holds many; the prompt's forward and backward then run once. A micro-batch holding such a
  sequence carries a ``[B, 1, L, L]`` boolean attention mask (True = may attend); one without keeps the maskless
  causal path.

Pure functions of token ids; no model, no device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

__all__ = ["PASS_COST_TOKENS", "Layout", "PackedMicroBatch", "bucket_rows", "make_micro_batches", "pack_rows", "padding_ratio"]

Layout = Literal["packed", "bucketed"]
Row = tuple[Sequence[int], Sequence[int]]


@dataclass(frozen=True)
class PackedMicroBatch:
    """One forward pass worth of rows, in either layout.

    The "predictor" of response token ``j`` of a row is the input position just before it: the last prompt token
    predicts response token 0, response token ``j - 1`` predicts token ``j``.
    """

    input_ids: Tensor
    """[B, L] long. B = 1 for the packed layout."""
    position_ids: Tensor
    """[B, L] long. Packed: restart at 0 for every row. Bucketed: ``0 .. L - 1`` on every row (padding included);
    with a shared prompt, each response's positions count on from the end of the prompt (padding 0)."""
    attention_mask: Tensor | None
    """None, except for a bucketed micro-batch holding rows that share a prompt: then ``[B, 1, L, L]`` bool, True
    where a query position may attend to a key position (every position, padding included, may attend to at least
    one). Packed rows are told apart by their position restarts, other bucketed rows are right-padded (see the
    module docstring)."""
    row_ids: tuple[int, ...]
    """Indices (into the input row list) of the rows in this micro-batch, in layout order."""
    pred_index: Tensor
    """[R] long. Flat index into the ``[B * L]`` positions of the hidden state that predicts each response token."""
    targets: Tensor
    """[R] long. The response token ids being scored."""
    dest_row: Tensor
    """[R] long. Row (index into the input row list) of each scored token."""
    dest_col: Tensor
    """[R] long. Position of each scored token inside its response (the ``A`` axis)."""
    num_tokens: int
    """Real (non-padding) tokens fed to the model."""

    @property
    def num_slots(self) -> int:
        """Tokens the model actually processes, padding included (``B * L``)."""
        return int(self.input_ids.numel())

    @property
    def padding_tokens(self) -> int:
        return self.num_slots - self.num_tokens

    @property
    def local_row(self) -> Tensor:
        """[R] long. Row of each scored token counted inside this micro-batch (0 .. len(row_ids) - 1)."""
        lookup = torch.full((max(self.row_ids, default=-1) + 1,), -1, dtype=torch.long)
        lookup[torch.as_tensor(self.row_ids, dtype=torch.long)] = torch.arange(len(self.row_ids))
        return lookup[self.dest_row]


def _check_rows(rows: Sequence[Row], max_tokens: int) -> list[int]:
    """Validate the rows and return their lengths (prompt + response)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    lengths = []
    for i, (prompt, response) in enumerate(rows):
        if len(prompt) == 0:
            raise ValueError(
                f"row {i} has an empty prompt; the first response token needs a preceding token to be scored "
                "(prepend at least a BOS or chat-template token)"
            )
        lengths.append(len(prompt) + len(response))
    return lengths


def _build(rows: Sequence[Row], groups: Sequence[Sequence[Sequence[int]]], *, packed: bool) -> list[PackedMicroBatch]:
    """Materialise micro-batches from groups of units; a unit is rows sharing one prompt (one row: no sharing).

    A unit's sequence is its prompt followed by each of its rows' responses. Packed micro-batches take one-row
    units only (their rows are told apart by position restarts, which cannot express a shared prompt)."""
    out = []
    for group in groups:
        seqs: list[list[int]] = []
        response_starts: list[list[int]] = []  # per unit: where each of its responses begins in its sequence
        for unit in group:
            seq = list(rows[unit[0]][0])
            begins = []
            for i in unit:
                begins.append(len(seq))
                seq.extend(rows[i][1])
            seqs.append(seq)
            response_starts.append(begins)
        lengths = [len(s) for s in seqs]
        shared = any(len(unit) > 1 for unit in group)
        if packed:
            if shared:
                raise ValueError("the packed layout cannot share a prompt between rows; use one-row units")
            input_ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)[None]  # [1, L]
            position_ids = torch.cat([torch.arange(n) for n in lengths])[None]  # [1, L]
            attention_mask = None
            starts = [sum(lengths[:k]) for k in range(len(group))]
        else:
            width = max(lengths)
            input_ids = torch.zeros(len(group), width, dtype=torch.long)  # [B, L] right-padded
            for k, s in enumerate(seqs):
                input_ids[k, : len(s)] = torch.tensor(s, dtype=torch.long)
            starts = [k * width for k in range(len(group))]
            if shared:
                position_ids, attention_mask = _shared_prompt_mask(rows, group, response_starts, width)
            else:
                attention_mask = None  # right padding: causal attention alone keeps real tokens off the padding
                position_ids = torch.arange(width).expand(len(group), width)  # [B, L]
        pred, tgt, drow, dcol = [], [], [], []
        for k, unit in enumerate(group):
            last_prompt = starts[k] + len(rows[unit[0]][0]) - 1  # flat position of the unit's last prompt token
            for i, begin in zip(unit, response_starts[k]):
                response = rows[i][1]
                # token 0 is predicted by the last prompt token, token j by the response's own token j - 1
                pred.append(last_prompt)
                pred.extend(range(starts[k] + begin, starts[k] + begin + len(response) - 1))
                tgt.extend(response)
                drow.extend([i] * len(response))
                dcol.extend(range(len(response)))
        out.append(
            PackedMicroBatch(
                input_ids=input_ids,
                position_ids=position_ids.contiguous(),
                attention_mask=attention_mask,
                row_ids=tuple(i for unit in group for i in unit),
                pred_index=torch.tensor(pred, dtype=torch.long),
                targets=torch.tensor(tgt, dtype=torch.long),
                dest_row=torch.tensor(drow, dtype=torch.long),
                dest_col=torch.tensor(dcol, dtype=torch.long),
                num_tokens=sum(lengths),
            )
        )
    return out


def _shared_prompt_mask(rows: Sequence[Row], group: Sequence[Sequence[int]], response_starts: Sequence[Sequence[int]],
                        width: int) -> tuple[Tensor, Tensor]:
    """Position ids ``[B, L]`` and the boolean mask ``[B, 1, L, L]`` of right-padded units that share prompts.

    The prompt attends causally to itself; each response attends to the whole prompt and causally to itself, never
    to another response; its positions continue from the prompt's end, exactly as if it followed the prompt alone.
    A padding position attends to itself only (so no softmax row is empty)."""
    b = len(group)
    positions = torch.zeros(b, width, dtype=torch.long)  # [B, L]
    mask = torch.zeros(b, 1, width, width, dtype=torch.bool)  # [B, 1, L, L]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for k, unit in enumerate(group):
        p = len(rows[unit[0]][0])
        positions[k, :p] = torch.arange(p)
        mask[k, 0, :p, :p] = causal[:p, :p]
        end = p
        for i, begin in zip(unit, response_starts[k]):
            n = len(rows[i][1])
            positions[k, begin : begin + n] = torch.arange(p, p + n)
            mask[k, 0, begin : begin + n, :p] = True
            mask[k, 0, begin : begin + n, begin : begin + n] = causal[:n, :n]
            end = begin + n
        pad = torch.arange(end, width)
        mask[k, 0, pad, pad] = True
    return positions, mask


def _prompt_units(rows: Sequence[Row], keep: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Rows of ``keep`` grouped by identical prompt (first-seen order), each unit cut so that its sequence (prompt
    plus its responses) stays within ``max_tokens`` where it can (a unit always takes at least one row)."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i in keep:
        by_prompt.setdefault(tuple(rows[i][0]), []).append(i)
    units: list[list[int]] = []
    for prompt, members in by_prompt.items():
        unit: list[int] = []
        used = len(prompt)
        for i in members:
            n = len(rows[i][1])
            if unit and used + n > max_tokens:
                units.append(unit)
                unit, used = [], len(prompt)
            unit.append(i)
            used += n
        units.append(unit)
    return units


def _by_length_desc(rows: Sequence[Row], lengths: Sequence[int]) -> list[int]:
    """Indices of rows with a non-empty response, longest first; ties keep input order (deterministic).

    Rows without response tokens have nothing to score, so they are left out of every micro-batch.
    """
    keep = [i for i in range(len(rows)) if len(rows[i][1]) > 0]
    return sorted(keep, key=lambda i: (-lengths[i], i))


def pack_rows(rows: Sequence[Row], *, max_tokens: int) -> list[PackedMicroBatch]:
    """Pack rows into 1-D sequences of at most ``max_tokens`` tokens (first-fit decreasing).

    Rows are taken longest first; each goes into the first micro-batch that still has room, else opens a new one.
    A row longer than ``max_tokens`` gets a micro-batch of its own.

    Args:
        rows: ``(prompt_ids, response_ids)`` pairs. Prompts must be non-empty; rows with an empty response are
            left out.
        max_tokens: Token budget per micro-batch.

    Returns:
        Micro-batches with ``input_ids`` of shape ``[1, L]``, ``L <= max_tokens`` unless a single row is longer.
    """
    lengths = _check_rows(rows, max_tokens)
    groups: list[list[int]] = []
    used: list[int] = []
    for i in _by_length_desc(rows, lengths):
        for g, total in enumerate(used):
            if total + lengths[i] <= max_tokens:
                groups[g].append(i)
                used[g] += lengths[i]
                break
        else:
            groups.append([i])
            used.append(lengths[i])
    return _build(rows, [[[i] for i in g] for g in groups], packed=True)


PASS_COST_TOKENS = 64
"""What one extra forward/backward pass costs in fixed overhead (kernel launches, Python, the LM head's chunks), in
padded slots: :func:`bucket_rows` splits a micro-batch only where that saves more padding than this."""


def bucket_rows(rows: Sequence[Row], *, max_tokens: int, pass_cost: int = PASS_COST_TOKENS,
                share_prompts: bool = True) -> list[PackedMicroBatch]:
    """Sort rows by length and cut them into right-padded micro-batches of at most ``max_tokens`` slots, choosing the
    cuts that minimise the total cost ``slots + pass_cost * micro-batches``.

    A micro-batch of ``b`` rows whose longest row has ``w`` tokens costs ``b * w`` slots. Over the rows sorted longest
    first, the best cuts come from a dynamic programme (the optimal split into consecutive groups); filling each
    micro-batch to the budget instead can put a short row beside a long one and pad it to the long one's length. A row
    longer than ``max_tokens`` gets a micro-batch of its own. With ``share_prompts`` the units sorted and cut are the
    sequences of rows sharing a prompt (the prompt once, then each response; see the module docstring).

    Args:
        rows: ``(prompt_ids, response_ids)`` pairs. Prompts must be non-empty; rows with an empty response are
            left out.
        max_tokens: Slot budget (padding included) per micro-batch.
        pass_cost: Fixed cost of one more micro-batch, in slots (0 = fewest padded slots, whatever the passes).
        share_prompts: Feed a prompt that several rows share once.

    Returns:
        Micro-batches with ``input_ids`` of shape ``[B, L]``, longest units first.
    """
    _check_rows(rows, max_tokens)
    if pass_cost < 0:
        raise ValueError(f"pass_cost must be >= 0, got {pass_cost}")
    keep = sorted(i for i in range(len(rows)) if len(rows[i][1]) > 0)
    units = _prompt_units(rows, keep, max_tokens) if share_prompts else [[i] for i in keep]
    unit_len = [len(rows[u[0]][0]) + sum(len(rows[i][1]) for i in u) for u in units]
    order = sorted(range(len(units)), key=lambda u: (-unit_len[u], units[u][0]))  # longest first, then input order
    width = [unit_len[u] for u in order]  # non-increasing: the first unit of a group sets its width
    n = len(order)
    best = [0] * (n + 1)  # best[j]: least cost of the first j units
    start = [0] * (n + 1)  # start[j]: where the last group of that best split begins
    for j in range(1, n + 1):
        best[j], start[j] = best[j - 1] + width[j - 1] + pass_cost, j - 1  # unit j - 1 alone
        for i in range(j - 2, -1, -1):  # the group order[i:j] of j - i units, width width[i]
            slots = (j - i) * width[i]
            if slots > max_tokens:
                break  # earlier starts are wider and longer still
            cost = best[i] + slots + pass_cost
            if cost <= best[j]:  # ties: the larger group (fewer passes)
                best[j], start[j] = cost, i
    groups: list[list[list[int]]] = []
    j = n
    while j > 0:
        groups.append([units[u] for u in order[start[j] : j]])
        j = start[j]
    return _build(rows, groups[::-1], packed=False)


def make_micro_batches(rows: Sequence[Row], *, max_tokens: int, layout: Layout,
                       share_prompts: bool = True) -> list[PackedMicroBatch]:
    """Dispatch to :func:`pack_rows` or :func:`bucket_rows` (which shares prompts unless told not to)."""
    match layout:
        case "packed":
            return pack_rows(rows, max_tokens=max_tokens)
        case "bucketed":
            return bucket_rows(rows, max_tokens=max_tokens, share_prompts=share_prompts)
        case _:
            raise ValueError(f"layout must be 'packed' or 'bucketed', got {layout!r}")


def padding_ratio(micro_batches: Sequence[PackedMicroBatch]) -> float:
    """Fraction of processed slots that are padding (0.0 for the packed layout)."""
    slots = sum(mb.num_slots for mb in micro_batches)
    return 0.0 if slots == 0 else sum(mb.padding_tokens for mb in micro_batches) / slots


def choose_layout(layout: str, model: Any) -> str:
    """``auto``: pack rows only when the attention kernel handles packed sequences natively (flash attention);
    with dense kernels (sdpa/eager) a packed row costs attention over the whole packed length, so pad by buckets."""
    if layout != "auto":
        return layout
    impl = str(getattr(model.config, "_attn_implementation", "") or "")
    return "packed" if "flash" in impl else "bucketed"
