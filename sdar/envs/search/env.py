"""The Search-QA environment (Search-R1 style): search a corpus for a few turns, then answer; reward = exact match.

Episode: ``reset`` shows the question. Each ``step`` takes one action (see ``sdar.envs.search.actions``):

* ``<search>query</search>`` retrieves the top-``topk`` passages; the observation is Search-R1's
  ``"\\n<information>Doc 1(Title: …) …</information>\\n"`` block and the reward is 0.
* ``<answer>text</answer>`` ends the episode (``terminated``); reward ``win_reward`` when the answer matches a
  gold answer after SQuAD normalisation (``info.won``), else 0. ``info.extra`` then holds ``em`` and ``f1``.
* Anything else is an invalid turn: feedback text, no retrieval, reward 0 (the trainer applies the penalty).

Every turn, valid or not, counts towards ``max_turns``; a turn that reaches the limit without an answer is
``truncated``. A failing retriever is retried ``search_retries`` times with exponential back-off; after that the
turn's observation says the search failed (``SEARCH_FAILED_FEEDBACK``) and the episode goes on. The reset seed is
accepted for the contract but does not change anything: episodes are fully determined by the task id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from sdar.envs.base import EnvError
from sdar.envs.search.actions import format_action, split_action
from sdar.envs.search.data import QAItem, SearchTaskSource, build_retriever, load_search_dataset, question_type
from sdar.envs.search.metrics import exact_match, f1_score
from sdar.envs.search.retrievers import (
    HTTPRetriever,
    Passage,
    Retriever,
    RetrieverError,
    call_with_retries,
    format_information,
)
from sdar.records import EnvInfo, StepResult

__all__ = [
    "INVALID_SEARCH_FEEDBACK",
    "SEARCH_FAILED_FEEDBACK",
    "SearchEnvFactory",
    "SearchQAEnv",
    "expert_policy",
    "gold_answers",
    "make_search_env_factory",
    "make_search_task_source",
]

logger = logging.getLogger(__name__)

INVALID_SEARCH_FEEDBACK = (
    "\nYour last response was not a valid action. To look something up, put the query between <search> and "
    "</search>; to finish, put the answer between <answer> and </answer>. Use exactly one of the two.\n"
)
"""Observation after an action that is neither a single search nor a single answer."""
SEARCH_FAILED_FEEDBACK = "\n<information>The search engine could not be reached; try the search again.</information>\n"
"""Observation when retrieval still fails after all retries."""
GOLD_SEPARATOR = "\n"
"""Separator of the gold answers in ``info.privileged["gold_answer"]``."""


def gold_answers(info: EnvInfo) -> tuple[str, ...]:
    """The gold answers carried in ``info.privileged["gold_answer"]`` (one per line)."""
    return tuple(a for a in info.privileged.get("gold_answer", "").split(GOLD_SEPARATOR) if a)


@dataclass
class _Episode:
    item: QAItem
    turn: int = 0
    searches: int = 0
    answer: str = ""
    em: float = 0.0
    f1: float = 0.0
    valid: bool = True
    search_failed: bool = False
    done: bool = False
    won: bool = False


class SearchQAEnv:
    """Question answering with a search tool (contract in ``sdar.envs.base``; rules in the module docstring).

    Args:
        retriever: passage search backend (shared between instances is fine).
        questions: the tasks, by id or as a sequence (ids must be unique).
        topk: passages per search.
        max_turns: turn limit (the paper uses 4).
        win_reward: reward of a correct answer.
        search_retries: extra retrieval attempts after a failure.
        search_backoff: sleep before retry i is ``search_backoff * 2**i`` seconds.
        sleep: sleep function (tests pass a recorder).
    """

    name = "search"

    def __init__(
        self,
        retriever: Retriever,
        questions: Mapping[str, QAItem] | Sequence[QAItem],
        *,
        topk: int = 3,
        max_turns: int = 4,
        win_reward: float = 1.0,
        search_retries: int = 2,
        search_backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if topk < 1 or max_turns < 1:
            raise ValueError(f"topk and max_turns must be >= 1, got topk={topk}, max_turns={max_turns}")
        items = list(questions.values()) if isinstance(questions, Mapping) else list(questions)
        self._questions = {q.id: q for q in items}
        if len(self._questions) != len(items):
            raise ValueError("question ids must be unique")
        self.retriever = retriever
        self.topk, self.max_turns, self.win_reward = topk, max_turns, float(win_reward)
        self.search_retries, self.search_backoff, self._sleep = search_retries, search_backoff, sleep
        self._ep: _Episode | None = None
        self._closed = False

    # ----- episode life cycle -------------------------------------------------------------------------------
    def reset(self, *, task_id: str, seed: int) -> tuple[str, EnvInfo]:
        """Start the question ``task_id``; the observation is the question text.

        Raises:
            EnvError: after ``close``.
            ValueError: for an unknown task id.
        """
        del seed  # episodes are determined by the task id alone
        if self._closed:
            raise EnvError("this SearchQAEnv is closed; build a new one with the environment factory")
        item = self._questions.get(task_id)
        if item is None:
            raise ValueError(f"unknown Search-QA task id {task_id!r}; take ids from the task source of this data set")
        self._ep = _Episode(item)
        return item.question, self._info()

    def step(self, action: str) -> StepResult:
        """Apply one search or answer action (see the module docstring)."""
        ep = self._running()
        ep.turn += 1
        parsed = split_action(str(action))
        ep.valid, ep.search_failed = parsed is not None, False
        reward, terminated = 0.0, False
        if parsed is None:
            observation = INVALID_SEARCH_FEEDBACK
        elif parsed[0] == "search":
            ep.searches += 1
            observation = self._search(parsed[1])
        else:
            ep.answer = parsed[1]
            ep.em = exact_match(ep.answer, ep.item.golden_answers)
            ep.f1 = f1_score(ep.answer, ep.item.golden_answers)
            ep.won = ep.em == 1.0
            terminated = True
            reward = self.win_reward if ep.won else 0.0
            observation = f"\nYour answer: {ep.answer}\n"
        truncated = not terminated and ep.turn >= self.max_turns
        ep.done = terminated or truncated
        return StepResult(observation, reward, terminated, truncated, self._info())

    def close(self) -> None:
        """Drop the episode; later ``reset``/``step`` calls raise ``EnvError``. Idempotent."""
        self._closed = True
        self._ep = None

    # ----- internals -----------------------------------------------------------------------------------------
    def _current(self) -> _Episode:
        if self._closed:
            raise EnvError("this SearchQAEnv is closed; build a new one with the environment factory")
        if self._ep is None:
            raise EnvError("no episode is running; call reset(task_id=..., seed=...) first")
        return self._ep

    def _running(self) -> _Episode:
        ep = self._current()
        if ep.done:
            raise EnvError("the episode is over (terminated or truncated); call reset() to start a new one")
        return ep

    def _search(self, query: str) -> str:
        def attempt() -> list[Passage]:
            result = self.retriever.retrieve([query], self.topk)
            if not isinstance(result, list) or len(result) != 1:
                raise RetrieverError(f"the retriever returned {type(result).__name__} instead of one hit list")
            return list(result[0])[: self.topk]

        try:
            hits = call_with_retries(attempt, retries=self.search_retries, backoff=self.search_backoff,
                                     sleep=self._sleep, what=f"search for {query!r}")
        except RetrieverError as exc:
            logger.warning("Search-QA: %s", exc)
            assert self._ep is not None
            self._ep.search_failed = True
            return SEARCH_FAILED_FEEDBACK
        return format_information(hits)

    def _info(self) -> EnvInfo:
        ep = self._current()
        item = ep.item
        return EnvInfo(
            task_id=item.id,
            task_type=item.data_source,
            goal=item.question,
            admissible_actions=(),
            won=ep.won,
            privileged={"gold_answer": GOLD_SEPARATOR.join(item.golden_answers)},
            extra={
                "data_source": item.data_source,
                "question_type": question_type(item),
                "em": ep.em,
                "f1": ep.f1,
                "answer": ep.answer,
                "turn": ep.turn,
                "searches": ep.searches,
                "valid": ep.valid,
                "search_failed": ep.search_failed,
            },
        )


def expert_policy(observation: str, info: EnvInfo) -> str:
    """A scripted expert: search the question on the first turn, then answer the first gold answer."""
    del observation
    if info.extra.get("turn", 0) == 0:
        return format_action("search", info.goal)
    return format_action("answer", gold_answers(info)[0])


@dataclass
class SearchEnvFactory:
    """Builds ``SearchQAEnv`` instances sharing one data set and one retriever (an ``EnvFactory``).

    The retriever is built on the first call in each process and dropped when the factory is pickled, so the
    factory can be sent to worker processes.
    """

    questions: tuple[QAItem, ...]
    passages: tuple[Passage, ...]
    retriever_kind: str = "bm25"
    retriever_url: str | None = None
    cache_dir: str | None = None
    topk: int = 3
    max_turns: int = 4
    win_reward: float = 1.0
    search_retries: int = 2
    search_backoff: float = 0.5
    _retriever: Retriever | None = field(default=None, repr=False, compare=False)

    def retriever(self) -> Retriever:
        if self._retriever is None:
            self._retriever = build_retriever(self.passages, kind=self.retriever_kind, url=self.retriever_url,
                                              cache_dir=self.cache_dir)
        return self._retriever

    def __call__(self) -> SearchQAEnv:
        return SearchQAEnv(self.retriever(), self.questions, topk=self.topk, max_turns=self.max_turns,
                           win_reward=self.win_reward, search_retries=self.search_retries,
                           search_backoff=self.search_backoff)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_retriever"] = None
        return state


def make_search_env_factory(
    *,
    data_dir: str | Path | None = None,
    retriever: str = "bm25",
    retriever_url: str | None = None,
    topk: int = 3,
    max_turns: int = 4,
    win_reward: float = 1.0,
    seed: int = 0,
    cache_dir: str | None = None,
    questions: Iterable[QAItem] | None = None,
) -> SearchEnvFactory:
    """The environment factory for a Search-QA data set (``data_dir=None``: the built-in offline set).

    The data set is loaded and the retriever built right away, so a missing file or package fails here with a
    message naming the fix; with ``retriever_url`` the server is probed once (reachable, token accepted).
    ``questions`` overrides the data set's questions (the corpus stays).
    """
    dataset = load_search_dataset(data_dir, seed=seed, cache_dir=cache_dir)
    factory = SearchEnvFactory(
        questions=tuple(questions) if questions is not None else dataset.questions, passages=dataset.passages,
        retriever_kind=retriever, retriever_url=retriever_url, cache_dir=cache_dir, topk=topk, max_turns=max_turns,
        win_reward=win_reward,
    )
    built = factory.retriever()
    if retriever_url and isinstance(built, HTTPRetriever):
        built.check()
    return factory


def make_search_task_source(data_dir: str | Path | None = None, *, seed: int = 0,
                            cache_dir: str | None = None) -> SearchTaskSource:
    """The ``train`` / ``eval`` tasks of the same data set ``make_search_env_factory`` loads."""
    return SearchTaskSource(load_search_dataset(data_dir, seed=seed, cache_dir=cache_dir).questions)
