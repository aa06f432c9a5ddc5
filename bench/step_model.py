"""A step-time model of one paper-scale training step, stage by stage, from per-token costs.

The paper's ALFWorld setting (16 tasks x 8 episodes, up to 50 turns, history 2, responses up to 512 tokens,
Qwen2.5-3B-Instruct) is priced on a cluster given the throughput numbers a GPU run measures: the update's and the
no-grad passes' model-FLOPs utilisation, the rollout engine's decode rate and the weight-push bandwidth. Every number
the model assumes is an option, so measured values (``bench/gpu_check.sh`` prints MFU and tokens/s) replace the
defaults directly:

    python bench/step_model.py                                  # the defaults, 8 x H100
    python bench/step_model.py --update-mfu 0.30 --decode-tokens-per-s 3000     # measured values instead

Stages, as the training loop runs them (``sdar/commands/train.py``):

* rollout: every turn prefills its prompt (the history window makes most of each prompt new to the engine) and
  decodes the response; turns of one episode run one after another, so decoding is priced per GPU at the engine's
  measured decode rate for that GPU's share of the episodes.
* old log-probs: one no-grad pass over every token (skipped when the sampler's log-probs are trusted, which under
  bf16 they are not: ``rollout/logprob_diff_p99`` decides, see the README).
* teacher: one no-grad pass over the same responses with the privileged text in the prompt.
* reference: one no-grad pass, when the KL coefficient is > 0 (the paper: 0.01).
* update: forward + backward (x 4/3 with activation checkpointing) over every token, one PPO epoch.
* weight push: the policy cast to bf16 and gathered one tensor at a time into every rank's engine.

FLOPs per token: 2 x parameters for a forward pass plus the attention term 4 x layers x context x hidden (causal, so
half of the square), x 3 for forward + backward. The model prints the stage times, the total, and the reference run's
measured stages beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

REFERENCE = {  # one user's first step of the reference code, Qwen2.5-3B on ALFWorld, 4 x A100-80G (3.83 M tokens)
    "rollout": 425.0, "old log-probs": 179.0, "teacher": 260.0, "reference": 175.0, "update": 774.0,
}
REFERENCE_TOTAL = 1816.0


@dataclasses.dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's size (Qwen2.5-3B by default)."""

    params: float = 3.09e9
    layers: int = 36
    hidden: int = 2048


@dataclasses.dataclass(frozen=True)
class Workload:
    """One step of the paper's ALFWorld run."""

    episodes: int = 128  # 16 tasks x 8
    turns: float = 30.0  # mean turns per episode (50 at most; failing episodes run to the limit)
    tokens: float = 3.83e6  # prompt + response tokens over all turn rows (the reference step's count)
    response_tokens: float = 80.0  # mean sampled tokens per turn
    teacher_extra_tokens: float = 400.0  # privileged text per turn row (retrieved skills)
    new_prompt_share: float = 0.5  # share of each prompt the engine has not cached from the turn before


@dataclasses.dataclass(frozen=True)
class Cluster:
    gpus: int = 8
    peak_tflops: float = 989.0  # dense bf16 per GPU (H100 SXM)
    update_mfu: float = 0.40
    forward_mfu: float = 0.45
    prefill_mfu: float = 0.45
    decode_tokens_per_s: float = 4000.0  # per GPU, summed over the GPU's share of the episodes decoding together
    push_gbytes_per_s: float = 20.0  # gathered bf16 weights into the engine, per-tensor overheads included
    turn_overhead_s: float = 0.15  # environment step + scheduling per turn (ALFWorld: 30-130 ms a step)


def flops_per_token(shape: Shape, context: float) -> float:
    """Forward FLOPs of one token at mean attention context ``context``."""
    return 2.0 * shape.params + 4.0 * shape.layers * context * shape.hidden / 2.0


def stages(shape: Shape, work: Workload, cluster: Cluster, *, kl: bool = True, recompute_old: bool = True,
           checkpointing: bool = True) -> dict[str, float]:
    """Seconds per stage of one step."""
    rows = work.episodes * work.turns
    row_len = work.tokens / rows
    fwd = flops_per_token(shape, row_len / 2.0)  # a causal row: mean context half its length
    fwd_teacher = flops_per_token(shape, (row_len + work.teacher_extra_tokens) / 2.0)
    flops_per_s = cluster.gpus * cluster.peak_tflops * 1e12
    out: dict[str, float] = {}
    prompt_tokens = work.tokens - rows * work.response_tokens
    prefill = prompt_tokens * work.new_prompt_share * fwd / (flops_per_s * cluster.prefill_mfu)
    # each GPU decodes its share of the episodes together, turn after turn
    decode = work.turns * (work.episodes / cluster.gpus) * work.response_tokens / cluster.decode_tokens_per_s
    out["rollout"] = prefill + decode + work.turns * cluster.turn_overhead_s
    out["old log-probs"] = work.tokens * fwd / (flops_per_s * cluster.forward_mfu) if recompute_old else 0.0
    out["teacher"] = (work.tokens + rows * work.teacher_extra_tokens) * fwd_teacher / (flops_per_s * cluster.forward_mfu)
    out["reference"] = work.tokens * fwd / (flops_per_s * cluster.forward_mfu) if kl else 0.0
    out["update"] = work.tokens * fwd * (4.0 if checkpointing else 3.0) / (flops_per_s * cluster.update_mfu)
    out["weight push"] = shape.params * 2.0 / (cluster.push_gbytes_per_s * 1e9)
    return out


def table(shape: Shape, work: Workload, cluster: Cluster, **kw: bool) -> str:
    got = stages(shape, work, cluster, **kw)
    total = sum(got.values())
    lines = [f"| stage | this design, {cluster.gpus} GPUs x {cluster.peak_tflops:g} TFLOPs (s) | share | "
             "reference, 4 x A100 (s) |", "|---|---:|---:|---:|"]
    for name, secs in got.items():
        ref = REFERENCE.get(name)
        lines.append(f"| {name} | {secs:.1f} | {secs / total:.0%} | {'' if ref is None else f'{ref:.0f}'} |")
    lines.append(f"| **total** | **{total:.1f}** | 100% | **{REFERENCE_TOTAL:.0f}** |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for cls in (Shape, Workload, Cluster):
        for f in dataclasses.fields(cls):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    p.add_argument("--no-kl", action="store_true", help="no reference pass (kl_coef 0)")
    p.add_argument("--sampler-logprobs", action="store_true", help="trust the sampler's log-probs (fp32 engines)")
    p.add_argument("--no-checkpointing", action="store_true", help="update without activation checkpointing")
    args = vars(p.parse_args(argv))

    def pick(cls: type) -> object:
        return cls(**{f.name: args[f.name] for f in dataclasses.fields(cls)})

    shape, work, cluster = pick(Shape), pick(Workload), pick(Cluster)
    sys.stdout.write(table(shape, work, cluster, kl=not args["no_kl"], recompute_old=not args["sampler_logprobs"],
                           checkpointing=not args["no_checkpointing"]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
