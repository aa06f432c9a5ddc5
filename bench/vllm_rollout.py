"""Rollout throughput of a colocated vLLM engine against the transformers loop on the same device, and the time of one
weight push (learner -> engine), side by side in one process.

    .venv-vllm/bin/python bench/vllm_rollout.py                         # SmolLM2-135M (`sdar model prepare smollm2-135m`)
    .venv-vllm/bin/python bench/vllm_rollout.py --batch 32 64 --repeats 3 --threads 2
    python bench/vllm_rollout.py --device cuda --dtype bfloat16 --batch 256  (a GPU machine with vLLM; gpu_check.sh)

For each batch size: ``batch`` prompts of ``--prompt-len`` random token ids (so no prefix is shared), ``--new``
sampled tokens at most each at temperature 1 (a row ends early only at eos, rare on random prompts), after one untimed warm-up call each, timed for ``--repeats`` rounds, alternating backends. Printed: generated tokens/s
(median, min–max) of each backend and the ratio vLLM / transformers per round. The weight push is what
``sdar.runtime.WeightSync.refresh`` does in one process: the learner's weights (with LoRA: merged) cast to the
engine's dtype and loaded into the engine (fused q/k/v and gate/up, post-load processing, prefix cache cleared).
Run it on a quiet machine: the ratio is only meaningful side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.3g}–{max(values):.3g})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, nargs="+", default=[32])
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads for the transformers loop (0 = default)")
    p.add_argument("--kv-cache-gib", type=float, default=2.0, help="vLLM KV cache on CPUs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from sdar.learner.local import LocalLearner
    from sdar.models import load_model, load_tokenizer, resolve_dtype, resolve_model_path
    from sdar.rollout.generator import SamplingParams
    from sdar.rollout.hf import HFGenerator
    from sdar.rollout.vllm_engine import VLLMGenerator

    dtype = resolve_dtype(args.dtype)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    learner = LocalLearner(model, lr=1e-6)
    max_batch = max(args.batch)
    engine = VLLMGenerator.from_model_dir(resolve_model_path(args.model), dtype=dtype, seed=0,
                                          max_model_len=args.prompt_len + args.new + 8,
                                          kv_cache_gib=None if args.device == "cuda" else args.kv_cache_gib,
                                          max_num_seqs=max(max_batch, 8))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU {_cpu_name()}"
    params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model} ({params / 1e6:.1f} M parameters, {args.dtype}), {device}, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}")

    pushes = []
    for _ in range(args.repeats):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.load_weights(learner.export_weights(dtype))
        if args.device == "cuda":
            torch.cuda.synchronize()
        pushes.append(time.perf_counter() - t0)
    print(f"weight push (export_weights -> load_weights): {_spread(pushes)} s over {args.repeats} pushes")

    special = set(tok.all_special_ids)
    vocab = [i for i in range(min(len(tok), 30000)) if i not in special]
    print("| batch | transformers tok/s | vLLM tok/s | vLLM / transformers |")
    print("|---|---|---|---|")
    for batch in args.batch:
        g = torch.Generator().manual_seed(batch)
        prompts = [[vocab[int(i)] for i in torch.randint(len(vocab), (args.prompt_len,), generator=g)]
                   for _ in range(batch)]
        sampling = SamplingParams(max_new_tokens=args.new, temperature=1.0, seed=1)
        hf = HFGenerator(model, tok, batch_size=batch)
        # rows end at eos or after args.new tokens; tokens/s counts what each backend generated
        hf_rates, vl_rates, ratios = [], [], []
        warm = dataclasses.replace(sampling, max_new_tokens=2)
        hf.generate(prompts, warm), engine.generate(prompts, warm)  # first-call set-up, untimed
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out_hf = hf.generate(prompts, dataclasses.replace(sampling, seed=r))
            t_hf = time.perf_counter() - t0
            t0 = time.perf_counter()
            out_vl = engine.generate(prompts, dataclasses.replace(sampling, seed=r))
            t_vl = time.perf_counter() - t0
            n_hf = sum(len(s.token_ids) for s in out_hf)
            n_vl = sum(len(s.token_ids) for s in out_vl)
            hf_rates.append(n_hf / t_hf)
            vl_rates.append(n_vl / t_vl)
            ratios.append(vl_rates[-1] / hf_rates[-1])
        print(f"| {batch} | {_spread(hf_rates)} | {_spread(vl_rates)} | {_spread(ratios)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
