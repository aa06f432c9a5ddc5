"""Seconds per stage of a GRPO step and an SDAR step on the same batch, measured side by side in one run.

    python bench/step_breakdown.py                     # SmolLM2-135M (run `sdar model prepare smollm2-135m` once)
    python bench/step_breakdown.py --model tiny-random --rows 8 --prompt-len 448 --response-len 64

The batch is N rows of (prompt, response) token ids; the teacher rows carry the same responses behind a longer
prompt (the privileged text). A GRPO step = old-log-prob pass + reference pass + update; an SDAR step = one no-grad
pass over the old rows and the teacher rows together + reference pass + update with the SDAR term; "sdar_rollout"
takes the old log-probs from the sampler (exact when the generator is the training model) and scores only the
teacher rows. Goals: the SDAR step costs at most one extra forward over the teacher rows
(sdar_total - grpo_total <= teacher_forward), and with rollout log-probs it needs no more passes than a GRPO step
that recomputes old log-probs (the reference code's old, reference, update). "grpo_tpass" runs SDAR's passes with
GRPO's objective: the difference between its update and SDAR's is the SDAR term's own cost, the rest of an SDAR
update's excess over GRPO's comes from running after a bigger no-grad pass (allocator and cache state).
Peak memory is the process's maximum resident set (CPU) or the CUDA allocator's peak.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import sys
import time

import torch


def build_batch(n: int, prompt_len: int, response_len: int, vocab: int, seed: int):
    from sdar.batch import TokenBatch

    g = torch.Generator().manual_seed(seed)
    prompts = [tuple(torch.randint(10, vocab, (prompt_len,), generator=g).tolist()) for _ in range(n)]
    responses = [tuple(torch.randint(10, vocab, (response_len,), generator=g).tolist()) for _ in range(n)]
    adv = torch.randn(n, 1, generator=g).expand(n, response_len).clone()
    return TokenBatch(prompts=tuple(prompts), responses=tuple(responses),
                      loss_mask=torch.ones(n, response_len, dtype=torch.bool),
                      old_logprobs=torch.zeros(n, response_len), advantages=adv,
                      group_ids=torch.arange(n) // 4, episode_ids=torch.arange(n), turn_ids=torch.zeros(n, dtype=torch.long))


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=448)
    p.add_argument("--response-len", type=int, default=64)
    p.add_argument("--privileged-len", type=int, default=128, help="extra teacher prompt tokens")
    p.add_argument("--micro-batch-tokens", type=int, default=4096)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--layout", default="bucketed", choices=["packed", "bucketed"])
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions (after one warm-up); best is reported")
    args = p.parse_args(argv)

    from sdar.algo.methods import resolve_loss
    from sdar.learner.local import LocalLearner
    from sdar.models import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, dtype=args.dtype, device=device)
    vocab = model.get_output_embeddings().weight.shape[0]
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    learner = LocalLearner(model, reference_model=reference, lr=1e-7, micro_batch_tokens=args.micro_batch_tokens,
                           layout=args.layout, gradient_checkpointing=args.gradient_checkpointing)
    batch = build_batch(args.rows, args.prompt_len, args.response_len, vocab, seed=0)
    extra = build_batch(args.rows, args.privileged_len, 1, vocab, seed=1).prompts
    teacher = batch.with_prompts([e + p for e, p in zip(extra, batch.prompts)])
    grpo, sdar = resolve_loss("grpo"), resolve_loss("sdar")

    def grpo_step():
        t = {}
        (old,), t["old_logprobs"] = timed(lambda: learner.logprobs_many([batch]))
        (ref, _), t["reference"] = timed(lambda: learner.logprobs(batch, model="reference"))
        b = batch.with_old_logprobs(old)
        _, t["update"] = timed(lambda: learner.train_step(b, spec=grpo, ref_logprobs=ref, teacher_logprobs=None))
        return t

    def sdar_passes_step(spec):
        # SDAR's passes (the teacher rows scored beside the old ones), then an update with ``spec``: with GRPO's
        # objective ("grpo_tpass") an update slower than GRPO's comes from running after the bigger pass
        t = {}
        (old, tea), t["old+teacher_logprobs"] = timed(lambda: learner.logprobs_many([batch, teacher]))
        (ref, _), t["reference"] = timed(lambda: learner.logprobs(batch, model="reference"))
        b = batch.with_old_logprobs(old)
        tea = tea if spec.uses_aux else None
        _, t["update"] = timed(lambda: learner.train_step(b, spec=spec, ref_logprobs=ref, teacher_logprobs=tea))
        return t

    def sdar_rollout_step():
        # old log-probs taken from the sampler (exact when it shares the training model): only the teacher is scored
        t = {}
        (tea,), t["teacher_logprobs"] = timed(lambda: learner.logprobs_many([teacher]))
        (ref, _), t["reference"] = timed(lambda: learner.logprobs(batch, model="reference"))
        _, t["update"] = timed(lambda: learner.train_step(batch, spec=sdar, ref_logprobs=ref, teacher_logprobs=tea))
        return t

    def teacher_forward():
        return {"teacher_forward": timed(lambda: learner.logprobs_many([teacher]))[1]}

    best: dict[str, dict[str, float]] = {}
    for rep in range(args.repeats + 1):  # interleaved so both see the same machine state
        for name, fn in (("grpo", grpo_step), ("sdar", lambda: sdar_passes_step(sdar)),
                         ("grpo_tpass", lambda: sdar_passes_step(grpo)),
                         ("sdar_rollout", sdar_rollout_step), ("teacher", teacher_forward)):
            t = fn()
            if rep == 0:
                continue  # warm-up
            if name not in best or sum(t.values()) < sum(best[name].values()):
                best[name] = t

    threads = torch.get_num_threads()
    sys.stdout.write(f"command: {' '.join(sys.argv)}\n")
    sys.stdout.write(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
                     f"{threads}, device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
                     + f"\nbatch: {args.rows} rows x ({args.prompt_len} prompt + {args.response_len} response) tokens, "
                     f"teacher prompts +{args.privileged_len} tokens, micro-batch {args.micro_batch_tokens} tokens, "
                     f"{args.dtype}, layout {args.layout}, grad-ckpt {args.gradient_checkpointing}\n\n")
    for name in ("grpo", "sdar", "grpo_tpass", "sdar_rollout"):
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in best[name].items())
        sys.stdout.write(f"{name:12s} step {sum(best[name].values()):7.2f}s  ({stages})\n")
    g, s, tf = sum(best["grpo"].values()), sum(best["sdar"].values()), best["teacher"]["teacher_forward"]
    sys.stdout.write(f"\nsdar / grpo step time          : {s / g:.3f}\n")
    sys.stdout.write(f"extra seconds of the sdar step  : {s - g:.2f}s vs one teacher forward {tf:.2f}s "
                     f"(ratio {(s - g) / tf:.2f}; goal <= 1)\n")
    u_g, u_s, u_t = (best[k]["update"] for k in ("grpo", "sdar", "grpo_tpass"))
    sys.stdout.write(f"update: sdar {u_s:.2f}s, grpo {u_g:.2f}s, grpo after sdar's passes {u_t:.2f}s "
                     f"(sdar - grpo_tpass = {u_s - u_t:+.2f}s: the SDAR term's own cost)\n")
    r = sum(best["sdar_rollout"].values())
    sys.stdout.write(f"sdar (rollout old log-probs) / grpo (recomputed old log-probs, as the reference code): "
                     f"{r / g:.3f}  (same passes: one no-grad pass, reference, update)\n")
    sys.stdout.write(f"peak memory                     : {peak_memory_gb():.2f} GiB (goal < 8 GiB)\n")
    return 0


if __name__ == "__main__":
    from sdar.allocator import keep_freed_memory  # as the `sdar` command does (SDAR_MALLOC=system: glibc's defaults)

    sys.stderr.write(f"glibc malloc: {keep_freed_memory()}\n")
    sys.exit(main())
