"""Sampler-vs-learner log-prob difference per sampled token, for each precision, on one rollout of the built-in game.

    python bench/logprob_diff.py                                   # SmolLM2-135M (`sdar model prepare smollm2-135m`)
    python bench/logprob_diff.py --model tiny-random --precisions fp32 mixed_bf16

For each precision the run's own parts are built (`sdar.runtime.build`), one training rollout is sampled with
the configured generator (its log-probs are what `algo.old_logprobs: rollout` would use), and the learner re-scores
the same rows as it does for `recompute`. Printed per precision: tokens, mean / 99th percentile / max of
|log p_sampler − log p_learner| in nats, and whether the 99th percentile is within `algo.logprob_tolerance`.
Not a timing benchmark: the numbers are properties of the kernels, so the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def measure(model: str, precision: str, args: argparse.Namespace, out_dir: str) -> dict[str, float]:
    from sdar.algo.correction import logprob_diff_stats
    from sdar.config import load_config
    from sdar.data.tokenize import turn_rows
    from sdar.runtime import build

    cfg = load_config(ROOT / "configs/demo_cpu.yaml", overrides={
        "model.name": model, "model.precision": precision, "model.dtype": "auto", "rollout.backend": args.backend,
        "rollout.tasks_per_step": args.tasks, "rollout.group_size": args.group, "env.max_turns": args.turns,
        "rollout.max_new_tokens": args.max_new_tokens, "seed": args.seed, "out_dir": out_dir,
        "log.tensorboard": False, "log.progress": False})
    parts = build(cfg)
    try:
        batch = turn_rows(parts.collector.train(0).trajectories)
        learner_lp, _ = parts.learner.logprobs(batch)
        return logprob_diff_stats(learner_lp, batch.old_logprobs, batch.loss_mask)
    finally:
        parts.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--precisions", nargs="+", default=["fp32", "mixed_bf16", "pure_bf16"])
    p.add_argument("--backend", default="hf")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--turns", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sdar.config import AlgoConfig

    tol = AlgoConfig().logprob_tolerance
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU {cpu}"
    print(f"model {args.model}, backend {args.backend}, {device}, torch {torch.__version__}")
    print("| precision | tokens | mean | p99 | max | p99 within tolerance |")
    print("|---|---|---|---|---|---|")
    for precision in args.precisions:
        with tempfile.TemporaryDirectory() as tmp:
            s = measure(args.model, precision, args, tmp)
        print(f"| {precision} | {int(s['tokens'])} | {s['mean']:.2e} | {s['p99']:.2e} | {s['max']:.2e} | "
              f"{'yes' if s['p99'] <= tol else 'no'} ({tol:g}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
