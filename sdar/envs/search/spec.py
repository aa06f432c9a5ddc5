"""Search-QA's ``EnvSpec`` (``SEARCH_SPEC``), listed by ``sdar.envs.registry``.

Importing it imports no retriever backend: ``bm25s`` and ``faiss`` load when a factory builds its retriever.
"""

from __future__ import annotations

from sdar.envs.base import EnvFactory, TaskSource
from sdar.envs.search.actions import parse_search_action
from sdar.envs.search.env import expert_policy, make_search_env_factory, make_search_task_source
from sdar.envs.search.metrics import outcome_from_trajectory
from sdar.envs.search.template import SEARCH_TEMPLATE
from sdar.envs.spec import EnvSpec, EpisodeScores, EvalColumns, Policy, plan_expert_builder, restrict_types
from sdar.records import Trajectory

__all__ = ["SEARCH_COLUMNS", "SEARCH_SPEC"]

SEARCH_COLUMNS: tuple[tuple[str, str], ...] = (
    ("nq", "NQ"), ("triviaqa", "TriviaQA"), ("popqa", "PopQA"), ("hotpotqa", "HotpotQA"),
    ("2wikimultihopqa", "2Wiki"), ("musique", "MuSiQue"), ("bamboogle", "Bamboogle"),
)
"""Search-QA data sources in the paper's column order, with its column names."""


def _factory(*, max_turns: int, win_reward: float, data_dir: str | None, retriever_url: str | None) -> EnvFactory:
    """Loads the data set and builds (or probes) the retriever now, so a missing file or server fails here."""
    return make_search_env_factory(data_dir=data_dir, max_turns=max_turns, win_reward=win_reward,
                                   retriever_url=retriever_url)


def _tasks(*, seed: int, data_dir: str | None, task_types: tuple[str, ...]) -> TaskSource:
    """The questions of the same data set the factory loads (type = data source)."""
    del seed
    return restrict_types(make_search_task_source(data_dir), task_types)


def _qa_scores(traj: Trajectory) -> EpisodeScores:
    """Exact match and token F1 of the episode's answer against its gold answers, recomputed from the trajectory
    (0 for an episode that broke before its first step and so carries no gold answer)."""
    if not traj.privileged.get("gold_answer"):
        return EpisodeScores(em=0.0, f1=0.0)
    qa = outcome_from_trajectory(traj)
    return EpisodeScores(em=qa.em, f1=qa.f1)


def _solver() -> Policy:
    """Searches the question, then answers the first gold answer."""
    return expert_policy


SEARCH_SPEC = EnvSpec(
    name="search",
    build_factory=_factory,
    build_tasks=_tasks,
    template=SEARCH_TEMPLATE,
    parser=parse_search_action,
    privileged_sources=("skills", "gold_answer"),
    default_win_reward=1.0,
    experts={"plan": plan_expert_builder},
    eval_columns=EvalColumns(metrics="qa", group_prefix="em", group_names=SEARCH_COLUMNS,
                             totals=(("em/avg", "SQA Avg"),), episode_scores=_qa_scores),
    check_policy=_solver,
    reply_format="<think></think>{action}",
    uses_retriever=True,
)
"""Search-QA (Search-R1 style): exact match in {0, 1} as the reward (Search-R1's EM), EM per data source in Table 1."""
