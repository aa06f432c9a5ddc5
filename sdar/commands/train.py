"""`sdar train`: the RL loop — rollout, advantages, no-grad scoring (old, teacher, reference), update, eval, save.

The loop talks to the typed parts that ``sdar.runtime.build`` makes and to pure functions only.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from sdar.algo.distill import rlsd_lambda
from sdar.config import RunConfig
from sdar.metrics import StageTimer
from sdar.rows import build_batch, view_advantages
from sdar.run_checkpoint import restore, save
from sdar.runfolder import FolderMode, prepare_run_folder, write_run_settings
from sdar.runtime import Parts, build, resolve_lr
from sdar.scoring import score
from sdar.stats import sample_turns_text

log = logging.getLogger(__name__)


def train_step(p: Parts, step: int) -> dict[str, float]:
    """One full RL step; returns its metrics."""
    cfg, timer = p.cfg, StageTimer()
    with timer.stage("rollout"):
        rollout = p.collector.train(step)
    p.weights.release()  # vLLM with sleep mode frees its memory for the update; the weight push wakes it
    trajs, metrics = rollout.trajectories, dict(rollout.metrics)
    if not rollout.trainable:
        log.warning("step %d: no episode produced a turn (on some rank); skipping the update", step)
        return metrics

    with timer.stage("advantages"), p.dp.together():
        a = cfg.algo
        adv = view_advantages(trajs, view=cfg.rollout.view, estimator=a.advantage, adv_stats=a.adv_stats,
                              invalid_penalty=cfg.env.invalid_penalty, gigpo_omega=a.gigpo_omega,
                              gigpo_gamma=a.gigpo_gamma)  # [N] per turn row, or [E] per episode
        batch = build_batch(trajs, adv, view=cfg.rollout.view, tokenizer=p.tokenizer,
                            enable_thinking=cfg.model.enable_thinking)
    spec = p.loss
    if spec.advantage_reweight == "rlsd":  # RLSD's λ decays linearly with the training step (the reference's count)
        spec = dataclasses.replace(
            spec, rlsd_lambda=rlsd_lambda(step, lam0=spec.rlsd_lambda, warmdown_steps=spec.rlsd_warmdown_steps))
        metrics["rlsd/lambda"] = spec.rlsd_lambda

    with timer.stage("logprobs"):
        scored = score(p.learner, batch, trajs, spec, step=step, old=p.old_logprobs, teacher=p.teacher, dp=p.dp,
                       decode=p.tokenizer.decode, per_turn=cfg.rollout.view == "per_turn", deltas=p.deltas)
        metrics.update(scored.metrics)
    with timer.stage("update"):
        extra = {} if scored.is_weights is None else {"is_weights": scored.is_weights}
        metrics.update(p.learner.train_step(scored.batch, spec=spec, ref_logprobs=scored.ref_lp,
                                            teacher_logprobs=scored.teacher_lp, **extra))
        p.weights.refresh()  # a generator with its own copy of the weights samples the next step with the update
    metrics.update(timer.as_metrics())
    total = sum(timer.as_metrics().values())
    metrics["timing/step_s"] = total
    metrics["perf/tokens_per_s"] = batch.num_tokens() / max(total, 1e-9)
    if cfg.log.sample_every and step % cfg.log.sample_every == 0:
        for text in sample_turns_text(trajs, cfg.log.num_samples):
            log.info("sample turn (step %d):\n%s", step, text)
    return metrics


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
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    p = build(cfg)  # joins the process group under torchrun; rank 0 alone writes files
    if p.dp.is_main:
        write_run_settings(cfg, p.loss, resolve_lr(cfg))
    start = restore(p) if cfg.resume else 0
    last: dict[str, float] = {}
    progress = p.progress(start)
    try:
        if cfg.eval_at_start and start == 0:  # the curve starts where the starting model stands
            p.sinks.log(p.collector.evaluate(-1), step=-1)
        for step in range(start, cfg.total_steps):
            last = p.dp.mean_metrics(train_step(p, step))  # rollout and learner metrics are already global
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                last.update(p.collector.evaluate(step))
            p.sinks.log(last, step=step)
            progress.update(last)
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.total_steps:
                save(p, step)
    finally:
        progress.close()
        p.close()
    return last
