"""WebShop's ``EnvSpec`` (``WEBSHOP_SPEC``), listed by ``sdar.envs.registry``."""

from __future__ import annotations

from sdar.envs.base import EnvFactory, TaskSource
from sdar.envs.spec import EnvSpec, EpisodeScores, EvalColumns, Policy, plan_expert_builder, restrict_types
from sdar.envs.webshop.env import WebShopFactory, WebShopTaskSource, expert_policy
from sdar.envs.webshop.template import WEBSHOP_TEMPLATE, parse_webshop_action
from sdar.records import Trajectory

__all__ = ["WEBSHOP_SPEC"]


def _factory(*, max_turns: int, win_reward: float, data_dir: str | None, retriever_url: str | None) -> EnvFactory:
    """Environments on the catalogue of ``data_dir`` (None: the generated default one), built on first use."""
    del retriever_url
    return WebShopFactory(data_dir=data_dir, win_reward=win_reward, max_turns=max_turns)


def _tasks(*, seed: int, data_dir: str | None, task_types: tuple[str, ...]) -> TaskSource:
    """The catalogue's goals; the benchmark is fixed by the catalogue, not by the run seed."""
    del seed
    return restrict_types(WebShopTaskSource(data_dir), task_types)


def _final_score(traj: Trajectory) -> EpisodeScores:
    """The WebShop score of the bought item, reported by the episode's last step (0 when it bought nothing)."""
    return EpisodeScores(score=float(traj.final_extra.get("score", 0.0)))


def _solver() -> Policy:
    """Follows the simulator's scripted shopper."""
    return expert_policy


WEBSHOP_SPEC = EnvSpec(
    name="webshop",
    build_factory=_factory,
    build_tasks=_tasks,
    template=WEBSHOP_TEMPLATE,
    parser=parse_webshop_action,
    privileged_sources=("skills", "goal_attributes"),
    default_win_reward=10.0,
    experts={"plan": plan_expert_builder},
    eval_columns=EvalColumns(metrics="score", group_prefix="", totals=(("score", "WS Score"), ("acc", "WS Acc")),
                             episode_scores=_final_score),
    check_policy=_solver,
)
"""WebShop (offline simulator or real adapter): the paper's 10·won reward and its Score / Acc columns."""
