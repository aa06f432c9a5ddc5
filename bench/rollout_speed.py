"""Training-rollout time of the transformers generator with and without its two prefill savings, side by side.

    python bench/rollout_speed.py                                          # the SmolLM2 testbed preset (LoRA)
    python bench/rollout_speed.py --config configs/testbed/rl.yaml --repeats 5

Arms (the same training rollouts: same steps, same sampling seeds, interleaved in one process):

* ``plain``: every prompt prefilled on its own row, LoRA adapters computed as branches beside each projection;
* ``dedup``: identical prompts of a call prefilled once (a GRPO group's first turn, and later turns while the
  members act alike), their cache rows copied;
* ``shared``: also the prefix all distinct prompts of a call share (system turn, task preamble) prefilled once;
* ``shared+merged``: also the adapters merged into one weight copy for the rollout (``rollout.merge_lora``, fp32
  LoRA runs only; the arm is left out for a model without adapters).

Prints each arm's seconds (median, min, max), the ratio to ``plain`` per repetition, the prompt tokens the dedup
and shared arms prefill of all prompt tokens, and the training success of each arm (equal seeds give equal episodes up to
floating-point rounding).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/testbed/smollm2_rl.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="override model.name (e.g. smollm2-135m when no warm start exists)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sdar.config import load_config
    from sdar.learner.lora import merged_for_sampling
    from sdar.rollout import hf
    from sdar.runtime import build

    overrides = {"log": {"progress": False, "tensorboard": False}, "out_dir": "/tmp/sdar-bench-rollout-speed"}
    if args.model:
        overrides["model"] = {"name": args.model}
    parts = build(load_config(args.config, overrides=overrides))
    gen = parts.generator
    if not isinstance(gen, hf.HFGenerator):
        sys.exit("this bench measures the transformers generator (rollout.backend: hf)")
    prefix_min = gen.shared_prefix_min
    arms = {"plain": (False, None, prefix_min), "dedup": (True, None, 1 << 30), "shared": (True, None, prefix_min)}
    if gen.sampling_view is not None:
        arms["shared+merged"] = (True, merged_for_sampling, prefix_min)

    prefilled = {"distinct": 0, "prefix": 0, "all": 0}
    original = hf.unique_prompts

    def counting(prompts):  # tokens the sharing arms prefill, from the calls the generator makes
        unique, of_row = original(prompts)
        shared = hf.common_prefix(unique)
        prefilled["distinct"] += sum(map(len, unique))
        prefilled["prefix"] += shared * (len(unique) - 1) if shared >= prefix_min else 0
        prefilled["all"] += sum(map(len, prompts))
        return unique, of_row

    hf.unique_prompts = counting
    times: dict[str, list[float]] = {a: [] for a in arms}
    try:
        for rep in range(args.repeats):
            order = list(arms) if rep % 2 == 0 else list(reversed(arms))
            for arm in order:
                gen.share_prompts, gen.sampling_view, gen.shared_prefix_min = arms[arm]
                t = time.perf_counter()
                rollout = parts.collector.train(rep)  # step `rep`: every arm samples with the same seeds
                times[arm].append(time.perf_counter() - t)
                print(f"rep {rep} {arm}: {times[arm][-1]:.1f} s, training success "
                      f"{rollout.metrics.get('rollout/success', float('nan')):.3f}", flush=True)
    finally:  # the module's own function back (the bench may run inside another process's tests)
        hf.unique_prompts = original
        parts.close()

    print(f"\nCPU: {cpu_name()} ({os.cpu_count()} cores visible), threads {args.threads}, torch {torch.__version__}, "
          f"config {args.config}")
    for arm, ts in times.items():
        line = f"{arm:>14}: median {statistics.median(ts):.1f} s (min {min(ts):.1f}, max {max(ts):.1f})"
        if arm != "plain":
            ratios = [a / b for a, b in zip(ts, times["plain"])]
            line += f"; ratio to plain {', '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})"
        print(line)
    total = max(prefilled["all"], 1)
    distinct, shared = prefilled["distinct"], prefilled["distinct"] - prefilled["prefix"]
    print(f"prompt tokens prefilled, of {prefilled['all']} (summed over the arms' rollouts): dedup {distinct} "
          f"({distinct / total:.1%}), shared {shared} ({shared / total:.1%})")
    return 0


if __name__ == "__main__":
    from sdar.allocator import keep_freed_memory  # as the `sdar` command does (SDAR_MALLOC=system: glibc's defaults)

    sys.stderr.write(f"glibc malloc: {keep_freed_memory()}\n")
    raise SystemExit(main())
