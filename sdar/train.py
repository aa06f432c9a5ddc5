"""`sdar train`: the RL loop — rollout, rewards, advantages, old/reference/teacher log-probs, update, eval, checkpoint.

The loop talks to a Generator, a Learner, an environment factory and pure functions only; everything heavy is built
once in ``sdar.runtime.build_runtime``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from sdar.algo.advantages import grpo_advantages, rloo_advantages, step_grpo_advantages
from sdar.algo.correction import logprob_diff_stats, mismatch_weights
from sdar.algo.distill import rlsd_lambda
from sdar.batch import TokenBatch
from sdar.config import RunConfig, dump_yaml
from sdar.data.hints import expert_next_action
from sdar.distributed import load_run_checkpoint, save_run_checkpoint
from sdar.learner.dist import is_main_process
from sdar.metrics import RolloutProgress, StageTimer
from sdar.prompts.parse import normalize_action
from sdar.records import Trajectory
from sdar.rollout.collect import collect_episodes
from sdar.runfolder import (LOSS_SPEC_FILE, TRAIN_LAYOUT, FolderMode, RunFolderError, check_resume, launcher_rank,
                            loss_spec_yaml, prepare_folder)
from sdar.runtime import Runtime, build_runtime, episode_requests, resolve_spec, settled_retrievals
from sdar.stats import (action_token_mask, delta_sample, episode_scores, gap_by_agreement, gap_by_position,
                        gap_by_turn, gap_on_tokens, rollout_metrics, row_scores, sample_turns_text)

log = logging.getLogger(__name__)


def step_advantages(cfg: RunConfig, trajs: list[Trajectory], scores: torch.Tensor) -> torch.Tensor:
    """One advantage per turn row ([N]) from the per-row scores ([N]), by the configured estimator.

    RLOO leaves out whole episodes: a row's baseline is the mean score of the other episodes of its group (see
    ``rloo_advantages``), never the other turns of its own episode."""
    group_ids = torch.tensor([t.group_id for t in trajs for _ in t.turns], dtype=torch.long)
    episode_ids = torch.tensor([t.episode_id for t in trajs for _ in t.turns], dtype=torch.long)
    a = cfg.algo
    if a.advantage in ("grpo", "drgrpo"):
        return step_grpo_advantages(scores, group_ids, episode_ids, stats=a.adv_stats,
                                    scale_by_std=a.advantage == "grpo")
    if a.advantage == "rloo":
        return rloo_advantages(scores, group_ids, episode_ids)
    from sdar.gigpo import gigpo_row_advantages

    return gigpo_row_advantages(trajs, scores, group_ids, episode_ids, invalid_penalty=cfg.env.invalid_penalty,
                                omega=a.gigpo_omega, gamma=a.gigpo_gamma, stats=a.adv_stats)


def episode_advantages(cfg: RunConfig, trajs: list[Trajectory]) -> torch.Tensor:
    """One advantage per episode ([E]) for the conversation view: the episode's own score (return minus the penalties
    of all its invalid turns) compared within its group over episodes (GRPO / Dr.GRPO normalisation, or RLOO's
    leave-one-out). ``algo.adv_stats`` does not apply: there is one row per episode. GiGPO needs turn rows."""
    scores = episode_scores(trajs, cfg.env.invalid_penalty)  # [E]
    group_ids = torch.tensor([t.group_id for t in trajs], dtype=torch.long)
    a = cfg.algo
    if a.advantage in ("grpo", "drgrpo"):
        return grpo_advantages(scores, group_ids, scale_by_std=a.advantage == "grpo")
    if a.advantage == "rloo":
        return rloo_advantages(scores, group_ids)
    raise ValueError(f"algo.advantage={a.advantage!r} needs per-turn rows; set rollout.view=per_turn")


def view_advantages(cfg: RunConfig, trajs: list[Trajectory]) -> torch.Tensor:
    """The advantages ``build_batch`` expects: one per turn row (per-turn view) or one per episode (conversation)."""
    if cfg.rollout.view == "per_turn":
        return step_advantages(cfg, trajs, row_scores(trajs, cfg.env.invalid_penalty))  # [N]
    return episode_advantages(cfg, trajs)  # [E]


def build_batch(rt: Runtime, trajs: list[Trajectory], adv: torch.Tensor) -> TokenBatch:
    """Training rows for the configured view, with advantages broadcast over each row's tokens.

    ``adv`` is ``view_advantages``: one value per turn row (per-turn view), or one per episode (conversation view,
    where every sampled token of an episode carries its episode-level advantage)."""
    from sdar.data.tokenize import conversation_rows, turn_rows

    if rt.cfg.rollout.view == "per_turn":
        return turn_rows(trajs, advantages_per_turn=adv.tolist())
    return conversation_rows(trajs, rt.tokenizer, advantages_per_episode=adv.tolist(),
                             enable_thinking=rt.cfg.model.enable_thinking)


def gap_diagnostics(rt: Runtime, step: int, trajs: list[Trajectory], batch: TokenBatch,
                    teacher_lp: torch.Tensor) -> dict[str, float]:
    """Gap Δ by relative position and on action tokens (per-turn rows); saves a sample of Δ for the histogram."""
    student_lp, mask = batch.old_logprobs, batch.loss_mask  # [N, A] each
    out = gap_by_position(teacher_lp, student_lp, mask)
    if rt.cfg.rollout.view == "per_turn":
        responses = [turn.response_ids for t in trajs for turn in t.turns]  # row order of turn_rows
        action = action_token_mask(responses, rt.tokenizer.decode, mask.shape[1]) & mask
        out.update(gap_on_tokens(teacher_lp, student_lp, action, "action"))
        out.update(gap_on_tokens(teacher_lp, student_lp, mask & ~action, "other"))
        turns = [turn for t in trajs for turn in t.turns]
        experts = [expert_next_action(turn.privileged) for turn in turns]
        known = torch.tensor([e is not None for e in experts], dtype=torch.bool)
        agree = torch.tensor([e is not None and turn.valid and normalize_action(turn.action) == normalize_action(e)
                              for e, turn in zip(experts, turns)], dtype=torch.bool)
        out.update(gap_by_agreement(teacher_lp, student_lp, action, agree, known))
    if rt.cfg.log.delta_samples and is_main_process():
        values = delta_sample(teacher_lp, student_lp, mask, rt.cfg.log.delta_samples, seed=step)
        out_dir = Path(rt.cfg.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "delta_samples.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "source": rt.privileged_key, "delta": values}) + "\n")
    return out


def spread_rows(n: int, k: int) -> list[int]:
    """``min(n, k)`` row indices spread evenly over ``0 .. n - 1`` (first and last included)."""
    if k <= 0 or n <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def logprob_diff_metrics(learner_lp: torch.Tensor, sampler_lp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``rollout/logprob_diff_{mean,p99,max}`` (nats per sampled token) and ``rollout/logprob_diff_tokens``."""
    return {f"rollout/logprob_diff_{k}": v for k, v in logprob_diff_stats(learner_lp, sampler_lp, mask).items()}


def behaviour_check(rt: Runtime, learner_lp: torch.Tensor, sampler_lp: torch.Tensor,
                    mask: torch.Tensor) -> dict[str, float]:
    """Measure the sampler-vs-learner difference on the checked rows while the old log-probs come from the rollout.

    Under ``algo.old_logprobs: auto`` a 99th percentile above ``algo.logprob_tolerance`` (on any rank) switches the
    run to recomputed old log-probs from the next step on; an explicit ``rollout`` only warns."""
    out = logprob_diff_metrics(learner_lp, sampler_lp, mask)
    tol = rt.cfg.algo.logprob_tolerance
    if rt.dp.every(out["rollout/logprob_diff_p99"] <= tol):
        return out
    if rt.cfg.algo.old_logprobs == "auto":
        rt.old_logprobs = "recompute"
        log.warning("the sampler's log-probs differ from the learner's by %.3g nats (99th percentile; max %.3g) "
                    "against algo.logprob_tolerance=%g: old log-probs are recomputed from the next step on",
                    out["rollout/logprob_diff_p99"], out["rollout/logprob_diff_max"], tol)
    elif not rt.behaviour_warned:
        rt.behaviour_warned = True
        log.warning("algo.old_logprobs=rollout although the sampler's log-probs differ from the learner's by %.3g "
                    "nats (99th percentile) > algo.logprob_tolerance=%g; consider recompute (said once)",
                    out["rollout/logprob_diff_p99"], tol)
    return out


def train_step(rt: Runtime, step: int) -> dict[str, float]:
    """One full RL step; returns its metrics."""
    cfg, timer = rt.cfg, StageTimer()
    with timer.stage("rollout"), rt.dp.together():  # an error on one rank is raised on every rank
        requests = episode_requests(rt, step)
        pending = list(rt.last_retrievals)  # request order; retrievals that read the goal run at reset
        mine = rt.dp.shard_requests(requests, cfg.rollout.group_size)  # this rank's whole groups (all: one process)
        settings = rt.dp.settings(rt.collect_settings(step))  # the rank is mixed into the sampling seed
        progress = RolloutProgress(f"step {step} rollout") if cfg.log.progress and rt.dp.is_main else None
        trajs = collect_episodes(mine, rt.make_env, rt.generator, rt.tokenizer, settings, progress=progress)
    rt.release_generator()  # vLLM with sleep mode frees its memory for the update; the weight push wakes it
    if rt.retriever is not None:  # bandit retrieval learns from success (0/1) of the episodes it served
        # goal-reading (keyword) retrievals of other ranks' groups stay None here: they do not learn, and the skill
        # metrics below are then this rank's groups, averaged over ranks with the other metrics
        retrievals = settled_retrievals(pending)
        for retrieval, won in zip(retrievals, rt.dp.gather([t.won for t in trajs])):  # every rank's, request order
            if retrieval is not None:
                rt.retriever.update(retrieval, float(won))
        from sdar.skills.retrieval import retrieval_metrics

        skill_metrics = retrieval_metrics([r for r in retrievals if r is not None])
    else:
        skill_metrics = {}
    trajs = [t for t in trajs if t.turns]
    metrics: dict[str, float] = rt.dp.reduce_rollout(trajs, rollout_metrics(trajs, cfg.env.invalid_penalty))
    metrics.update(skill_metrics)
    if not rt.dp.every(bool(trajs)):
        log.warning("step %d: no episode produced a turn (on some rank); skipping the update", step)
        return metrics

    with timer.stage("advantages"), rt.dp.together():
        adv = view_advantages(cfg, trajs)  # [N] per turn row, or [E] per episode in the conversation view
        batch = build_batch(rt, trajs, adv)
    spec = resolve_spec(cfg)
    if spec.advantage_reweight == "rlsd":  # RLSD's λ decays linearly with the training step (the reference's count)
        spec = dataclasses.replace(
            spec, rlsd_lambda=rlsd_lambda(step, lam0=spec.rlsd_lambda, warmdown_steps=spec.rlsd_warmdown_steps))
        metrics["rlsd/lambda"] = spec.rlsd_lambda

    teacher_lp = ref_lp = is_weights = None
    with timer.stage("logprobs"):
        recompute = rt.old_logprobs == "recompute"  # else the generator's log-probs are the exact old log-probs
        passes = [batch] if recompute else []
        check_rows = [] if recompute else spread_rows(batch.size, cfg.algo.logprob_check_rows)
        if check_rows:  # a few rows re-scored to measure how far the sampler's log-probs are from the learner's
            passes.append(batch.select(check_rows))
        if spec.needs_teacher:
            teacher = rt.teacher_rows(trajs)  # same response ids; only the prompts differ
            passes.append(batch.with_prompts(teacher.prompts))
            metrics["sdar/teacher_history_dropped"] = teacher.history_dropped_share  # budget cut the teacher's history
        scored = rt.learner.logprobs_many(passes) if passes else []
        if check_rows:
            sample = batch.select(check_rows)
            metrics.update(behaviour_check(rt, scored[0], sample.old_logprobs, sample.loss_mask))
        if recompute:
            old = torch.where(batch.loss_mask, scored[0], torch.zeros_like(scored[0]))  # [N, A]
            metrics.update(logprob_diff_metrics(old, batch.old_logprobs, batch.loss_mask))
            weights, drift = mismatch_weights(old, batch.old_logprobs, batch.loss_mask, level=cfg.algo.mismatch_level,
                                              mode="mis" if rt.mismatch_correction == "mis" else "tis",
                                              cap=cfg.algo.mismatch_cap)
            metrics.update(zip([f"mismatch/{k}" for k in drift], torch.stack(list(drift.values())).tolist()))
            is_weights = weights if rt.mismatch_correction != "off" else None
            batch = batch.with_old_logprobs(old)
        if spec.needs_teacher:
            teacher_lp = scored[-1]
            metrics.update(gap_by_turn(teacher_lp, batch.old_logprobs, batch.loss_mask, batch.turn_ids))
            metrics[f"sdar/gap_pre_mean/{rt.privileged_key}"] = metrics["sdar/gap_pre_mean"]
            metrics.update(gap_diagnostics(rt, step, trajs, batch, teacher_lp))
        if spec.needs_reference:
            ref_lp, _ = rt.learner.logprobs(batch, model="reference")
    with timer.stage("update"):
        extra = {} if is_weights is None else {"is_weights": is_weights}  # learners without the correction work too
        train_metrics = rt.learner.train_step(batch, spec=spec, ref_logprobs=ref_lp, teacher_logprobs=teacher_lp,
                                              **extra)
        rt.refresh_generator()  # a generator with its own copy of the weights samples the next step with the update
    metrics.update(train_metrics)
    metrics.update(timer.as_metrics())
    total = sum(v for k, v in timer.as_metrics().items())
    metrics["timing/step_s"] = total
    metrics["perf/tokens_per_s"] = batch.num_tokens() / max(total, 1e-9)
    if cfg.log.sample_every and step % cfg.log.sample_every == 0:
        for text in sample_turns_text(trajs, cfg.log.num_samples):
            log.info("sample turn (step %d):\n%s", step, text)
    return metrics


def evaluate(rt: Runtime, step: int) -> dict[str, float]:
    """Success on the fixed evaluation panel (same task ids and seeds at every evaluation)."""
    with rt.dp.together():  # each rank runs its block of the panel
        requests = rt.dp.shard_panel(rt.eval_requests())
        progress = RolloutProgress(f"step {step} eval") if rt.cfg.log.progress and rt.dp.is_main else None
        trajs = collect_episodes(requests, rt.make_env, rt.generator, rt.tokenizer, rt.dp.settings(rt.eval_settings()),
                                 progress=progress)
        trajs = [t for t in trajs if t.turns]
    m = rt.dp.reduce_rollout(trajs, rollout_metrics(trajs, rt.cfg.env.invalid_penalty))
    return {k.replace("rollout/", "eval/"): v for k, v in m.items()}


def nonfinite_weights(module: torch.nn.Module, limit: int = 3) -> list[str]:
    """Names of up to ``limit`` parameters of ``module`` that hold NaN or infinity (this process's shards under
    FSDP); one device sync."""
    named = [(name, p.to_local() if hasattr(p, "to_local") else p) for name, p in module.named_parameters()]
    if not named:
        return []
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok][:limit]


def _save(rt: Runtime, step: int) -> None:
    """Checkpoint the learner and the run state; refuses (on every rank) to write weights that are not finite.

    Raises:
        NonFiniteWeightsError: when a weight is NaN or infinite; the previous checkpoint stays the latest.
    """
    bad = nonfinite_weights(rt.learner.policy_module)
    if not rt.dp.every(not bad):
        from sdar.errors import NonFiniteWeightsError
        from sdar.learner.checkpoint import latest_checkpoint

        last = latest_checkpoint(rt.ckpt_dir)
        raise NonFiniteWeightsError(
            f"after step {step} the weights are not finite ({', '.join(bad) or 'on another rank'}); no checkpoint "
            f"was written, the latest is {last if last is not None else 'none'}. Lower optim.lr or optim.grad_clip, "
            "or keep optim.rollback_nonfinite on")
    extra: dict[str, Any] = {"next_step": step + 1, "config": json.loads(json.dumps(dataclasses.asdict(rt.cfg)))}
    if rt.retriever is not None and hasattr(rt.retriever, "state_dict"):
        extra["retriever"] = rt.retriever.state_dict()
    save_run_checkpoint(rt.learner, rt.ckpt_dir, step=step, extra=extra, keep_last=rt.cfg.keep_checkpoints, dp=rt.dp)


def prepare_run_folder(cfg: RunConfig, folder: FolderMode) -> None:
    """Check (and with ``overwrite`` clear) ``cfg.out_dir`` before a run, and check a resume against the stored
    config (rank 0 only; see :mod:`sdar.runfolder`).

    Raises:
        RunFolderError: when the folder cannot be used as asked or a resume changes a run-defining setting.
    """
    if launcher_rank() != 0:
        return
    if cfg.resume and folder == "overwrite":
        raise RunFolderError("--resume continues the run in out_dir and --overwrite deletes it; give only one")
    mode: FolderMode = "reuse" if cfg.resume and folder == "new" else folder
    prepare_folder(cfg.out_dir, TRAIN_LAYOUT, mode=mode, resume_option=True)
    if cfg.resume:
        check_resume(cfg.out_dir, cfg)


def write_run_settings(cfg: RunConfig) -> None:
    """``config.yaml`` (the resolved configuration) and ``loss_spec.yaml`` (the resolved loss) in the run folder."""
    from sdar.algo.methods import get_method

    out = Path(cfg.out_dir)
    lr = cfg.optim.lr if cfg.optim.lr is not None else get_method(cfg.algo.method).lr
    (out / "config.yaml").write_text(dump_yaml(cfg))
    (out / LOSS_SPEC_FILE).write_text(loss_spec_yaml(cfg, resolve_spec(cfg), lr))


def train(cfg: RunConfig, *, folder: FolderMode = "reuse") -> dict[str, float]:
    """Run ``cfg.total_steps`` training steps (continuing from the last checkpoint with ``cfg.resume``).

    Args:
        folder: What to do with files already in ``cfg.out_dir``: ``new`` refuses them unless ``cfg.resume``
            (`sdar train`), ``overwrite`` deletes the run files first (`sdar train --overwrite`, `sdar demo`),
            ``reuse`` writes into the folder as it is (library calls, `sdar compare`'s own run folders). With
            ``cfg.resume`` the stored config.yaml must agree on every run-defining setting
            (:data:`sdar.runfolder.RESUME_MAY_CHANGE` lists the others).
    """
    prepare_run_folder(cfg, folder)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rt = build_runtime(cfg)  # joins the process group under torchrun; rank 0 alone writes files
    if rt.dp.is_main:
        write_run_settings(cfg)
    start = 0
    if cfg.resume:
        extra = load_run_checkpoint(rt.learner, rt.ckpt_dir, dp=rt.dp)
        if extra is None:
            log.warning("resume requested but no checkpoint in %s; starting from step 0", rt.ckpt_dir)
        else:
            rt.refresh_generator()
            if rt.retriever is not None and "retriever" in extra:
                rt.retriever.load_state_dict(extra["retriever"])
            start = int(extra["next_step"])
            log.info("resuming at step %d", start)
    last: dict[str, float] = {}
    progress = rt.progress(start)
    try:
        if cfg.eval_at_start and start == 0:  # the curve starts where the starting model stands
            rt.sinks.log(evaluate(rt, -1), step=-1)
        for step in range(start, cfg.total_steps):
            last = rt.dp.mean_metrics(train_step(rt, step))  # rollout and learner metrics are already global
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                last.update(evaluate(rt, step))
            rt.sinks.log(last, step=step)
            progress.update(last)
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.total_steps:
                _save(rt, step)
    finally:
        progress.close()
        rt.close()
    return last


def run_demo(argv: list[str]) -> int:
    """`make demo`: prepare SmolLM2 if needed, train with the CPU preset, print a short report."""
    from sdar.demo import main as demo_main

    return demo_main(argv)
