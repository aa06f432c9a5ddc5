"""Builds everything a run needs from a ``RunConfig`` (model, learner, generator, environments, skills, sinks).

Config objects stop here: components receive flat arguments.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from sdar.algo.correction import resolve_correction, resolve_old_logprobs
from sdar.algo.methods import LossSpec, get_method, resolve_loss
from sdar.config import RunConfig, combine_with_dtype
from sdar.data.hints import corrupt_plan, hint_is_corrupted
from sdar.data.tokenize import TeacherPrompts
from sdar.distributed import DataParallel, resolve_strategy
from sdar.envs.base import EnvFactory, TaskSpec, panel_tasks
from sdar.envs.registry import make_env_factory, make_task_source
from sdar.learner.packing import choose_layout
from sdar.metrics import MultiSink, ProgressLine, build_sinks
from sdar.precision import resolve_precision
from sdar.records import EnvInfo, Trajectory, Turn
from sdar.rollout.collect import CollectSettings, EpisodeRequest
from sdar.rollout.generator import SamplingParams

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003
"""Evaluation episode seeds are offset from training seeds so the two never share an episode."""


def resolve_spec(cfg: RunConfig, *, rlsd_lambda_now: float | None = None) -> LossSpec:
    """The method's paper defaults with every explicitly set ``cfg.algo`` coefficient applied."""
    a = cfg.algo
    return resolve_loss(
        a.method,
        pg_coef=a.pg_coef,
        aux_coef=a.aux_coef,
        gate=a.gate,
        gate_beta=a.gate_beta,
        detach_gate=a.detach_gate,
        kl_coef=a.kl_coef,
        kl_estimator=a.kl_estimator,
        entropy_coef=a.entropy_coef,
        clip_low=a.clip_low,
        clip_high=a.clip_high,
        dual_clip=a.dual_clip,
        agg=a.loss_agg,
        rlsd_lambda=rlsd_lambda_now if rlsd_lambda_now is not None else a.rlsd_lambda,
        rlsd_warmdown_steps=a.rlsd_warmdown_steps,
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available; use --device cpu")
    return torch.device(name)


@dataclass
class Runtime:
    """The live objects of a run. Built once by :func:`build_runtime`."""

    cfg: RunConfig
    device: torch.device
    tokenizer: Any
    learner: Any
    generator: Any
    make_env: EnvFactory
    train_tasks: list[TaskSpec]
    eval_tasks: list[TaskSpec]
    retriever: Any | None
    sinks: MultiSink
    ckpt_dir: Path
    privileged_key: str | None
    """Key of the teacher's privileged text in ``Trajectory.privileged`` (None: no teacher context)."""
    student_key: str | None = None
    """Key of privileged text shown to the student (Skill-GRPO)."""
    last_retrievals: list[Any] = field(default_factory=list)
    pool: Any | None = None
    """The environment worker pool when ``env.num_workers > 0``."""
    old_logprobs: str = "recompute"
    """Resolved ``algo.old_logprobs``: ``recompute`` or ``rollout``."""
    mismatch_correction: str = "off"
    """Resolved ``algo.mismatch_correction``: ``off``, ``tis`` or ``mis``."""
    dp: DataParallel = field(default_factory=DataParallel)
    """This process's place in a torchrun job (a world of 1 without torchrun)."""
    behaviour_warned: bool = False
    """The sampler-vs-learner warning under an explicit ``algo.old_logprobs: rollout`` was given."""
    generator_is_policy: bool = True
    """The generator samples with the training model object itself (False: it holds its own copy)."""

    def close(self) -> None:
        """Stop environment workers and flush metric sinks."""
        self.sinks.close()
        if self.pool is not None:
            self.pool.close()

    def release_generator(self) -> None:
        """Let a generator with its own weights free its accelerator memory for the update (vLLM sleep mode; a
        no-op for generators without ``sleep`` or that share the policy). It wakes on its next call."""
        sleep = getattr(self.generator, "sleep", None)
        if sleep is not None and not self.generator_is_policy:
            sleep()

    def refresh_generator(self) -> None:
        """Copy the learner's current policy weights into a generator that holds its own copy (collective under
        FSDP: every rank gathers the full weights); nothing to copy when the generator samples with the policy."""
        if not self.generator_is_policy:
            self.generator.load_weights(self.learner.export_weights())

    # ------------------------------------------------------------------------------------------------ settings
    def _settings(self, sampling: SamplingParams, *, student_key: str | None) -> CollectSettings:
        c = self.cfg
        return CollectSettings(
            max_turns=c.env.max_turns,
            history_length=c.env.history_length,
            max_prompt_tokens=c.rollout.max_prompt_tokens,
            invalid_penalty=c.env.invalid_penalty,
            invalid_rule=c.env.invalid_rule,
            sampling=sampling,
            enable_thinking=c.model.enable_thinking,
            prompt_style=c.env.prompt_style,
            student_privileged_source=student_key,
        )

    def collect_settings(self, step: int) -> CollectSettings:
        """Training rollouts of ``step`` (the sampling seed depends on the run seed and the step only)."""
        r = self.cfg.rollout
        return self._settings(SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                             top_p=r.top_p, top_k=r.top_k, seed=_mix(self.cfg.seed, step, 1)),
                              student_key=self.student_key)

    def eval_settings(self) -> CollectSettings:
        """Evaluation rollouts: the same sampling seed at every evaluation; no privileged context unless
        ``eval_with_skills``."""
        return self._settings(SamplingParams(max_new_tokens=self.cfg.rollout.max_new_tokens,
                                             temperature=self.cfg.eval_temperature, seed=_mix(self.cfg.seed, 0, 2)),
                              student_key="skills" if self.cfg.eval_with_skills else None)

    # ------------------------------------------------------------------------------------------------ requests
    def requests_for(self, tasks: Sequence[TaskSpec], *, first_group: int, group_size: int,
                     seed_base: int, learn: bool = True) -> list[EpisodeRequest]:
        """G episodes per task sharing the task's seed and group id; privileged context retrieved per task.

        ``rt.last_retrievals`` gets one entry per request, in request order. A retrieval that reads the goal text
        (keyword retrieval of a task type the library does not map) waits for the goal the environment reports at
        reset: the requests carry a ``GoalRetrieval`` that the collector calls once per group after the reset (see
        ``settled_retrievals``). Retrievals that ignore the goal (mapped task types, UCB, full, random) are made
        here, before the rollout, identically on every rank, as a learning retriever needs.

        ``learn=False`` (evaluation): a learning retriever answers with its current best choice (``best``) and
        does not count the query, so evaluations leave the bandit exactly as training left it."""
        requests: list[EpisodeRequest] = []
        self.last_retrievals = []
        for i, task in enumerate(tasks):
            privileged: dict[str, str] = {}
            at_reset = None
            retrieval: Any = None
            if self.retriever is not None:
                ask = self.retriever.retrieve if learn or not hasattr(self.retriever, "best") else self.retriever.best
                needs_goal = getattr(self.retriever, "needs_goal", None)
                if needs_goal is not None and needs_goal(task.task_type):
                    retrieval = at_reset = GoalRetrieval(ask, task.task_type)
                else:  # the goal is not known before the reset, and this retrieval does not read it
                    retrieval = ask(task_type=task.task_type, goal="")
                    privileged["skills"] = retrieval.text
            group_id = first_group + i
            for g in range(group_size):
                requests.append(EpisodeRequest(task=task, seed=seed_base + i, group_id=group_id,
                                               episode_id=group_id * group_size + g, privileged=privileged,
                                               privileged_at_reset=at_reset))
                self.last_retrievals.append(retrieval)
        return requests

    def eval_requests(self) -> list[EpisodeRequest]:
        """The fixed evaluation panel: ``eval_tasks`` tasks of the eval split (see ``panel_tasks``), one episode
        each."""
        tasks = panel_tasks(self.eval_tasks, self.cfg.eval_tasks)
        return self.requests_for(tasks, first_group=0, group_size=1, seed_base=EVAL_SEED_OFFSET, learn=False)

    # ------------------------------------------------------------------------------------------------ teacher
    def teacher_prompts(self, trajs: Sequence[Trajectory]) -> list[tuple[int, ...]]:
        """Teacher prompt ids per training row (see ``teacher_rows``)."""
        return self.teacher_rows(trajs).prompts

    def teacher_rows(self, trajs: Sequence[Trajectory]) -> TeacherPrompts:
        """Teacher prompts per training row (turn rows, or the first turn of each episode in the conversation
        view), with the privileged text inside the user message, and which rows lost history to the budget."""
        from sdar.data.tokenize import build_teacher_prompts

        key = self.privileged_key
        noise = self.cfg.teacher.hint_noise

        def source_text(traj: Trajectory, turn: Turn) -> str | None:
            if not key:
                return None
            text = turn.privileged.get(key) or traj.privileged.get(key)  # this state's hint, else the episode's
            if text and noise > 0 and hint_is_corrupted(noise, seed=self.cfg.seed, episode_id=traj.episode_id,
                                                        turn=turn.index):
                text = corrupt_plan(text, turn.context.admissible_actions,
                                    seed=_mix(self.cfg.seed, traj.episode_id, turn.index, 5))
            return text

        if self.cfg.rollout.view == "conversation":
            trajs = [Trajectory(t.task_id, t.task_type, t.group_id, t.episode_id, t.seed, t.turns[:1], t.won,
                                t.privileged, t.failed) for t in trajs]
        return build_teacher_prompts(trajs, self.tokenizer, source_text=source_text,
                                     max_tokens=self.cfg.teacher.max_prompt_tokens,
                                     enable_thinking=self.cfg.model.enable_thinking)

    def progress(self, start: int) -> ProgressLine:
        return ProgressLine(self.cfg.total_steps, start_step=start, disable=not (self.cfg.log.progress and
                                                                                  self.dp.is_main),
                            keys=("rollout/reward", "rollout/success", "sdar/gate_mean"))


@dataclass
class GoalRetrieval:
    """One task group's skill retrieval made once the goal is known: the collector calls it after each reset of the
    group's episodes with the ``EnvInfo``; the first call asks the retriever with ``info.goal``, later calls (the
    group's other episodes, which share task and seed) reuse that answer."""

    ask: Callable[..., Any]
    """``retriever.retrieve`` (or ``best`` for evaluation panels)."""
    task_type: str
    result: Any | None = None
    """The ``Retrieval``, once an episode of the group has been reset on this process."""

    def __call__(self, info: EnvInfo) -> dict[str, str]:
        if self.result is None:
            self.result = self.ask(task_type=self.task_type or info.task_type, goal=info.goal)
        return {"skills": self.result.text}


def settled_retrievals(retrievals: Sequence[Any]) -> list[Any | None]:
    """``rt.last_retrievals`` after the rollout, in request order: a ``GoalRetrieval`` becomes the retrieval it made,
    or None when its episodes ran on another process (or all failed to reset)."""
    return [r.result if isinstance(r, GoalRetrieval) else r for r in retrievals]


def _mix(*values: int) -> int:
    """A deterministic 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    return random.Random(":".join(str(v) for v in values)).getrandbits(63)


def episode_requests(rt: Runtime, step: int) -> list[EpisodeRequest]:
    """Training episodes of ``step``: tasks drawn without replacement from a per-epoch shuffle of the train split
    (the data cursor is ``step * tasks_per_step``, so a resumed run draws exactly the same tasks)."""
    r = rt.cfg.rollout
    n = len(rt.train_tasks)
    cursor = step * r.tasks_per_step
    tasks: list[TaskSpec] = []
    for k in range(cursor, cursor + r.tasks_per_step):
        epoch, pos = divmod(k, n)
        order = list(range(n))
        random.Random(_mix(rt.cfg.seed, epoch, 3)).shuffle(order)
        tasks.append(rt.train_tasks[order[pos]])
    return rt.requests_for(tasks, first_group=cursor, group_size=r.group_size,
                           seed_base=_mix(rt.cfg.seed, step, 4) % 1_000_000_000)


def privileged_text(traj: Trajectory, key: str | None) -> str | None:
    return traj.privileged.get(key) if key else None


def rollout_logprob_gaps(cfg: RunConfig, *, generator_is_policy: bool, autocast: bool) -> list[str]:
    """Why the generator's sampling log-probs would differ from the learner's recomputed ones (empty: exact)."""
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


def build_runtime(cfg: RunConfig) -> Runtime:
    """Load the model, tokenizer and everything else named by ``cfg``."""
    from sdar.learner.local import LocalLearner
    from sdar.learner.lora import AdapterOffReference, apply_lora, inner_model
    from sdar.models import load_model, load_tokenizer
    from sdar.rollout.backends import build_generator

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    dp = DataParallel.from_env()
    device = dp.device(cfg.device) or pick_device(cfg.device)
    strategy = resolve_strategy(cfg.optim.strategy, world_size=dp.world_size, initialized=dp.initialized,
                                lora=cfg.model.lora_rank > 0)
    spec = resolve_spec(cfg)
    method = get_method(cfg.algo.method)
    tokenizer = load_tokenizer(cfg.model.name)
    plan = resolve_precision(combine_with_dtype(cfg.model.precision, cfg.model.dtype), device,
                             lr=cfg.optim.lr if cfg.optim.lr is not None else method.lr)
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
    # FSDP shards the policy in place: the generator samples with its own full copy, refreshed after every update
    rollout_copy = copy.deepcopy(model).eval().requires_grad_(False) if strategy == "fsdp" else None
    learner_cls: Any = LocalLearner
    if strategy == "fsdp":
        from sdar.learner.fsdp import FSDPLearner

        learner_cls = FSDPLearner
        log.info("data-parallel training on %d processes (FSDP), this is rank %d on %s", dp.world_size, dp.rank,
                 device)
    learner = learner_cls(
        model,
        reference_model=reference,
        lr=cfg.optim.lr if cfg.optim.lr is not None else method.lr,
        weight_decay=cfg.optim.weight_decay,
        grad_clip=cfg.optim.grad_clip,
        warmup_steps=round(cfg.optim.warmup_ratio * cfg.total_steps),
        ppo_epochs=cfg.optim.ppo_epochs,
        mini_batch_rows=cfg.optim.mini_batch_rows,
        micro_batch_tokens=cfg.optim.micro_batch_tokens,
        layout=choose_layout(cfg.optim.layout, model),
        temperature=cfg.rollout.temperature,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        autocast_dtype=autocast,
        seed=cfg.seed,
        rollback_nonfinite=cfg.optim.rollback_nonfinite,
        **({"param_dtype": plan.fsdp_param_dtype} if strategy == "fsdp" else {}),
    )
    generator = build_generator(cfg, rollout_copy if rollout_copy is not None else inner_model(learner.policy_module),
                                tokenizer, autocast_dtype=autocast)  # rollout.backend: hf samples with the policy object, vllm holds a copy
    shared = getattr(generator, "model", None) is inner_model(learner.policy_module)
    correction = resolve_correction(cfg.algo.mismatch_correction, generator_is_policy=shared)
    gaps = rollout_logprob_gaps(cfg, generator_is_policy=shared, autocast=autocast is not None)
    old_logprobs = resolve_old_logprobs(cfg.algo.old_logprobs, correction=correction, inexact=gaps)
    log.info("old log-probs: %s%s; mismatch correction: %s", old_logprobs,
             f" ({'; '.join(gaps)})" if gaps and old_logprobs == "recompute" else "", correction)
    if old_logprobs == "rollout" and gaps:
        log.warning("algo.old_logprobs=rollout although %s", "; ".join(gaps))
    source = make_task_source(cfg.env.name, data_dir=cfg.env.data_dir, task_types=cfg.env.task_types)
    retriever = None
    needs_skills = (cfg.teacher.source == "skills" and (spec.needs_teacher or method.student_sees_skills)) or \
        cfg.eval_with_skills
    if needs_skills:
        from sdar.skills.library import builtin_skill_dir, load_skill_library
        from sdar.skills.retrieval import make_retriever

        folder = Path(cfg.teacher.skills_dir) if cfg.teacher.skills_dir else builtin_skill_dir(cfg.env.name)
        retriever = make_retriever(cfg.teacher.retrieval, load_skill_library(folder), ucb_c=cfg.teacher.ucb_c,
                                   seed=cfg.seed)
    teacher_key = cfg.teacher.source if (spec.needs_teacher and cfg.teacher.source != "none") else None
    student_key = "skills" if method.student_sees_skills else None
    make_env = make_env_factory(cfg.env.name, max_turns=cfg.env.max_turns, win_reward=cfg.env.win_reward,
                                data_dir=cfg.env.data_dir, retriever_url=cfg.env.retriever_url)
    pool = None
    if cfg.env.num_workers > 0:
        from sdar.envs.pool import ProcessEnvPool

        pool = ProcessEnvPool(make_env, num_workers=cfg.env.num_workers, step_timeout_s=cfg.env.step_timeout_s)
        make_env = pool
    out = Path(cfg.out_dir)
    sinks = build_sinks(out, jsonl=cfg.log.jsonl, tensorboard=cfg.log.tensorboard) if dp.is_main else MultiSink([])
    log.info("method %s: %s", method.name, spec)
    return Runtime(
        cfg=cfg,
        device=device,
        tokenizer=tokenizer,
        learner=learner,
        generator=generator,
        make_env=make_env,
        train_tasks=source.tasks(cfg.env.train_split),
        eval_tasks=source.tasks(cfg.env.eval_split),
        retriever=retriever,
        sinks=sinks,
        ckpt_dir=out / "checkpoints",
        privileged_key=teacher_key,
        student_key=student_key,
        pool=pool,
        old_logprobs=old_logprobs,
        mismatch_correction=correction,
        dp=dp,
        generator_is_policy=shared,
    )
