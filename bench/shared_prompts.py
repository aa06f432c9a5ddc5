"""The learner's passes with rows that share prompts fed once (the default) against one sequence per row.

    python bench/shared_prompts.py                         # 8 prompts x 4 responses, testbed-like turn lengths
    python bench/shared_prompts.py --group 8 --prompt-len 400 900 --response-len 16 64 --layers 6

Rows are GRPO-shaped: ``--prompts`` random prompts, each answered by ``--group`` random responses (a group's first
turn, where every member sees the same prompt). Both arms run the same rows through the bucketed layout with the same
token budget, one no-grad log-prob pass and one update pass (forward and backward of the summed response log-probs,
no optimizer step) each, through the scoring code of sdar's learner; arms interleaved, order alternating, one
warm-up. The model is a randomly initialised Llama of SmolLM2-135M's shape with ``--layers`` decoder layers.
Printed: tokens fed per arm, seconds per pass (median, min–max) and the ratio shared/separate per repetition, and the
largest log-prob difference between the arms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

from packing import smollm2_shaped, time_arms
from rollout_speed import cpu_name


def grouped_rows(prompts: int, group: int, prompt_len: tuple[int, int], response_len: tuple[int, int],
                 seed: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo: int, hi: int) -> tuple[int, ...]:
        return tuple(torch.randint(10, 49152, (int(torch.randint(lo, hi + 1, (1,), generator=g)),),
                                   generator=g).tolist())

    rows = []
    for _ in range(prompts):
        prompt = ids(*prompt_len)
        rows.extend((prompt, ids(*response_len)) for _ in range(group))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4, help="responses per prompt")
    p.add_argument("--prompt-len", type=int, nargs=2, default=(180, 260), metavar=("MIN", "MAX"))
    p.add_argument("--response-len", type=int, nargs=2, default=(8, 24), metavar=("MIN", "MAX"))
    p.add_argument("--micro-batch-tokens", type=int, default=2048)
    p.add_argument("--layers", type=int, default=6, help="decoder layers of the SmolLM2-shaped model (full: 30)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from sdar.learner.packing import bucket_rows

    rows = grouped_rows(args.prompts, args.group, tuple(args.prompt_len), tuple(args.response_len), args.seed)
    model = smollm2_shaped(args.layers, args.seed)
    n, width = len(rows), max(len(r) for _, r in rows)
    scored = sum(len(r) for _, r in rows)
    arms = {share: [(mb, 0) for mb in bucket_rows(rows, max_tokens=args.micro_batch_tokens, share_prompts=share)]
            for share in (True, False)}
    times, results = time_arms(model, arms, n, width, scored, args.repeats)

    out = sys.stdout.write
    out(f"command: {' '.join(sys.argv)}\n")
    out(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}\n")
    out(f"model: SmolLM2-135M shape, {args.layers} layers, random weights, fp32, sdpa\n")
    out(f"rows: {args.prompts} prompts x {args.group} responses, prompt tokens {args.prompt_len[0]}-"
        f"{args.prompt_len[1]}, response tokens {args.response_len[0]}-{args.response_len[1]}; "
        f"budget {args.micro_batch_tokens} tokens per micro-batch\n")
    for share, name in ((False, "separate"), (True, "shared")):
        fed = sum(mb.num_tokens for mb, _ in arms[share])
        out(f"{name:>8}: {len(arms[share])} micro-batches, {fed} tokens fed, "
            f"{sum(mb.num_slots for mb, _ in arms[share])} slots\n")
    for k in ("logprobs", "update"):
        a, b = times[True][k], times[False][k]
        ratios = ", ".join(f"{x / y:.3f}" for x, y in zip(a, b))
        out(f"{k:>8}: shared {statistics.median(a):.2f}s [{min(a):.2f}-{max(a):.2f}], separate "
            f"{statistics.median(b):.2f}s [{min(b):.2f}-{max(b):.2f}]; shared/separate {ratios}\n")
    out(f"max |log-prob difference| between the arms: {float((results[True] - results[False]).abs().max()):.2e}\n")
    return 0


if __name__ == "__main__":
    from sdar.allocator import keep_freed_memory  # as the `sdar` command does (SDAR_MALLOC=system: glibc's defaults)

    sys.stderr.write(f"glibc malloc: {keep_freed_memory()}\n")
    sys.exit(main())
