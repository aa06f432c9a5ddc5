"""Does a full fine-tuning step at the paper's learning rate move the weights, in the precision `auto` picks here?

    python bench/precision_check.py                 # cuda when available (auto = fp32 masters + bf16 compute)
    python bench/precision_check.py --device cpu

A Qwen2-style model (``--tiny`` shapes by default on the CPU, a 4-layer 1536-wide slice of a Qwen2.5-1.5B shape on a
GPU) with every matrix drawn from N(0, 0.02) takes 10 AdamW steps at lr 1e-6 through sdar's learner in each of
``auto``, ``mixed_bf16`` and ``pure_bf16``; printed: the share of matrix entries that changed (goal: ≥ 99% for
``auto``/``mixed_bf16``; ``pure_bf16`` rounds most updates away) and the weights' dtype.
"""

from __future__ import annotations

import argparse
import sys

import torch


def build(shape: str, device: str, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if shape == "tiny":
        cfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    else:  # a slice of Qwen2.5-1.5B: its widths, 4 of its 28 layers, a short vocabulary
        cfg = Qwen2Config(vocab_size=8192, hidden_size=1536, intermediate_size=8960, num_hidden_layers=4,
                          num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    return model.to(device=device, dtype=dtype)


def batch(vocab: int, rows: int, prompt: int, width: int, seed: int = 0):
    from sdar.batch import TokenBatch

    g = torch.Generator().manual_seed(seed)
    return TokenBatch(
        prompts=tuple(tuple(torch.randint(0, vocab, (prompt,), generator=g).tolist()) for _ in range(rows)),
        responses=tuple(tuple(torch.randint(0, vocab, (width,), generator=g).tolist()) for _ in range(rows)),
        loss_mask=torch.ones(rows, width, dtype=torch.bool), old_logprobs=torch.full((rows, width), -9.0),
        advantages=torch.randn(rows, 1, generator=g).expand(rows, width).clone(),
        group_ids=torch.zeros(rows, dtype=torch.long), episode_ids=torch.arange(rows),
        turn_ids=torch.zeros(rows, dtype=torch.long))


def changed_share(precision: str, device: str, shape: str, steps: int) -> tuple[float, torch.dtype, str]:
    from sdar.algo.methods import resolve_loss
    from sdar.learner.local import LocalLearner
    from sdar.precision import resolve_precision

    plan = resolve_precision(precision, device, lr=1e-6)
    model = build(shape, device, plan.weight_dtype)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.dim() >= 2}
    learner = LocalLearner(model, lr=1e-6, autocast_dtype=plan.autocast_dtype, micro_batch_tokens=4096)
    b, spec = batch(model.config.vocab_size, 4, 32, 32), resolve_loss("grpo", kl_coef=0.0)
    for _ in range(steps):
        learner.train_step(b, spec=spec)
    changed = sum(int((p != before[k]).sum()) for k, p in model.named_parameters() if p.dim() >= 2)
    return changed / sum(v.numel() for v in before.values()), plan.weight_dtype, plan.name


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=["tiny", "slice"], default=None, help="default: slice on cuda, tiny on cpu")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    shape = args.shape or ("slice" if args.device.startswith("cuda") else "tiny")
    print(f"{args.steps} AdamW steps at lr 1e-6, {shape} model on {args.device}")
    ok = True
    for precision in ("auto", "mixed_bf16", "pure_bf16"):
        share, dtype, name = changed_share(precision, args.device, shape, args.steps)
        print(f"  {precision:10s} -> {name:10s} weights {str(dtype).removeprefix('torch.'):8s} changed {share:7.2%}",
              flush=True)
        if precision != "pure_bf16" and share < 0.99:
            ok = False
    print("fp32 masters move: " + ("yes" if ok else "NO (below 99% of the weights)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
