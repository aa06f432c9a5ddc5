"""One SDAR update step (sdar's LocalLearner) vs one step of TRL's experimental SDPO trainer, side by side in one run.

    pip install -e '.[bench]'           # trl==1.16.0; best in its own virtual environment (it pulls datasets etc.)
    python bench/vs_trl_sdpo.py                         # SmolLM2-135M shape, random weights, 8 rows
    python bench/vs_trl_sdpo.py --layers 4 --repeats 1  # quick look

Both sides get the same randomly initialised Llama model of SmolLM2-135M's shape (each its own copy, fp32, sdpa
attention, no dropout) and the same single-turn data: N prompts, a privileged context per prompt, and fixed
(pre-generated) responses, all random token ids of varied lengths. Generation, rewards and advantages are outside the
timed region on both sides. One timed step is:

- sdar: ``learner.logprobs_many([teacher_rows])`` (no-grad pass of the current policy over prompt + privileged
  context + response) and ``learner.train_step`` with the SDAR loss (clipped PG + gated teacher-student term +
  entropy bonus, KL off), which runs the forward/backward over the student rows, clips gradients and takes an AdamW
  step. Old log-probs come from the sampler (computed once before timing), as in sdar's default.
- TRL: ``SDPOTrainer.training_step`` on a pre-built training batch (the dict its rollout stage would produce:
  left-padded prompts, right-padded completions, teacher ids = teacher prompt + completion), followed by what
  ``Trainer``'s loop does after it: gradient clipping, ``optimizer.step``, ``lr_scheduler.step``, ``zero_grad``.
  ``training_step`` runs ``compute_loss``: the student forward with gradients and the teacher forward without, each
  returning ``[N, A + 1, V]`` logits, then the sampled-token self-distillation loss (TRL's default mode) and
  backward. The teacher is ``teacher_model_kind="live"`` (the current student, as in sdar; TRL's default ``ema``
  teacher loads a second model from the Hub and adds an EMA update), KL off (TRL's default ``beta=0``).

So both sides score the teacher rows once without gradients and run one forward/backward over the student rows and
one optimizer step over the same tokens. The script prints the median and spread of k interleaved repetitions.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from flops import forward_flops  # bench/flops.py

_MISSING_TRL = (
    "bench/vs_trl_sdpo.py needs trl 1.16.0 (trl.experimental.sdpo), which is not installed. Install the bench "
    "extra, best in a separate virtual environment: pip install -e '.[bench]'"
)


def smollm2_shaped(layers: int, seed: int) -> Any:
    """A randomly initialised Llama model with SmolLM2-135M's shape (``layers`` decoder layers), fp32, sdpa."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2, attn_implementation="sdpa")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.float().eval()


def make_data(n: int, prompt: tuple[int, int], privileged: tuple[int, int], response: tuple[int, int],
              vocab: int, seed: int) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """(prompts, privileged contexts, responses): random ids, lengths uniform in each inclusive range."""
    g = torch.Generator().manual_seed(seed)

    def rows(lo: int, hi: int) -> list[list[int]]:
        lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
        return [torch.randint(10, vocab, (k,), generator=g).tolist() for k in lengths]

    return rows(*prompt), rows(*privileged), rows(*response)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------------------------ sdar
def sdar_side(model: Any, prompts, privileged, responses, *, micro_batch_tokens: int, layout: str):
    """A ``step()`` callable timing (teacher pass, update) of sdar's learner."""
    from sdar.algo.methods import resolve_loss
    from sdar.batch import TokenBatch, pad_right
    from sdar.learner.local import LocalLearner

    n = len(prompts)
    width = max(len(r) for r in responses)
    mask = pad_right([[1.0] * len(r) for r in responses], width, dtype=torch.float32).bool()  # [N, A]
    adv = (torch.arange(n, dtype=torch.float32) % 2 * 2 - 1)[:, None].expand(n, width) * mask  # [N, A] +-1
    batch = TokenBatch(prompts=tuple(map(tuple, prompts)), responses=tuple(map(tuple, responses)), loss_mask=mask,
                       old_logprobs=torch.zeros(n, width), advantages=adv.contiguous(),
                       group_ids=torch.zeros(n, dtype=torch.long), episode_ids=torch.arange(n),
                       turn_ids=torch.zeros(n, dtype=torch.long))
    teacher = batch.with_prompts([c + p for c, p in zip(privileged, prompts)])
    learner = LocalLearner(model, lr=1e-6, micro_batch_tokens=micro_batch_tokens, layout=layout)  # type: ignore[arg-type]
    spec = resolve_loss("sdar", kl_coef=0.0)
    (old,) = learner.logprobs_many([batch])  # the sampler's log-probs (exact for a sampler sharing the model)
    batch = batch.with_old_logprobs(old * mask)

    def step() -> dict[str, float]:
        box: dict[str, Any] = {}
        t_teacher = timed(lambda: box.setdefault("tea", learner.logprobs_many([teacher])[0]))
        t_update = timed(lambda: learner.train_step(batch, spec=spec, teacher_logprobs=box["tea"]))
        return {"teacher": t_teacher, "update": t_update}

    return step


# ------------------------------------------------------------------------------------------------------------- TRL
def trl_side(model: Any, prompts, privileged, responses, *, out_dir: str):
    """A ``step()`` callable timing one SDPOTrainer training step plus the optimizer part of Trainer's loop."""
    try:
        from datasets import Dataset
        from trl.experimental.sdpo import SDPOConfig, SDPOTrainer
        from trl.trainer.utils import pad
    except ImportError as exc:
        raise SystemExit(f"{_MISSING_TRL} ({exc})") from None
    from sdar.tiny import byte_tokenizer

    n = len(prompts)
    tokenizer = byte_tokenizer()  # decoding only; the model reads the ids given below
    pad_id = int(tokenizer.pad_token_id)
    args = SDPOConfig(output_dir=out_dir, per_device_train_batch_size=n, gradient_accumulation_steps=1,
                      num_generations=n, max_completion_length=max(len(r) for r in responses),
                      learning_rate=1e-6, weight_decay=0.01, max_grad_norm=1.0, teacher_model_kind="live",
                      use_cpu=True, bf16=False, fp16=False, report_to="none", logging_steps=10**6,
                      save_strategy="no", disable_tqdm=True, seed=0)
    data = Dataset.from_dict({"prompt": ["x"] * n})
    trainer = SDPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=data, processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer._prepare_inputs = lambda batch: batch  # the batch below is what its rollout stage would return
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop, which is not used here

    def left(rows):
        ids = pad([torch.tensor(r) for r in rows], padding_value=pad_id, padding_side="left")
        return ids, pad([torch.ones(len(r), dtype=torch.long) for r in rows], padding_value=0, padding_side="left")

    def right(rows):
        ids = pad([torch.tensor(r) for r in rows], padding_value=pad_id, padding_side="right")
        return ids, pad([torch.ones(len(r), dtype=torch.long) for r in rows], padding_value=0, padding_side="right")

    prompt_ids, prompt_mask = left(prompts)
    completion_ids, completion_mask = right(responses)
    teacher_prompt_ids, teacher_prompt_mask = left([c + p for c, p in zip(privileged, prompts)])
    batch = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "raw_completion_lengths": torch.tensor([len(r) for r in responses]),
        "advantages": (torch.arange(n, dtype=torch.float32) % 2 * 2 - 1),
        "rewards": torch.zeros(n),
        "teacher_input_ids": torch.cat([teacher_prompt_ids, completion_ids], dim=1),
        "teacher_attention_mask": torch.cat([teacher_prompt_mask, completion_mask], dim=1),
        "self_distillation_mask": torch.ones(n),
    }
    trainer.model.train()

    def step() -> dict[str, float]:
        def run() -> None:
            trainer.training_step(trainer.model, dict(batch), num_items_in_batch=None)
            torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), args.max_grad_norm)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        return {"step": timed(run)}

    return step


def matmul_rate(h: int, inter: int, seconds: float = 1.0) -> float:
    """FLOP/s of an fp32 [4096, h] @ [h, inter] matmul (the model's MLP shape) with the current threads, best of
    repeated calls for about ``seconds``."""
    a, b = torch.randn(4096, h), torch.randn(h, inter)
    torch.mm(a, b)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        best = min(best, timed(lambda: torch.mm(a, b)))
    return 2 * 4096 * h * inter / best


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}s (min {min(values):.2f}, max {max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(128, 384), metavar=("MIN", "MAX"))
    p.add_argument("--privileged-len", type=int, nargs=2, default=(64, 192), metavar=("MIN", "MAX"))
    p.add_argument("--response-len", type=int, nargs=2, default=(32, 256), metavar=("MIN", "MAX"))
    p.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M has 30)")
    p.add_argument("--micro-batch-tokens", type=int, default=8192, help="sdar's token budget per pass")
    p.add_argument("--layout", default="bucketed", choices=["bucketed", "packed"], help="sdar's micro-batch layout")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up; median reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.stderr.write(_MISSING_TRL + "\n")
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    base = smollm2_shaped(args.layers, args.seed)
    vocab = base.config.vocab_size
    prompts, privileged, responses = make_data(args.rows, tuple(args.prompt_len), tuple(args.privileged_len),
                                               tuple(args.response_len), vocab, args.seed)
    sdar_step = sdar_side(copy.deepcopy(base), prompts, privileged, responses,
                          micro_batch_tokens=args.micro_batch_tokens, layout=args.layout)
    with tempfile.TemporaryDirectory() as out_dir:
        trl_step = trl_side(copy.deepcopy(base), prompts, privileged, responses, out_dir=out_dir)
        times: dict[str, list[dict[str, float]]] = {"sdar": [], "trl": []}
        for rep in range(args.repeats + 1):  # interleaved so both see the same machine state; rep 0 = warm-up
            for name, fn in (("sdar", sdar_step), ("trl", trl_step)) if rep % 2 == 0 else (("trl", trl_step),
                                                                                          ("sdar", sdar_step)):
                t = fn()
                sys.stderr.write(f"repetition {rep}{' (warm-up)' if rep == 0 else ''} {name}: "
                                 f"{', '.join(f'{k} {v:.2f}s' for k, v in t.items())}\n")
                if rep > 0:
                    times[name].append(t)

    n = args.rows
    student_tokens = sum(len(a) + len(b) for a, b in zip(prompts, responses))
    teacher_tokens = student_tokens + sum(len(c) for c in privileged)
    width_s = max(map(len, prompts)) + max(map(len, responses))
    width_t = max(len(c) + len(p) for c, p in zip(privileged, prompts)) + max(map(len, responses))
    out = sys.stdout.write
    out(f"command: {' '.join(sys.argv)}\n")
    out(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}, trl {trl.__version__}\n")
    out(f"model: SmolLM2-135M shape, {args.layers} layers, random weights, fp32, sdpa\n")
    out(f"data: {n} rows; prompt {args.prompt_len}, privileged {args.privileged_len}, response {args.response_len} "
        f"tokens (uniform); student rows {student_tokens} tokens (TRL pads to {n} x {width_s} = {n * width_s}), "
        f"teacher rows {teacher_tokens} tokens (TRL: {n * width_t}); sdar layout {args.layout}, micro-batch "
        f"{args.micro_batch_tokens} tokens\n")
    a_max = max(map(len, responses))
    out(f"TRL logits per forward: [{n}, {a_max + 1}, {vocab}] fp32 = {n * (a_max + 1) * vocab * 4 / 2**20:.0f} MiB "
        f"(student and teacher each, plus the /temperature copy); sdar: chunks of 1024 rows of the LM head\n\n")
    sdar_total = [sum(t.values()) for t in times["sdar"]]
    trl_total = [t["step"] for t in times["trl"]]
    out(f"sdar step  {spread(sdar_total)}; teacher pass {spread([t['teacher'] for t in times['sdar']])}, update "
        f"{spread([t['update'] for t in times['sdar']])}\n")
    out(f"TRL step   {spread(trl_total)}\n")
    ratios = [b / a for a, b in zip(sdar_total, trl_total)]
    out(f"\nTRL / sdar step time: median {statistics.median(ratios):.2f}x (per repetition: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; goal >= 1.5)\n")
    # the work both sides must do, counted without padding or recomputation: the teacher forward, and the student
    # forward + backward (3 forwards' FLOPs); the LM head runs on the response positions only
    answer = sum(map(len, responses))
    teacher_fwd = forward_flops(base.config, [len(c) + len(p) + len(r) for c, p, r in
                                              zip(privileged, prompts, responses)], answer)
    student_fwd = forward_flops(base.config, [len(p) + len(r) for p, r in zip(prompts, responses)], answer)
    work = teacher_fwd + 3 * student_fwd
    rate = matmul_rate(base.config.hidden_size, base.config.intermediate_size)
    sdar_s, trl_s = statistics.median(sdar_total), statistics.median(trl_total)
    out(f"model FLOPs of the step (teacher forward + 3 student forwards, no padding): {work / 1e9:.0f} GFLOP; "
        f"fp32 matmul rate of this machine ({base.config.hidden_size}x{base.config.intermediate_size} GEMM, "
        f"4096 rows): {rate / 1e9:.0f} GFLOP/s\n")
    out(f"achieved: sdar {work / sdar_s / 1e9:.0f} GFLOP/s ({work / sdar_s / rate:.0%} of the matmul rate), "
        f"TRL {work / trl_s / 1e9:.0f} GFLOP/s ({work / trl_s / rate:.0%}); a step at the full matmul rate would "
        f"take {work / rate:.2f} s, TRL / that = {trl_s * rate / work:.2f}x (the most any implementation of this "
        f"work could show here)\n")
    return 0


if __name__ == "__main__":
    from sdar.allocator import keep_freed_memory  # as the `sdar` command does (SDAR_MALLOC=system: glibc's defaults)

    sys.stderr.write(f"glibc malloc: {keep_freed_memory()}\n")
    sys.exit(main())
