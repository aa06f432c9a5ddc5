"""Fixed-seed behaviour check: two training steps of every method on the testbed, metrics written to a JSON file,
or compared with an earlier file. Used to show that a change of structure leaves training unchanged.

    python scripts/fixed_seed_check.py --write before.json
    python scripts/fixed_seed_check.py --against before.json      # exit 1 and the differing keys when any differ

Timing and throughput metrics are left out (they differ from run to run); every other metric must be equal.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

from sdar.config import load_config
from sdar.commands.train import train

ROOT = Path(__file__).resolve().parents[1]
RUNS = [  # (name, overrides): every method reading the expert plan, and the skill-reading paths with skills
    *[(m, {"algo.method": m}) for m in ("grpo", "opsd", "grpo_opsd", "skill_sd", "rlsd", "sdar")],
    ("skill_grpo+skills", {"algo.method": "skill_grpo", "teacher.source": "skills", "rollout.max_prompt_tokens": 2560,
                           "teacher.max_prompt_tokens": 3072}),
    ("sdar+skills", {"algo.method": "sdar", "teacher.source": "skills", "teacher.max_prompt_tokens": 3072}),
    ("sdar+conversation", {"algo.method": "sdar", "rollout.view": "conversation"}),
    ("grpo+rloo", {"algo.method": "grpo", "algo.advantage": "rloo"}),
]
COMMON = {"total_steps": 2, "eval_every": 2, "eval_tasks": 4, "eval_at_start": False, "rollout.tasks_per_step": 2,
          "rollout.group_size": 2, "algo.kl_coef": 0.01, "env.max_turns": 4, "save_every": 0, "log.progress": False}
SKIP = ("timing/", "perf/", "time", "train/tokens_per_s")


def run_all() -> dict[str, list[dict[str, float]]]:
    torch.set_num_threads(1)
    out: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in RUNS:
            cfg = load_config(ROOT / "configs/testbed/rl.yaml",
                              overrides={**COMMON, **extra, "out_dir": f"{tmp}/{name}"})
            train(cfg)
            rows = [json.loads(line) for line in (Path(tmp) / name / "metrics.jsonl").read_text().splitlines()]
            out[name] = [{k: v for k, v in r.items() if not k.startswith(SKIP)} for r in rows]
            print(f"{name}: {len(rows)} rows", file=sys.stderr)
    return out


def differences(a: dict, b: dict) -> list[str]:
    diffs = []
    for name in sorted(set(a) | set(b)):
        ra, rb = a.get(name, []), b.get(name, [])
        if len(ra) != len(rb):
            diffs.append(f"{name}: {len(ra)} rows vs {len(rb)}")
            continue
        for i, (x, y) in enumerate(zip(ra, rb)):
            for k in sorted(set(x) | set(y)):
                u, v = x.get(k), y.get(k)
                same = u == v or (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v))
                if not same:
                    diffs.append(f"{name} row {i} {k}: {u} vs {v}")
    return diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path)
    g.add_argument("--against", type=Path)
    args = p.parse_args()
    got = run_all()
    if args.write:
        args.write.write_text(json.dumps(got, indent=1, sort_keys=True))
        print(f"written: {args.write} ({sum(len(v) for v in got.values())} rows)")
        return 0
    diffs = differences(json.loads(args.against.read_text()), got)
    print("\n".join(diffs[:50]) or f"identical: {len(got)} runs, every metric equal")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
