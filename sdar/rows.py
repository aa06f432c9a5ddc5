"""From a step's episodes to training rows: one advantage per turn row (per-turn view) or per episode (conversation
view), broadcast over each row's sampled tokens."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch

from sdar.algo.advantages import grpo_advantages, rloo_advantages, step_grpo_advantages
from sdar.batch import TokenBatch
from sdar.records import Trajectory
from sdar.stats import episode_scores, row_scores

__all__ = ["build_batch", "episode_advantages", "step_advantages", "view_advantages"]

View = Literal["per_turn", "conversation"]


def step_advantages(trajs: Sequence[Trajectory], scores: torch.Tensor, *, estimator: str, adv_stats: str,
                    invalid_penalty: float, gigpo_omega: float = 1.0, gigpo_gamma: float = 0.95) -> torch.Tensor:
    """One advantage per turn row ([N]) from the per-row scores ([N]), by ``estimator`` (grpo, drgrpo, rloo, gigpo).

    RLOO leaves out whole episodes: a row's baseline is the mean score of the other episodes of its group (see
    ``rloo_advantages``), never the other turns of its own episode."""
    group_ids = torch.tensor([t.group_id for t in trajs for _ in t.turns], dtype=torch.long)
    episode_ids = torch.tensor([t.episode_id for t in trajs for _ in t.turns], dtype=torch.long)
    if estimator in ("grpo", "drgrpo"):
        return step_grpo_advantages(scores, group_ids, episode_ids, stats=adv_stats,
                                    scale_by_std=estimator == "grpo")
    if estimator == "rloo":
        return rloo_advantages(scores, group_ids, episode_ids)
    from sdar.gigpo import gigpo_row_advantages

    return gigpo_row_advantages(list(trajs), scores, group_ids, episode_ids, invalid_penalty=invalid_penalty,
                                omega=gigpo_omega, gamma=gigpo_gamma, stats=adv_stats)


def episode_advantages(trajs: Sequence[Trajectory], *, estimator: str, invalid_penalty: float) -> torch.Tensor:
    """One advantage per episode ([E]) for the conversation view: the episode's own score (return minus the penalties
    of all its invalid turns) compared within its group over episodes (GRPO / Dr.GRPO normalisation, or RLOO's
    leave-one-out). There is one row per episode, so row statistics do not apply. GiGPO needs turn rows."""
    scores = episode_scores(list(trajs), invalid_penalty)  # [E]
    group_ids = torch.tensor([t.group_id for t in trajs], dtype=torch.long)
    if estimator in ("grpo", "drgrpo"):
        return grpo_advantages(scores, group_ids, scale_by_std=estimator == "grpo")
    if estimator == "rloo":
        return rloo_advantages(scores, group_ids)
    raise ValueError(f"algo.advantage={estimator!r} needs per-turn rows; set rollout.view=per_turn")


def view_advantages(trajs: Sequence[Trajectory], *, view: View, estimator: str, adv_stats: str,
                    invalid_penalty: float, gigpo_omega: float = 1.0, gigpo_gamma: float = 0.95) -> torch.Tensor:
    """The advantages ``build_batch`` expects: one per turn row (per-turn view) or one per episode (conversation)."""
    if view == "per_turn":
        return step_advantages(trajs, row_scores(list(trajs), invalid_penalty), estimator=estimator,
                               adv_stats=adv_stats, invalid_penalty=invalid_penalty, gigpo_omega=gigpo_omega,
                               gigpo_gamma=gigpo_gamma)  # [N]
    return episode_advantages(trajs, estimator=estimator, invalid_penalty=invalid_penalty)  # [E]


def build_batch(trajs: Sequence[Trajectory], adv: torch.Tensor, *, view: View, tokenizer: Any = None,
                enable_thinking: bool | None = None) -> TokenBatch:
    """Training rows for ``view``, with advantages broadcast over each row's tokens.

    ``adv`` is ``view_advantages``: one value per turn row (per-turn view), or one per episode (conversation view,
    where every sampled token of an episode carries its episode-level advantage; the rows are re-assembled with
    ``tokenizer``'s chat template from the same token ids)."""
    from sdar.data.tokenize import conversation_rows, turn_rows

    if view == "per_turn":
        return turn_rows(list(trajs), advantages_per_turn=adv.tolist())
    return conversation_rows(list(trajs), tokenizer, advantages_per_episode=adv.tolist(),
                             enable_thinking=enable_thinking)
