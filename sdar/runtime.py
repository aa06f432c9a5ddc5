"""``build(cfg) -> Parts``: the typed parts of a run (learner, generator, environments, retriever, collector, teacher
view, sinks, data-parallel handle), each made by a small builder from flat arguments.

Config objects stop here: the parts receive plain values. The training loop (``sdar.commands.train``) talks to these parts
only.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdar.algo.correction import resolve_correction, resolve_old_logprobs
from sdar.algo.methods import LossSpec, get_method, resolve_loss
from sdar.config import RunConfig, combine_with_dtype
from sdar.distributed import DataParallel, resolve_strategy
from sdar.envs.base import EnvFactory, TaskSpec
from sdar.envs.pool import ProcessEnvPool
from sdar.envs.registry import make_env_factory, make_task_source
from sdar.learner.base import Learner
from sdar.learner.packing import choose_layout
from sdar.metrics import MultiSink, ProgressLine, build_sinks
from sdar.precision import resolve_precision
from sdar.rollout.collect import CollectSettings
from sdar.rollout.collector import Collector
from sdar.rollout.generator import Generator, SamplingParams
from sdar.rollout.plan import Planner, mix_seed
from sdar.scoring import DeltaSampleSink, OldLogprobs, TeacherView
from sdar.skills.retrieval import SkillRetriever

__all__ = ["Parts", "WeightSync", "build", "pick_device", "resolve_lr", "resolve_spec", "rollout_logprob_gaps"]

log = logging.getLogger(__name__)


def resolve_spec(cfg: RunConfig) -> LossSpec:
    """The method's paper defaults with every explicitly set ``cfg.algo`` coefficient applied."""
    a = cfg.algo
    return resolve_loss(a.method, pg_coef=a.pg_coef, aux_coef=a.aux_coef, gate=a.gate, gate_beta=a.gate_beta,
                        detach_gate=a.detach_gate, kl_coef=a.kl_coef, kl_estimator=a.kl_estimator,
                        entropy_coef=a.entropy_coef, clip_low=a.clip_low, clip_high=a.clip_high,
                        dual_clip=a.dual_clip, agg=a.loss_agg, rlsd_lambda=a.rlsd_lambda,
                        rlsd_warmdown_steps=a.rlsd_warmdown_steps)


def resolve_lr(cfg: RunConfig) -> float:
    """``optim.lr``, or the method's default learning rate when it is not set."""
    return cfg.optim.lr if cfg.optim.lr is not None else get_method(cfg.algo.method).lr


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; a named CUDA device without CUDA is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available; use --device cpu")
    return torch.device(name)


@dataclass(frozen=True)
class WeightSync:
    """Keeps a generator that holds its own copy of the weights in step with the learner (nothing to do when the
    generator samples with the training model itself)."""

    generator: Generator
    learner: Learner
    shared: bool
    """The generator samples with the learner's own policy module."""
    dtype: torch.dtype | None = None
    """The generator's weight dtype (a vLLM engine's): weights are cast to it before they are gathered and sent."""

    def release(self) -> None:
        """Let the generator free its accelerator memory for the update (vLLM sleep mode); it wakes on its next
        call."""
        if not self.shared:
            self.generator.sleep()

    def refresh(self) -> None:
        """Copy the learner's current policy weights into the generator (collective under FSDP), one tensor at a
        time: the learner gathers each in the generator's dtype and the generator loads it before the next."""
        if not self.shared:
            self.generator.load_weights(self.learner.export_weights(self.dtype))


@dataclass(frozen=True)
class Parts:
    """The live parts of a run. Built once by :func:`build`."""

    cfg: RunConfig
    loss: LossSpec
    """The resolved objective (the method's defaults with the run's overrides), computed once."""
    learner: Learner
    generator: Generator
    weights: WeightSync
    make_env: EnvFactory
    """Builds one environment (the worker pool when ``env.num_workers > 0``)."""
    retriever: SkillRetriever | None
    collector: Collector
    teacher: TeacherView | None
    """How the teacher reads a turn (None: the method has no teacher)."""
    old_logprobs: OldLogprobs
    tokenizer: Any
    """A Hugging Face tokenizer (chat template, decode)."""
    sinks: MultiSink
    deltas: DeltaSampleSink | None
    """The Δ sample writer (rank 0 with ``log.delta_samples > 0``)."""
    dp: DataParallel
    ckpt_dir: Path
    pool: ProcessEnvPool | None = None
    """The environment worker pool, closed with the run."""

    def close(self) -> None:
        """Stop environment workers and flush metric sinks."""
        self.sinks.close()
        if self.pool is not None:
            self.pool.close()

    def progress(self, start: int) -> ProgressLine:
        """The per-step console line (rank 0)."""
        return ProgressLine(self.cfg.total_steps, start_step=start, disable=not (self.cfg.log.progress and
                                                                                  self.dp.is_main),
                            keys=("rollout/reward", "rollout/success", "sdar/gate_mean"))


def rollout_logprob_gaps(cfg: RunConfig, *, generator_is_policy: bool, autocast: bool) -> list[str]:
    """Why the generator's sampling log-probs would differ from the learner's recomputed ones (empty: exact).

    bf16 autocast is on the list because it was measured: SmolLM2-135M on CPU differs by 0.13 nats at the 99th
    percentile under bf16 autocast against 2e-5 in fp32 (``bench/logprob_diff.py``, README "Old log-probs")."""
    r = cfg.rollout
    gaps = []
    if not generator_is_policy:
        gaps.append("the generator holds its own copy of the weights")
    if r.top_k > 0 or r.top_p < 1:
        gaps.append("top-k/top-p sampling renormalises the sampled distribution")
    if r.view == "conversation":
        gaps.append("conversation rows give more context than the per-turn prompts the generator saw")
    if autocast:  # both sample and score under the same autocast, but decoding one token at a time from a KV
        # cache rounds differently from scoring the whole sequence at once
        gaps.append("bf16 autocast rounds incremental sampling and whole-sequence scoring differently")
    return gaps


def _collect_settings(cfg: RunConfig, sampling: SamplingParams, student_key: str | None) -> CollectSettings:
    return CollectSettings(max_turns=cfg.env.max_turns, history_length=cfg.env.history_length,
                           max_prompt_tokens=cfg.rollout.max_prompt_tokens, invalid_penalty=cfg.env.invalid_penalty,
                           invalid_rule=cfg.env.invalid_rule, sampling=sampling,
                           enable_thinking=cfg.model.enable_thinking, prompt_style=cfg.env.prompt_style,
                           student_privileged_source=student_key)


def build_retriever(strategy: str, *, env_name: str, skills_dir: str | None, ucb_c: float,
                    seed: int) -> SkillRetriever:
    """The skill retriever over ``skills_dir`` (None: the environment's built-in skills)."""
    from sdar.skills.library import builtin_skill_dir, load_skill_library
    from sdar.skills.retrieval import make_retriever

    folder = Path(skills_dir) if skills_dir else builtin_skill_dir(env_name)
    return make_retriever(strategy, load_skill_library(folder), ucb_c=ucb_c, seed=seed)  # type: ignore[arg-type]


def build_envs(name: str, *, max_turns: int, win_reward: float | None, data_dir: str | None,
               retriever_url: str | None, num_workers: int,
               step_timeout_s: float) -> tuple[EnvFactory, ProcessEnvPool | None]:
    """The environment factory, behind a worker pool when ``num_workers > 0`` (returned too, to be closed)."""
    make_env = make_env_factory(name, max_turns=max_turns, win_reward=win_reward, data_dir=data_dir,
                                retriever_url=retriever_url)
    if num_workers <= 0:
        return make_env, None
    pool = ProcessEnvPool(make_env, num_workers=num_workers, step_timeout_s=step_timeout_s)
    return pool, pool


def build(cfg: RunConfig) -> Parts:
    """Load the model, tokenizer and everything else named by ``cfg``."""
    from sdar.learner.lora import AdapterOffReference, apply_lora, inner_model, merged_for_sampling
    from sdar.models import load_model, load_tokenizer, resolve_dtype
    from sdar.rollout.backends import build_generator

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    dp = DataParallel.from_env()
    device = dp.device(cfg.device) or pick_device(cfg.device)
    strategy = resolve_strategy(cfg.optim.strategy, world_size=dp.world_size, initialized=dp.initialized,
                                lora=cfg.model.lora_rank > 0)
    spec = resolve_spec(cfg)
    method = get_method(cfg.algo.method)
    lr = resolve_lr(cfg)
    tokenizer = load_tokenizer(cfg.model.name)
    plan = resolve_precision(combine_with_dtype(cfg.model.precision, cfg.model.dtype), device, lr=lr)
    log.info("precision %s: %s weights and optimizer state, %s compute", plan.name,
             str(plan.weight_dtype).removeprefix("torch."), str(plan.compute_dtype).removeprefix("torch."))
    model = load_model(cfg.model.name, dtype=plan.load_dtype, device=str(device),
                       gradient_checkpointing=False, attn_implementation=cfg.model.attn_implementation)
    reference = None
    if cfg.model.lora_rank > 0:  # the reference is the policy with its adapter off: no second copy
        model = apply_lora(model, r=cfg.model.lora_rank, alpha=cfg.model.lora_alpha, dropout=cfg.model.lora_dropout,
                           target_modules=cfg.model.lora_targets)
        reference = AdapterOffReference(model) if spec.needs_reference else None
    elif spec.needs_reference:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    autocast = plan.autocast_dtype
    # FSDP shards the policy in place: the HF generator samples with its own full copy, refreshed after every update
    # (a vLLM engine holds its own weights anyway, one engine per rank)
    hf = cfg.rollout.backend == "hf"
    rollout_copy = copy.deepcopy(model).eval().requires_grad_(False) if strategy == "fsdp" and hf else None
    learner_kwargs: dict[str, Any] = dict(
        reference_model=reference, lr=lr, weight_decay=cfg.optim.weight_decay, grad_clip=cfg.optim.grad_clip,
        warmup_steps=round(cfg.optim.warmup_ratio * cfg.total_steps), ppo_epochs=cfg.optim.ppo_epochs,
        mini_batch_rows=cfg.optim.mini_batch_rows, micro_batch_tokens=cfg.optim.micro_batch_tokens,
        layout=choose_layout(cfg.optim.layout, model), temperature=cfg.rollout.temperature,
        gradient_checkpointing=cfg.model.gradient_checkpointing, autocast_dtype=autocast, seed=cfg.seed,
        rollback_nonfinite=cfg.optim.rollback_nonfinite)
    learner: Learner
    if strategy == "fsdp":
        from sdar.learner.fsdp import FSDPLearner

        log.info("data-parallel training on %d processes (FSDP), this is rank %d on %s", dp.world_size, dp.rank,
                 device)
        learner = FSDPLearner(model, param_dtype=plan.fsdp_param_dtype, **learner_kwargs)
    else:
        from sdar.learner.local import LocalLearner

        learner = LocalLearner(model, **learner_kwargs)
    policy = inner_model(learner.policy_module)
    # fp32 LoRA weights: one matmul with W + s·B·A per projection instead of three; merged in bf16 the sampler would
    # round the adapter's update into the weight and drift from the learner's log-probs
    merge = cfg.model.lora_rank > 0 and cfg.rollout.merge_lora and plan.weight_dtype == torch.float32
    generator = build_generator(  # hf samples with the policy object (or FSDP's full copy); vllm holds a copy
        cfg.rollout.backend, rollout_copy if rollout_copy is not None else policy, tokenizer,
        batch_size=cfg.rollout.batch_size, autocast_dtype=autocast, model_name=cfg.model.name,
        model_dtype=cfg.model.dtype, seed=cfg.seed,
        max_model_len=cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens,
        sampling_view=merged_for_sampling if merge else None)
    shared = hf and rollout_copy is None  # an HFGenerator over the training model itself
    engine_dtype = None if hf else resolve_dtype(cfg.model.dtype)  # the vLLM engine's weights
    correction = resolve_correction(cfg.algo.mismatch_correction, generator_is_policy=shared)
    gaps = rollout_logprob_gaps(cfg, generator_is_policy=shared, autocast=autocast is not None)
    old_mode = resolve_old_logprobs(cfg.algo.old_logprobs, correction=correction, inexact=gaps)
    log.info("old log-probs: %s%s; mismatch correction: %s", old_mode,
             f" ({'; '.join(gaps)})" if gaps and old_mode == "recompute" else "", correction)
    if old_mode == "rollout" and gaps:
        log.warning("algo.old_logprobs=rollout although %s", "; ".join(gaps))
    a = cfg.algo
    old = OldLogprobs(old_mode, a.old_logprobs, correction, a.mismatch_level, a.mismatch_cap, a.logprob_check_rows,
                      a.logprob_tolerance)
    source = make_task_source(cfg.env.name, data_dir=cfg.env.data_dir, task_types=cfg.env.task_types)
    needs_skills = (cfg.teacher.source == "skills" and (spec.needs_teacher or method.student_sees_skills)) or \
        cfg.eval_with_skills
    t = cfg.teacher
    retriever = build_retriever(t.retrieval, env_name=cfg.env.name, skills_dir=t.skills_dir, ucb_c=t.ucb_c,
                                seed=cfg.seed) if needs_skills else None
    teacher = None
    if spec.needs_teacher:
        teacher = TeacherView(t.source if t.source != "none" else None, tokenizer, t.max_prompt_tokens, cfg.seed,
                              t.hint_noise, cfg.rollout.view == "conversation", cfg.model.enable_thinking)
    make_env, pool = build_envs(cfg.env.name, max_turns=cfg.env.max_turns, win_reward=cfg.env.win_reward,
                                data_dir=cfg.env.data_dir, retriever_url=cfg.env.retriever_url,
                                num_workers=cfg.env.num_workers, step_timeout_s=cfg.env.step_timeout_s)
    out = Path(cfg.out_dir)
    sinks = build_sinks(out, jsonl=cfg.log.jsonl, tensorboard=cfg.log.tensorboard) if dp.is_main else MultiSink([])
    deltas = DeltaSampleSink(out / "delta_samples.jsonl", samples=cfg.log.delta_samples,
                             source=teacher.key if teacher else None) \
        if cfg.log.delta_samples and dp.is_main and teacher is not None else None
    train_tasks: list[TaskSpec] = source.tasks(cfg.env.train_split)
    eval_tasks: list[TaskSpec] = source.tasks(cfg.env.eval_split)
    r = cfg.rollout
    planner = Planner(train_tasks, eval_tasks, cfg.seed, r.tasks_per_step, r.group_size, cfg.eval_tasks, retriever)
    collector = Collector(
        planner, make_env, generator, tokenizer, dp,
        train_settings=_collect_settings(cfg, SamplingParams(max_new_tokens=r.max_new_tokens,
                                                             temperature=r.temperature, top_p=r.top_p, top_k=r.top_k),
                                         "skills" if method.student_sees_skills else None),
        eval_settings=_collect_settings(cfg, SamplingParams(max_new_tokens=r.max_new_tokens,
                                                            temperature=cfg.eval_temperature,
                                                            seed=mix_seed(cfg.seed, 0, 2)),
                                        "skills" if cfg.eval_with_skills else None),
        seed=cfg.seed, invalid_penalty=cfg.env.invalid_penalty, progress=cfg.log.progress, rank_seeds=hf)
    log.info("method %s: %s", method.name, spec)
    return Parts(cfg=cfg, loss=spec, learner=learner, generator=generator,
                 weights=WeightSync(generator, learner, shared, engine_dtype), make_env=make_env, retriever=retriever,
                 collector=collector, teacher=teacher, old_logprobs=old, tokenizer=tokenizer, sinks=sinks,
                 deltas=deltas, dp=dp, ckpt_dir=out / "checkpoints", pool=pool)
