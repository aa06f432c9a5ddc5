"""Micro-batch layouts on real ALFWorld turn lengths: sdar's packed and bucketed layouts vs plain padding, one run.

    sdar envs generate alfworld --n 8 --out /tmp/alfbench      # once: a few solvable games
    sdar model prepare smollm2-135m                              # once: the tokenizer the prompts are rendered with
    python bench/packing.py --games /tmp/alfbench
    python bench/packing.py --games /tmp/alfbench --response-len 32 512   # reasoning-length responses instead

Rows are ALFWorld turns: the expert plays every game, each turn's prompt is rendered exactly as the collector renders
it (SmolLM2 chat template, history of 2) and the response is the expert's ``<think>..</think><action>..</action>``
target plus eos, or, with ``--response-len``, random ids of uniform length in the given range (reasoning-length RL
responses). The same rows, in the same arrival order, go through three layouts with the same token budget per
micro-batch:

- ``padded``: the plain way: consecutive rows in arrival order, a fixed number per micro-batch (as many rows of
  the longest length as fit the budget), right-padded to the longest row of the micro-batch.
- ``bucketed`` (sdar): rows sorted by length, cut into right-padded micro-batches of at most the budget in slots.
- ``packed`` (sdar): rows concatenated into 1-D sequences with position ids restarting per row (first-fit
  decreasing). Without a flash-attention kernel transformers turns the restarts into a dense block-diagonal mask
  over the whole pack, so attention costs (pack length)^2 instead of the sum of (row length)^2.

Each layout runs a no-grad log-prob pass and an update pass (forward + backward of the summed response log-probs;
no optimizer step, which is the same for every layout) through the same scoring code as sdar's learner (decoder
hidden states, then the LM head in chunks on response positions only). The model is a randomly initialised Llama of
SmolLM2-135M's shape with ``--layers`` decoder layers (fewer layers scale every layout alike; the LM head only sees
response tokens, the same in every layout). Medians of k interleaved repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from flops import forward_flops

Row = tuple[tuple[int, ...], tuple[int, ...]]


def alfworld_rows(games: str, *, tokenizer_name: str, max_turns: int, history_length: int,
                  max_prompt_tokens: int) -> list[Row]:
    """(prompt ids, expert target ids + eos) of every turn of the expert's won episodes, game by game.

    The rows are cached in ``<games>/bench_turn_rows.json`` (playing the expert takes minutes); delete it to replay.
    """
    cache = Path(games) / "bench_turn_rows.json"
    key = {"tokenizer": tokenizer_name, "max_turns": max_turns, "history_length": history_length,
           "max_prompt_tokens": max_prompt_tokens}
    if cache.is_file():
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return [(tuple(pr), tuple(r)) for pr, r in stored["rows"]]
    from sdar.envs.registry import make_env_factory, make_task_source
    from sdar.models import load_tokenizer
    from sdar.commands.sft import encode_examples, expert_for, expert_turns

    if not Path(games).is_dir():
        raise SystemExit(f"no ALFWorld games in {games}: run `sdar envs generate alfworld --n 8 --out {games}` first")
    make_env = make_env_factory("alfworld", max_turns=max_turns, data_dir=games)
    tasks = make_task_source("alfworld", data_dir=games).tasks("train")
    turns = expert_turns(make_env, tasks, expert=expert_for("alfworld", "plan"), history_length=history_length,
                         max_turns=max_turns, seed=0)
    tokenizer = load_tokenizer(tokenizer_name)
    examples = encode_examples(tokenizer, turns, seed=0, max_prompt_tokens=max_prompt_tokens)
    rows = [(e.prompt_ids, e.target_ids) for e in examples]
    cache.write_text(json.dumps({"key": key, "rows": rows}), encoding="utf-8")
    return rows


def smollm2_shaped(layers: int, seed: int) -> Any:
    """A randomly initialised Llama model with SmolLM2-135M's shape (``layers`` decoder layers), fp32, sdpa."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      attn_implementation="sdpa")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.float().eval()


def layouts(rows: Sequence[Row], budget: int, names: Sequence[str] = ("padded", "bucketed", "packed"),
            pass_cost: int | None = None) -> dict[str, list[tuple[Any, int]]]:
    """Micro-batches of each layout as ``(micro_batch, row offset)``; ``dest_row + offset`` indexes ``rows``.
    ``bucketed-fill`` is the bucketed layout that fills every micro-batch to the budget (the fewest passes)."""
    from sdar.learner.packing import PASS_COST_TOKENS, bucket_rows, pack_rows

    longest = max(len(p) + len(r) for p, r in rows)
    per_batch = max(1, budget // longest)
    padded = []
    for start in range(0, len(rows), per_batch):  # one micro-batch of the consecutive rows, padded to their longest
        (mb,) = bucket_rows(rows[start : start + per_batch], max_tokens=10**12, pass_cost=10**12, share_prompts=False)
        padded.append((mb, start))
    cost = PASS_COST_TOKENS if pass_cost is None else pass_cost
    every = {
        "padded": lambda: padded,
        "bucketed": lambda: [(mb, 0) for mb in bucket_rows(rows, max_tokens=budget, pass_cost=cost)],
        "bucketed-fill": lambda: [(mb, 0) for mb in bucket_rows(rows, max_tokens=budget, pass_cost=10**9)],
        "packed": lambda: [(mb, 0) for mb in pack_rows(rows, max_tokens=budget)],
    }
    return {name: every[name]() for name in ["padded", *(n for n in names if n != "padded")]}


def score(model: Any, mb: Any) -> torch.Tensor:
    """Log-probs ``[R]`` of one micro-batch's response tokens, as sdar's learner computes them."""
    from sdar.algo.logprobs import hidden_token_logprobs

    out = model.get_decoder()(input_ids=mb.input_ids, position_ids=mb.position_ids,
                              attention_mask=mb.attention_mask, use_cache=False)
    hidden = out.last_hidden_state  # [B, L, H]
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, mb.pred_index)  # [R, H]
    lp, _ = hidden_token_logprobs(picked, model.get_output_embeddings().weight, mb.targets, chunk_size=1024)
    return lp


def model_flops(cfg: Any, shapes: Sequence[tuple[int, int]], head_positions: int) -> float:
    """Model FLOPs of one forward over micro-batches of ``(rows, width)`` each, padded slots included (every row of a
    micro-batch costs its width), plus the LM head on the ``head_positions`` scored positions (the same in every
    layout). A backward costs about twice its forward, so the update's ratios between layouts are the same."""
    return sum(forward_flops(cfg, [w] * b, 0) for b, w in shapes) + forward_flops(cfg, [], head_positions)


def logprob_pass(model: Any, micro: list[tuple[Any, int]], n: int, width: int) -> torch.Tensor:
    """``[N, A]`` log-probs of every row's response tokens, no gradient."""
    out = torch.zeros(n, width)
    with torch.no_grad():
        for mb, offset in micro:
            out[mb.dest_row + offset, mb.dest_col] = score(model, mb)
    return out


def update_pass(model: Any, micro: list[tuple[Any, int]], total: int) -> None:
    """Forward + backward of ``-sum(log-probs) / total`` over every micro-batch; gradients accumulate."""
    for mb, _ in micro:
        (-score(model, mb).sum() / total).backward()
    model.zero_grad(set_to_none=True)


def time_arms(model: Any, arms: dict[Any, list[tuple[Any, int]]], n: int, width: int, scored: int,
              repeats: int) -> tuple[dict[Any, dict[str, list[float]]], dict[Any, torch.Tensor]]:
    """Seconds of a log-prob pass and an update pass of every arm's micro-batches, ``repeats`` times after one
    warm-up, the arms interleaved with their order rotated each repetition; and each arm's last log-probs."""
    times: dict[Any, dict[str, list[float]]] = {k: {"logprobs": [], "update": []} for k in arms}
    results: dict[Any, torch.Tensor] = {}
    names = list(arms)
    for rep in range(repeats + 1):  # rep 0 = warm-up
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            t = time.perf_counter()
            results[name] = logprob_pass(model, arms[name], n, width)
            t_lp = time.perf_counter() - t
            t = time.perf_counter()
            update_pass(model, arms[name], scored)
            t_up = time.perf_counter() - t
            sys.stderr.write(f"repetition {rep}{' (warm-up)' if rep == 0 else ''} {name}: log-prob pass "
                             f"{t_lp:.2f}s, update pass {t_up:.2f}s\n")
            if rep > 0:
                times[name]["logprobs"].append(t_lp)
                times[name]["update"].append(t_up)
    return times, results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--games", default="/tmp/alfbench", help="folder from `sdar envs generate alfworld --out`")
    p.add_argument("--tokenizer", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=32, help="turns used (spread over all recorded turns)")
    p.add_argument("--response-len", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="random responses of uniform length instead of the expert's targets")
    p.add_argument("--micro-batch-tokens", type=int, default=4096)
    p.add_argument("--layers", type=int, default=6, help="decoder layers of the SmolLM2-shaped model (full: 30)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up; median reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layouts", nargs="+", default=["bucketed", "packed"],
                   choices=["bucketed", "bucketed-fill", "packed"], help="layouts timed beside padded")
    p.add_argument("--pass-cost", type=int, default=None,
                   help="bucketed: fixed cost of a pass in slots (default sdar's PASS_COST_TOKENS)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    all_rows = alfworld_rows(args.games, tokenizer_name=args.tokenizer, max_turns=50, history_length=2,
                             max_prompt_tokens=2048)
    if not all_rows:
        raise SystemExit(f"the expert won no game in {args.games}; generate more games")
    g = torch.Generator().manual_seed(args.seed)
    pick = sorted(torch.randperm(len(all_rows), generator=g)[: args.rows].tolist())  # arrival order kept
    rows = [all_rows[i] for i in pick]
    model = smollm2_shaped(args.layers, args.seed)
    if args.response_len is not None:
        lo, hi = args.response_len
        rows = [(pr, tuple(torch.randint(10, 49152, (int(torch.randint(lo, hi + 1, (1,), generator=g)),),
                                         generator=g).tolist())) for pr, _ in rows]
    n, width = len(rows), max(len(r) for _, r in rows)
    scored = sum(len(r) for _, r in rows)
    real = sum(len(pr) + len(r) for pr, r in rows)
    micro = layouts(rows, args.micro_batch_tokens, args.layouts, args.pass_cost)

    times, results = time_arms(model, micro, n, width, scored, args.repeats)

    out = sys.stdout.write
    prompt_lens = sorted(len(pr) for pr, _ in rows)
    resp_lens = sorted(len(r) for _, r in rows)
    out(f"command: {' '.join(sys.argv)}\n")
    out(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}\n")
    out(f"model: SmolLM2-135M shape, {args.layers} layers, random weights, fp32, sdpa\n")
    out(f"rows: {n} ALFWorld turns of {len(all_rows)} recorded in {args.games}; prompt tokens min {prompt_lens[0]} "
        f"median {prompt_lens[n // 2]} max {prompt_lens[-1]}; response tokens min {resp_lens[0]} median "
        f"{resp_lens[n // 2]} max {resp_lens[-1]} ({'expert targets' if args.response_len is None else 'random'}); "
        f"{real} real tokens, budget {args.micro_batch_tokens} tokens per micro-batch\n\n")
    padded_slots = sum(mb.num_slots for mb, _ in micro["padded"])
    limit = padded_slots / real  # the most any layout can win over padding: no padded slot at all
    shapes = {name: [tuple(mb.input_ids.shape) for mb, _ in mbs] for name, mbs in micro.items()}
    free = model_flops(model.config, [(1, len(pr) + len(r)) for pr, r in rows], scored)  # no padding at all
    work_limit = model_flops(model.config, shapes["padded"], scored) / free
    out(f"padding-free limit (padded slots / real tokens): {limit:.3f}x; 'of limit' = speed-up over padded / limit\n")
    out(f"padding-free limit of the model's work (FLOPs of padded / FLOPs without padding; the LM head on the "
        f"{scored} response tokens is the same in every layout): {work_limit:.3f}x; 'of work limit' likewise\n\n")
    out(f"{'layout':13s} {'micro':>5s} {'slots':>7s} {'padding':>8s} {'attn cells':>11s}  "
        f"{'log-prob pass':>28s} {'of limit':>8s} {'of work':>7s}  {'update pass':>28s} {'of limit':>8s} "
        f"{'of work':>7s}\n")
    for name, mbs in micro.items():
        slots = sum(mb.num_slots for mb, _ in mbs)
        # causal attention work: a padded row attends over its micro-batch width, a pack over its whole length
        cells = sum(mb.input_ids.shape[0] * mb.input_ids.shape[1] ** 2 // 2 for mb, _ in mbs)
        cols = []
        for k in ("logprobs", "update"):
            v = times[name][k]
            # each repetition's padded time over this layout's, run next to each other: the machine's drift
            # between repetitions (±15 % here) cancels in the pair, not in a ratio of medians
            speedup = statistics.median(a / b for a, b in zip(times["padded"][k], v))
            cols.append(f"{statistics.median(v):6.2f}s [{min(v):.2f}-{max(v):.2f}] {speedup:4.2f}x")
            cols.append(f"{speedup / limit:.0%}")
            cols.append(f"{speedup / work_limit:.0%}")
        out(f"{name:13s} {len(mbs):5d} {slots:7d} {(slots - real) / slots:8.1%} {cells / 1e6:10.1f}M  "
            f"{cols[0]:>28s} {cols[1]:>8s} {cols[2]:>7s}  {cols[3]:>28s} {cols[4]:>8s} {cols[5]:>7s}\n")
    diff = max(float((results[k] - results["padded"]).abs().max()) for k in results)
    out(f"\n(times: medians of {args.repeats} repetitions, [min-max] the spread; ratios: the median over repetitions "
        f"of padded time / layout time, each pair run back to back)\n")
    out(f"max |log-prob difference| between layouts: {diff:.2e}\n")
    return 0


if __name__ == "__main__":
    from sdar.allocator import keep_freed_memory  # as the `sdar` command does (SDAR_MALLOC=system: glibc's defaults)

    sys.stderr.write(f"glibc malloc: {keep_freed_memory()}\n")
    sys.exit(main())
