"""The no-grad passes of a step: old log-probs (or the check of the sampler's), teacher log-probs under the privileged
prompts, reference log-probs, the mismatch correction, and the teacher-student gap diagnostics.

All passes that score student-shaped rows go to the learner in one ``logprobs_many`` call, so the SDAR step costs one
extra forward over the teacher rows and no more.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from sdar.algo.correction import logprob_diff_stats, mismatch_weights
from sdar.algo.methods import LossSpec
from sdar.batch import TokenBatch
from sdar.data.hints import corrupt_plan, expert_next_action, hint_is_corrupted
from sdar.data.tokenize import TeacherPrompts, build_teacher_prompts
from sdar.distributed import DataParallel
from sdar.learner.base import Learner
from sdar.prompts.parse import normalize_action
from sdar.records import Trajectory, Turn
from sdar.rollout.plan import mix_seed
from sdar.stats import action_token_mask, delta_sample, gap_by_agreement, gap_by_position, gap_by_turn, gap_on_tokens

__all__ = ["DeltaSampleSink", "OldLogprobs", "Scored", "TeacherView", "logprob_diff_metrics", "score", "spread_rows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherView:
    """How the teacher sees a turn: the student's prompt context re-rendered with the privileged text (the state's
    hint, else the episode's), a fraction ``hint_noise`` of the hints replaced by a plausible wrong one."""

    key: str | None
    """Key of the privileged text in ``Turn.privileged`` / ``Trajectory.privileged`` (the teacher source; None:
    the teacher sees the student's context only)."""
    tokenizer: Any
    max_tokens: int
    seed: int
    hint_noise: float = 0.0
    conversation: bool = False
    """Conversation view: one teacher row per episode (its first turn)."""
    enable_thinking: bool | None = None

    def text(self, traj: Trajectory, turn: Turn) -> str | None:
        """The privileged text the teacher reads at ``turn`` (None: none)."""
        if not self.key:
            return None
        text = turn.privileged.get(self.key) or traj.privileged.get(self.key)
        if text and self.hint_noise > 0 and hint_is_corrupted(self.hint_noise, seed=self.seed,
                                                              episode_id=traj.episode_id, turn=turn.index):
            text = corrupt_plan(text, turn.context.admissible_actions,
                                seed=mix_seed(self.seed, traj.episode_id, turn.index, 5))
        return text

    def rows(self, trajs: Sequence[Trajectory]) -> TeacherPrompts:
        """Teacher prompts per training row, and which rows lost history to the token budget."""
        if self.conversation:
            trajs = [Trajectory(t.task_id, t.task_type, t.group_id, t.episode_id, t.seed, t.turns[:1], t.won,
                                t.privileged, t.failed) for t in trajs]
        return build_teacher_prompts(trajs, self.tokenizer, source_text=self.text, max_tokens=self.max_tokens,
                                     enable_thinking=self.enable_thinking)


@dataclass
class OldLogprobs:
    """Where the PPO ratio's old log-probs come from this step, and the rule that may change it.

    ``rollout`` (the generator's sampling log-probs) is checked each step on ``check_rows`` rows re-scored by the
    learner; when ``setting`` is ``auto`` and the 99th percentile of the difference exceeds ``tolerance`` (on any
    rank), the run recomputes them from the next step on."""

    mode: Literal["recompute", "rollout"]
    setting: str
    """The configured ``algo.old_logprobs`` (``auto``, ``recompute``, ``rollout``)."""
    correction: Literal["off", "tis", "mis"] = "off"
    level: Literal["token", "sequence"] = "token"
    cap: float = 2.0
    check_rows: int = 8
    tolerance: float = 0.01
    warned: bool = False

    def check(self, dp: DataParallel, learner_lp: torch.Tensor, sampler_lp: torch.Tensor,
              mask: torch.Tensor) -> dict[str, float]:
        """Measure the checked rows; switch to ``recompute`` (auto) or warn once (explicit rollout) when above
        tolerance."""
        out = logprob_diff_metrics(learner_lp, sampler_lp, mask)
        p99 = out["rollout/logprob_diff_p99"]
        if dp.every(p99 <= self.tolerance):
            return out
        if self.setting == "auto":
            self.mode = "recompute"
            log.warning("the sampler's log-probs differ from the learner's by %.3g nats (99th percentile; max %.3g) "
                        "against algo.logprob_tolerance=%g: old log-probs are recomputed from the next step on",
                        p99, out["rollout/logprob_diff_max"], self.tolerance)
        elif not self.warned:
            self.warned = True
            log.warning("algo.old_logprobs=rollout although the sampler's log-probs differ from the learner's by "
                        "%.3g nats (99th percentile) > algo.logprob_tolerance=%g; consider recompute (said once)",
                        p99, self.tolerance)
        return out


class DeltaSampleSink:
    """Appends a sample of the teacher-student gaps Δ of each step to ``delta_samples.jsonl`` (the histogram's
    data)."""

    def __init__(self, path: Path, *, samples: int, source: str | None) -> None:
        self.path, self.samples, self.source = path, samples, source

    def write(self, step: int, teacher_lp: torch.Tensor, student_lp: torch.Tensor, mask: torch.Tensor) -> None:
        values = delta_sample(teacher_lp, student_lp, mask, self.samples, seed=step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "source": self.source, "delta": values}) + "\n")


@dataclass(frozen=True)
class Scored:
    """The batch with its final old log-probs, the scores the update needs, and the passes' metrics."""

    batch: TokenBatch
    teacher_lp: torch.Tensor | None
    ref_lp: torch.Tensor | None
    is_weights: torch.Tensor | None
    metrics: dict[str, float]


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


def gap_diagnostics(trajs: Sequence[Trajectory], batch: TokenBatch, teacher_lp: torch.Tensor, *, decode: Any,
                    per_turn: bool) -> dict[str, float]:
    """Gap Δ by relative position, and on action tokens split by agreement with the expert (per-turn rows)."""
    student_lp, mask = batch.old_logprobs, batch.loss_mask  # [N, A] each
    out = gap_by_position(teacher_lp, student_lp, mask)
    if per_turn:
        responses = [turn.response_ids for t in trajs for turn in t.turns]  # row order of turn_rows
        action = action_token_mask(responses, decode, mask.shape[1]) & mask
        out.update(gap_on_tokens(teacher_lp, student_lp, action, "action"))
        out.update(gap_on_tokens(teacher_lp, student_lp, mask & ~action, "other"))
        turns = [turn for t in trajs for turn in t.turns]
        experts = [expert_next_action(turn.privileged) for turn in turns]
        known = torch.tensor([e is not None for e in experts], dtype=torch.bool)
        agree = torch.tensor([e is not None and turn.valid and normalize_action(turn.action) == normalize_action(e)
                              for e, turn in zip(experts, turns)], dtype=torch.bool)
        out.update(gap_by_agreement(teacher_lp, student_lp, action, agree, known))
    return out


def score(learner: Learner, batch: TokenBatch, trajs: Sequence[Trajectory], spec: LossSpec, *, step: int,
          old: OldLogprobs, teacher: TeacherView | None, dp: DataParallel, decode: Any, per_turn: bool,
          deltas: DeltaSampleSink | None) -> Scored:
    """Run the step's no-grad passes (see the module docstring)."""
    metrics: dict[str, float] = {}
    recompute = old.mode == "recompute"  # else the generator's log-probs are the old log-probs
    passes = [batch] if recompute else []
    check_rows = [] if recompute else spread_rows(batch.size, old.check_rows)
    sample = batch.select(check_rows) if check_rows else None
    if sample is not None:  # a few rows re-scored to measure how far the sampler's log-probs are from the learner's
        passes.append(sample)
    if spec.needs_teacher:
        if teacher is None:
            raise ValueError(f"the loss needs teacher log-probs ({spec.aux} term) but no TeacherView was built")
        rows = teacher.rows(trajs)
        passes.append(batch.with_prompts(rows.prompts))  # same response ids; only the prompts differ
        metrics["sdar/teacher_history_dropped"] = rows.history_dropped_share  # budget cut the teacher's history
    scored = learner.logprobs_many(passes) if passes else []
    if sample is not None:
        metrics.update(old.check(dp, scored[0], sample.old_logprobs, sample.loss_mask))
    is_weights = None
    if recompute:
        recomputed = torch.where(batch.loss_mask, scored[0], torch.zeros_like(scored[0]))  # [N, A]
        metrics.update(logprob_diff_metrics(recomputed, batch.old_logprobs, batch.loss_mask))
        weights, drift = mismatch_weights(recomputed, batch.old_logprobs, batch.loss_mask, level=old.level,
                                          mode="mis" if old.correction == "mis" else "tis", cap=old.cap)
        metrics.update(zip([f"mismatch/{k}" for k in drift], torch.stack(list(drift.values())).tolist()))
        is_weights = weights if old.correction != "off" else None
        batch = batch.with_old_logprobs(recomputed)
    teacher_lp = None
    if teacher is not None and spec.needs_teacher:
        teacher_lp = scored[-1]
        metrics.update(gap_by_turn(teacher_lp, batch.old_logprobs, batch.loss_mask, batch.turn_ids))
        metrics[f"sdar/gap_pre_mean/{teacher.key}"] = metrics["sdar/gap_pre_mean"]
        metrics.update(gap_diagnostics(trajs, batch, teacher_lp, decode=decode, per_turn=per_turn))
        if deltas is not None and dp.is_main:
            deltas.write(step, teacher_lp, batch.old_logprobs, batch.loss_mask)
    ref_lp = learner.logprobs(batch, model="reference")[0] if spec.needs_reference else None
    return Scored(batch, teacher_lp, ref_lp, is_weights, metrics)
