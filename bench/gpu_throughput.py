"""Update-step MFU, log-prob pass cost and rollout tokens/s of a Qwen2.5-1.5B-shaped model on one GPU, in one run.

    python bench/gpu_throughput.py            # H200-class GPU, bf16, random weights; finishes in a few minutes
    python bench/gpu_throughput.py --tiny     # tiny shapes on the CPU: exercises every code path in seconds

The model is built from a hand-written Qwen2 config (hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate
8960, vocab 151936, tied embeddings) with random weights, so nothing is downloaded. Measured, each as the median of
``--repeats`` runs after one warm-up:

(a) one forward + backward over ``rows x row_len`` tokens (default 4 x 2048; each row = prompt + response, the last
    ``response_len`` tokens are scored):
    - ``sdar``: sdar's learner path, ``LocalLearner.accumulate_gradients`` with rows packed into one sequence
      (position ids restart per row; varlen kernels under flash attention) and log-probs from the final hidden
      states through ``hidden_token_logprobs`` (the LM head in chunks, response positions only, never the full
      ``[T, V]`` fp32 logits);
    - ``plain``: ``model(input_ids, attention_mask)`` on the padded ``[rows, row_len]`` batch, full-vocabulary logits
      at every position, ``log_softmax`` in fp32, gather, backward.
    MFU = model FLOPs / time / peak (989 TFLOP/s dense bf16 for an H100/H200 SXM; ``--peak-tflops`` to change),
    model FLOPs = ``6 * N * T + 6 * L * D * sum_rows(S^2)``: N = parameters without the input embedding (the tied
    LM head counted once, as a matmul), T = tokens, L = layers, D = heads * head_dim, S = row length; the second
    term is causal attention (QK^T and AV, 2 * S^2 * D FLOPs each forward, halved by the causal mask, x3 for
    forward + backward). Both paths are rated with the same FLOP count, so their MFU ratio is their speed ratio.
(b) a no-grad log-prob pass of the learner over the same rows (``LocalLearner.logprobs``), relative to (a) sdar.
(c) rollout tokens/s, batch ``--gen-batch`` (256), prompt ``--gen-prompt`` (512), ``--gen-new`` (128) new tokens,
    sampling at temperature 1 with no truncation: ``model.generate`` (min_new_tokens = max_new_tokens), sdar's
    ``HFGenerator`` (its own KV-cache loop that also returns the sampled tokens' log-probs), and vLLM when it can be
    imported (the random weights saved to a temporary folder first; ``ignore_eos``); then the time of one weight push
    of the model (kept on the GPU) into that engine, as training does it after every update (goal <= 2 s).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from typing import Any, Callable

import torch

QWEN25_15B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  intermediate_size=8960, vocab_size=151936)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=512)


def build_model(shape: dict[str, int], *, dtype: torch.dtype, device: str, attn: str, seed: int) -> Any:
    """A randomly initialised Qwen2 causal LM with ``shape``, tied embeddings, on ``device``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1000000.0,
                      rms_norm_eps=1e-6, bos_token_id=shape["vocab_size"] - 2, eos_token_id=shape["vocab_size"] - 1,
                      pad_token_id=shape["vocab_size"] - 1, attn_implementation=attn)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    return model.to(dtype).eval()


def model_flops(model: Any, row_lengths: list[int]) -> float:
    """Training FLOPs of one forward + backward: ``6 * N * T + 6 * L * D * sum(S^2)`` (see the module docstring)."""
    cfg = model.config
    embed = model.get_input_embeddings().weight
    n = sum(p.numel() for p in model.parameters())  # tied: the shared matrix appears once, counted as the LM head
    if not cfg.tie_word_embeddings:
        n -= embed.numel()  # untied: the input embedding is a lookup, not a matmul
    d = cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    t = sum(row_lengths)
    return 6.0 * n * t + 6.0 * cfg.num_hidden_layers * d * sum(s * s for s in row_lengths)


class Timer:
    """Median wall time of a callable on the model's device (synchronised), after one warm-up call."""

    def __init__(self, device: str, repeats: int) -> None:
        self.device, self.repeats = device, repeats

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, list[float], Any]:
        fn()
        self.sync()
        times, out = [], None
        for _ in range(self.repeats):
            t = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times), times, out


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def update_benchmarks(model: Any, args: argparse.Namespace, timer: Timer, out: Callable[[str], Any]) -> None:
    """(a) and (b): sdar's packed, chunked-log-prob update vs a plain full-logits update; no-grad log-prob pass."""
    from sdar.algo.methods import resolve_loss
    from sdar.batch import TokenBatch
    from sdar.learner.local import LocalLearner

    device, vocab = args.device, model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab - 2, (args.rows, args.row_len), generator=g)  # [B, S]
    p_len, a = args.row_len - args.response_len, args.response_len
    n = args.rows
    batch = TokenBatch(prompts=tuple(tuple(r[:p_len].tolist()) for r in ids),
                       responses=tuple(tuple(r[p_len:].tolist()) for r in ids),
                       loss_mask=torch.ones(n, a, dtype=torch.bool), old_logprobs=torch.zeros(n, a),
                       advantages=torch.randn(n, 1, generator=g).expand(n, a).contiguous(),
                       group_ids=torch.zeros(n, dtype=torch.long), episode_ids=torch.arange(n),
                       turn_ids=torch.zeros(n, dtype=torch.long))
    learner = LocalLearner(model, lr=1e-6, micro_batch_tokens=n * args.row_len, layout="packed")
    spec = resolve_loss("grpo", kl_coef=0.0, entropy_coef=0.0)

    def sdar_update() -> None:
        learner.accumulate_gradients(batch, spec=spec)
        model.zero_grad(set_to_none=True)

    input_ids = ids.to(device)
    attention = torch.ones_like(input_ids)

    def plain_update() -> None:
        model.train()
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits  # [B, S, V]
        logp = torch.log_softmax(logits[:, p_len - 1 : -1].float(), dim=-1)  # [B, A, V] fp32
        lp = logp.gather(-1, input_ids[:, p_len:, None]).squeeze(-1)  # [B, A]
        (-lp.mean()).backward()
        model.zero_grad(set_to_none=True)
        model.eval()

    flops = model_flops(model, [args.row_len] * n)
    results = {}
    for name, fn in (("sdar", sdar_update), ("plain", plain_update)):
        reset_peak(device)
        med, times, _ = timer(fn)
        results[name] = med
        mfu = flops / med / (args.peak_tflops * 1e12)
        out(f"update {name:5s}: {med * 1e3:9.1f} ms  ({n * args.row_len / med:10.0f} tokens/s, MFU {mfu:6.1%}, "
            f"peak {peak_gib(device):6.2f} GiB; runs {', '.join(f'{t * 1e3:.1f}' for t in times)} ms)\n")
    out(f"update plain / sdar time: {results['plain'] / results['sdar']:.2f}x  "
        f"(model FLOPs per update {flops / 1e12:.2f} TFLOP)\n")
    reset_peak(device)
    med, times, _ = timer(lambda: learner.logprobs(batch))
    out(f"logprob pass: {med * 1e3:9.1f} ms  (no grad, {n * args.row_len / med:10.0f} tokens/s, peak "
        f"{peak_gib(device):6.2f} GiB); logprob pass / sdar update: {med / results['sdar']:.2f}\n")


def rollout_benchmarks(model: Any, args: argparse.Namespace, timer: Timer, out: Callable[[str], Any]) -> None:
    """(c): rollout tokens/s of model.generate, sdar's HFGenerator and (when importable) vLLM."""
    from sdar.rollout.generator import SamplingParams
    from sdar.rollout.hf import HFGenerator

    device, vocab = args.device, model.config.vocab_size
    eos = int(model.config.eos_token_id)
    g = torch.Generator().manual_seed(args.seed + 1)
    prompts = torch.randint(0, vocab - 2, (args.gen_batch, args.gen_prompt), generator=g)  # [B, P]
    new = args.gen_new

    def plain_generate() -> int:
        with torch.no_grad():
            seqs = model.generate(input_ids=prompts.to(device), attention_mask=torch.ones_like(prompts).to(device),
                                  do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                                  min_new_tokens=new, pad_token_id=eos)
        return int(seqs.shape[0] * (seqs.shape[1] - args.gen_prompt))

    tokenizer = types.SimpleNamespace(eos_token_id=eos, pad_token_id=eos, decode=lambda ids, **kw: "")
    generator = HFGenerator(model, tokenizer, batch_size=args.gen_batch)
    prompt_rows = [tuple(r) for r in prompts.tolist()]

    def sdar_generate() -> int:
        samples = generator.generate(prompt_rows, SamplingParams(max_new_tokens=new, temperature=1.0, seed=0))
        return sum(len(s.token_ids) for s in samples)

    rates = {}
    for name, fn in (("generate", plain_generate), ("hf_generator", sdar_generate)):
        reset_peak(device)
        med, times, tokens = timer(fn)
        rates[name] = tokens / med
        out(f"rollout {name:12s}: {rates[name]:10.0f} tokens/s  ({tokens} tokens in {med:.2f}s, peak "
            f"{peak_gib(device):6.2f} GiB; runs {', '.join(f'{t:.2f}' for t in times)} s)\n")
    out(f"rollout hf_generator / generate tokens/s: {rates['hf_generator'] / rates['generate']:.2f}x\n")

    if args.no_vllm or importlib.util.find_spec("vllm") is None or not device.startswith("cuda"):
        why = "--no-vllm" if args.no_vllm else ("not importable" if importlib.util.find_spec("vllm") is None
                                                 else "needs a GPU")
        out(f"rollout vllm        : skipped ({why})\n")
        return
    try:
        rate, med, tokens, pushes = vllm_rate(model, prompt_rows, args)
    except Exception as exc:  # noqa: BLE001 - report and keep the numbers already measured
        out(f"rollout vllm        : failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})\n")
        return
    out(f"rollout vllm        : {rate:10.0f} tokens/s  ({tokens} tokens in {med:.2f}s); vllm / generate "
        f"{rate / rates['generate']:.2f}x, vllm / hf_generator {rate / rates['hf_generator']:.2f}x\n")
    out(f"vllm weight push    : median {statistics.median(pushes):.2f}s (min {min(pushes):.2f}, max {max(pushes):.2f}) "
        f"for {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters in bf16 (goal <= 2 s)\n")


def vllm_rate(model: Any, prompt_rows: list[tuple[int, ...]], args: argparse.Namespace
              ) -> tuple[float, float, int, list[float]]:
    """Save the model, start vLLM on it (no tokenizer), time ``--repeats`` generate calls, then ``--repeats`` weight
    pushes of the (GPU-resident) model into the engine as training does (``VLLMGenerator.load_weights``: in place,
    one tensor at a time); (tokens/s, s, tokens, push seconds)."""
    from vllm import LLM, SamplingParams

    from sdar.rollout.vllm_engine import VLLMGenerator

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        gc.collect()
        torch.cuda.empty_cache()
        llm = LLM(model=folder, skip_tokenizer_init=True, dtype="bfloat16", gpu_memory_utilization=0.5,
                  max_model_len=args.gen_prompt + args.gen_new + 16, seed=args.seed,
                  logprobs_mode="processed_logprobs")
        params = SamplingParams(max_tokens=args.gen_new, temperature=1.0, ignore_eos=True, detokenize=False)
        requests = [{"prompt_token_ids": list(r)} for r in prompt_rows]
        llm.generate(requests[:8], params, use_tqdm=False)  # warm-up
        times, tokens = [], 0
        for _ in range(args.repeats):
            t = time.perf_counter()
            outs = llm.generate(requests, params, use_tqdm=False)
            times.append(time.perf_counter() - t)
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        engine, pushes = VLLMGenerator(llm), []
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            t = time.perf_counter()
            engine.load_weights((k, v.detach().to(torch.bfloat16)) for k, v in model.state_dict().items())
            torch.cuda.synchronize()
            pushes.append(time.perf_counter() - t)
    med = statistics.median(times)
    return tokens / med, med, tokens, pushes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny model and shapes (runs on a CPU in seconds)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--attn", default="auto", choices=["auto", "flash_attention_2", "sdpa", "eager"],
                   help="auto = flash_attention_2 when flash_attn is installed and a GPU is used, else sdpa")
    p.add_argument("--rows", type=int, default=None, help="rows of the update (default 4; tiny 2)")
    p.add_argument("--row-len", type=int, default=None, help="tokens per row (default 2048; tiny 64)")
    p.add_argument("--response-len", type=int, default=None, help="scored tokens per row (default 512; tiny 16)")
    p.add_argument("--gen-batch", type=int, default=None, help="rollout batch (default 256; tiny 4)")
    p.add_argument("--gen-prompt", type=int, default=None, help="rollout prompt tokens (default 512; tiny 16)")
    p.add_argument("--gen-new", type=int, default=None, help="new tokens per rollout row (default 128; tiny 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    p.add_argument("--no-vllm", action="store_true")
    p.add_argument("--skip-update", action="store_true", help="only the rollout measurements")
    p.add_argument("--skip-rollout", action="store_true", help="only the update measurements")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    small = {"rows": 2, "row_len": 64, "response_len": 16, "gen_batch": 4, "gen_prompt": 16, "gen_new": 8}
    large = {"rows": 4, "row_len": 2048, "response_len": 512, "gen_batch": 256, "gen_prompt": 512, "gen_new": 128}
    for key, value in (small if args.tiny else large).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0 < args.response_len < args.row_len:
        p.error("--response-len must be between 1 and --row-len - 1")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.attn == "auto":
        flash = importlib.util.find_spec("flash_attn") is not None and args.device.startswith("cuda")
        args.attn = "flash_attention_2" if flash else "sdpa"
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32

    out = sys.stdout.write
    started = time.perf_counter()
    model = build_model(TINY if args.tiny else QWEN25_15B, dtype=dtype, device=args.device, attn=args.attn,
                        seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    gpu = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    out(f"command: {' '.join(sys.argv)}\n")
    out(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {args.device}{gpu}, "
        f"torch {torch.__version__}\n")
    out(f"model: {'tiny' if args.tiny else 'Qwen2.5-1.5B'}-shaped Qwen2, {params / 1e6:.1f}M parameters, "
        f"{str(dtype).removeprefix('torch.')}, attention {args.attn}, random weights\n")
    out(f"update: {args.rows} rows x {args.row_len} tokens ({args.response_len} scored per row); rollout: batch "
        f"{args.gen_batch}, prompt {args.gen_prompt}, {args.gen_new} new tokens; median of {args.repeats} after a "
        f"warm-up\n\n")
    timer = Timer(args.device, args.repeats)
    if not args.skip_update:
        update_benchmarks(model, args, timer, out)
    if not args.skip_rollout:
        rollout_benchmarks(model, args, timer, out)
    out(f"total wall time: {time.perf_counter() - started:.1f}s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
