"""Chooses which skills of a library go into the teacher's privileged context for one task.

Four strategies share the ``SkillRetriever`` Protocol:

- ``keyword`` (default): the skill mapped to the task type; for an unknown task type, the skill whose keywords
  best match the goal text. This follows the reference code's rule-based selection (task type first, goal
  keywords as the fallback), except that a goal matching several skills gets the single best one, not all of
  them concatenated.
- ``ucb``: a UCB1 bandit over all skill files, one bandit per task type.
- ``full``: every skill file.
- ``random``: one skill file drawn uniformly at random (seeded).

Only ``keyword`` reads the goal, and only for a task type the library does not map; ``needs_goal`` tells the caller
when, so that it can ask after the environment has reported the goal (at reset) instead of before the episode.

General skills are always included first. The returned text is deterministic for a given choice: a ``## ...``
heading per block, blocks separated by one blank line (see ``format_skill_text``).
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol, Sequence

from sdar.skills.library import SkillFile, SkillLibrary

logger = logging.getLogger(__name__)

Strategy = Literal["keyword", "ucb", "full", "random"]


@dataclass(frozen=True)
class Retrieval:
    """The skills chosen for one task, and the text given to the teacher."""

    text: str
    """General skills, then the chosen skills, with headings (empty when the library gives nothing)."""
    skill_names: tuple[str, ...]
    """Task-specific skills chosen, in text order; general skills are always included and not listed."""
    strategy: str
    """Strategy that made the choice (``keyword``, ``ucb``, ``full`` or ``random``)."""
    task_type: str
    """Task type the retrieval was asked for (UCB updates the bandit of this type)."""


class SkillRetriever(Protocol):
    """Picks skills for a task and may learn from the episode reward."""

    def retrieve(self, *, task_type: str, goal: str) -> Retrieval:
        """Skills for one task of ``task_type`` whose description is ``goal``."""
        ...

    def update(self, retrieval: Retrieval, reward: float) -> None:
        """Reports the reward of the episode that used ``retrieval`` (a no-op for non-learning strategies)."""
        ...

    def best(self, *, task_type: str, goal: str) -> Retrieval:
        """The current best choice for an evaluation: a learning strategy answers without counting the query;
        the others answer as ``retrieve`` does."""
        ...

    def needs_goal(self, task_type: str) -> bool:
        """True when the answer for ``task_type`` depends on the goal text, known only after the reset."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the retriever (empty for strategies that do not learn)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...


class _Stateless:
    """The parts of ``SkillRetriever`` shared by strategies that keep nothing between queries worth saving."""

    def best(self, *, task_type: str, goal: str) -> Retrieval:
        """As ``retrieve`` (nothing learnt to prefer)."""
        return self.retrieve(task_type=task_type, goal=goal)  # type: ignore[attr-defined]

    def needs_goal(self, task_type: str) -> bool:
        """The answer does not read the goal."""
        return False

    def update(self, retrieval: Retrieval, reward: float) -> None:
        """Does not learn."""

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


def format_skill_text(general: Sequence[SkillFile], chosen: Sequence[SkillFile]) -> str:
    """Joins skill files into the privileged text: general skills first, then the chosen ones.

    Each block is ``"## <heading>\\n<text>"``; blocks are separated by a blank line. Headings are
    ``General skills`` (``General skills: <name>`` when there are several general files) and ``Skills: <name>``.
    """
    blocks: list[str] = []
    for g in general:
        heading = "General skills" if len(general) == 1 else f"General skills: {g.name}"
        blocks.append(f"## {heading}\n{g.text}")
    blocks.extend(f"## Skills: {s.name}\n{s.text}" for s in chosen)
    return "\n\n".join(blocks)


def _retrieval(library: SkillLibrary, names: Sequence[str], strategy: str, task_type: str) -> Retrieval:
    text = format_skill_text(library.general, [library.files[n] for n in names])
    logger.debug("skill retrieval: strategy=%s task_type=%r skills=%s", strategy, task_type, list(names))
    return Retrieval(text=text, skill_names=tuple(names), strategy=strategy, task_type=task_type)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def keyword_hits(keyword: str, goal: str) -> bool:
    """True when ``keyword`` occurs in ``goal`` as a whole word or phrase, ignoring case and extra spaces.

    ``"hot"`` matches ``"put a hot apple"`` but not ``"photo"``; ``"look at"`` matches ``"Look  at the bowl"``.
    """
    pattern = r"(?<![a-z0-9])" + re.escape(_normalise(keyword)) + r"(?![a-z0-9])"
    return re.search(pattern, _normalise(goal)) is not None


def match_goal(library: SkillLibrary, goal: str) -> str | None:
    """The skill with the most distinct keyword hits in ``goal``; ties go to the earlier ``task_keywords`` entry.

    Returns None when no keyword occurs.
    """
    best, best_hits = None, 0
    for skill, words in library.task_keywords.items():
        hits = sum(keyword_hits(w, goal) for w in set(words))
        if hits > best_hits:
            best, best_hits = skill, hits
    return best


class KeywordRetriever(_Stateless):
    """Task type -> mapped skill; unknown task types fall back to the best keyword match on the goal."""

    strategy = "keyword"

    def __init__(self, library: SkillLibrary) -> None:
        self.library = library
        self._reported: set[str] = set()

    def needs_goal(self, task_type: str) -> bool:
        """True when the answer for ``task_type`` depends on the goal text (the library does not map the type)."""
        return self.library.resolve_task_type(task_type) is None

    def retrieve(self, *, task_type: str, goal: str) -> Retrieval:
        """See ``SkillRetriever.retrieve``; gives general skills only when neither rule finds a skill."""
        key = self.library.resolve_task_type(task_type)
        if key is not None:
            names: tuple[str, ...] = (self.library.task_to_skill[key],)
        else:
            best = match_goal(self.library, goal)
            names = () if best is None else (best,)
            if task_type not in self._reported:
                self._reported.add(task_type)
                logger.info("skill retrieval: task type %r is not in task_to_skill; goal keywords chose %s "
                            "(goal %r)", task_type, list(names) or "general skills only", goal)
        return _retrieval(self.library, names, self.strategy, task_type)



class FullRetriever(_Stateless):
    """General skills plus every skill file, in library order."""

    strategy = "full"

    def __init__(self, library: SkillLibrary) -> None:
        self.library = library

    def retrieve(self, *, task_type: str, goal: str) -> Retrieval:
        """See ``SkillRetriever.retrieve``."""
        return _retrieval(self.library, tuple(self.library.files), self.strategy, task_type)



class RandomRetriever(_Stateless):
    """General skills plus one skill file drawn uniformly at random from a seeded generator."""

    strategy = "random"

    def __init__(self, library: SkillLibrary, *, seed: int) -> None:
        self.library = library
        self._rng = random.Random(seed)

    def retrieve(self, *, task_type: str, goal: str) -> Retrieval:
        """See ``SkillRetriever.retrieve``; general skills only when the library has no skill file."""
        names = tuple(self.library.files)
        chosen = (self._rng.choice(names),) if names else ()
        return _retrieval(self.library, chosen, self.strategy, task_type)



class UCBRetriever:
    """UCB1 bandit over the skill files, one bandit per task type.

    For task type τ with N retrieval queries so far, arm e (a skill file) scores
    ``mean(e) + c * sqrt(ln N / n(e))``, where n(e) counts the times e was selected for τ and mean(e) is the
    running mean of the rewards reported for e (0 while none has arrived yet). Arms never selected come first;
    ties (among untried arms, or equal scores) are broken by a generator seeded with ``seed``. Counts grow at
    retrieval, rewards arrive with ``update``, so a batch of retrievals made before any reward still spreads
    over the untried arms.

    ``c`` (default 1.0; the paper gives no value) trades exploration against the mean reward, so rewards should
    be on a comparable, bounded scale: success 0/1 is a good choice (with the 10·won ALFWorld reward, c=1 is
    almost greedy). ``c=0`` is greedy. Task types are resolved through ``library.resolve_task_type`` (a game
    path counts as its task type); unknown task types get a bandit of their own.
    """

    strategy = "ucb"

    def __init__(self, library: SkillLibrary, *, c: float = 1.0, seed: int = 0) -> None:
        if not math.isfinite(c) or c < 0:
            raise ValueError(f"UCB exploration constant c={c!r} must be finite and >= 0; set teacher.ucb_c")
        if not library.files:
            raise ValueError("UCB retrieval needs at least one skill file in skill_files; use keyword retrieval")
        self.library = library
        self.c = c
        self._rng = random.Random(seed)
        self._queries: dict[str, int] = {}
        self._selected: dict[str, dict[str, int]] = {}
        self._rewarded: dict[str, dict[str, int]] = {}
        self._reward_sum: dict[str, dict[str, float]] = {}

    def needs_goal(self, task_type: str) -> bool:
        """The bandit chooses by task type, never by the goal."""
        return False

    def _key(self, task_type: str) -> str:
        return self.library.resolve_task_type(task_type) or task_type

    def _ensure(self, key: str) -> None:
        if key not in self._queries:
            self._queries[key] = 0
            self._selected[key] = {name: 0 for name in self.library.files}
            self._rewarded[key] = {name: 0 for name in self.library.files}
            self._reward_sum[key] = {name: 0.0 for name in self.library.files}

    def scores(self, task_type: str) -> dict[str, float]:
        """Current score of every arm for ``task_type`` (``inf`` for arms never selected), in library order."""
        key = self._key(task_type)
        self._ensure(key)
        n_total = self._queries[key]
        out: dict[str, float] = {}
        for name in self.library.files:
            n = self._selected[key][name]
            if n == 0:
                out[name] = math.inf
                continue
            m = self._rewarded[key][name]
            mean = self._reward_sum[key][name] / m if m else 0.0
            out[name] = mean + self.c * math.sqrt(math.log(n_total) / n)
        return out

    def retrieve(self, *, task_type: str, goal: str) -> Retrieval:
        """See ``SkillRetriever.retrieve``: the single highest-scoring skill file."""
        key = self._key(task_type)
        scores = self.scores(task_type)
        best = max(scores.values())
        tied = [name for name, s in scores.items() if s == best or math.isclose(s, best, rel_tol=1e-12)]
        choice = tied[0] if len(tied) == 1 else self._rng.choice(tied)
        self._queries[key] += 1
        self._selected[key][choice] += 1
        logger.debug("ucb skill scores for %r: %s", key, scores)
        return _retrieval(self.library, (choice,), self.strategy, task_type)

    def best(self, *, task_type: str, goal: str) -> Retrieval:
        """The arm with the highest mean reward so far, without counting a pull (for evaluation panels).

        Arms with no reward yet count as mean 0; ties go to the first arm in library order, so the answer depends
        only on the rewards seen, never on the exploration generator.
        """
        del goal
        key = self._key(task_type)
        sums, counts = self._reward_sum.get(key, {}), self._rewarded.get(key, {})  # read only: no bandit is created
        means = {name: sums[name] / counts[name] if counts.get(name) else 0.0 for name in self.library.files}
        top = max(means.values())
        choice = next(name for name, m in means.items() if m == top)
        return _retrieval(self.library, (choice,), self.strategy, task_type)

    def update(self, retrieval: Retrieval, reward: float) -> None:
        """Adds ``reward`` (the episode reward) to the running mean of the arm ``retrieval`` chose."""
        if retrieval.strategy != self.strategy or len(retrieval.skill_names) != 1:
            raise ValueError(f"UCBRetriever.update got a {retrieval.strategy!r} retrieval with skills "
                             f"{list(retrieval.skill_names)}; pass the Retrieval this retriever returned")
        if not math.isfinite(reward):
            raise ValueError(f"reward {reward!r} is not finite; report the episode's numeric reward")
        key = self._key(retrieval.task_type)
        name = retrieval.skill_names[0]
        if key not in self._selected or self._selected[key].get(name, 0) == 0:
            raise ValueError(f"skill {name!r} was never retrieved for task type {key!r} by this retriever; "
                             "pass the Retrieval this retriever returned")
        self._rewarded[key][name] += 1
        self._reward_sum[key][name] += float(reward)

    def state_dict(self) -> dict[str, Any]:
        """Counts, reward sums and generator state as plain Python values (JSON-serialisable)."""
        version, internal, gauss = self._rng.getstate()
        return {
            "queries": dict(self._queries),
            "arms": {key: {name: [self._selected[key][name], self._rewarded[key][name], self._reward_sum[key][name]]
                           for name in self.library.files} for key in self._queries},
            "rng_state": [version, list(internal), gauss],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what ``state_dict`` returned (the library must hold the same skill names)."""
        arms = state["arms"]
        names = set(self.library.files)
        for key, by_name in arms.items():
            if set(by_name) != names:
                raise ValueError(f"UCB state for task type {key!r} has skills {sorted(by_name)}, the library has "
                                 f"{sorted(names)}; load the state with the skill library it was saved with")
        self._queries = {key: int(n) for key, n in state["queries"].items()}
        self._selected = {k: {n: int(v[0]) for n, v in arms[k].items()} for k in self._queries}
        self._rewarded = {k: {n: int(v[1]) for n, v in arms[k].items()} for k in self._queries}
        self._reward_sum = {k: {n: float(v[2]) for n, v in arms[k].items()} for k in self._queries}
        version, internal, gauss = state["rng_state"]
        self._rng.setstate((version, tuple(internal), gauss))


def make_retriever(strategy: Strategy, library: SkillLibrary, *, ucb_c: float = 1.0,
                   seed: int = 0) -> SkillRetriever:
    """Builds the retriever named ``strategy`` (``teacher.retrieval`` in the config).

    Raises:
        ValueError: for an unknown strategy.
    """
    match strategy:
        case "keyword":
            return KeywordRetriever(library)
        case "ucb":
            return UCBRetriever(library, c=ucb_c, seed=seed)
        case "full":
            return FullRetriever(library)
        case "random":
            return RandomRetriever(library, seed=seed)
    raise ValueError(f"unknown skill retrieval strategy {strategy!r}; use one of keyword, ucb, full, random")


def retrieval_metrics(retrievals: Sequence[Retrieval]) -> dict[str, float]:
    """Selection frequencies over a batch of retrievals, for the metrics log.

    Returns:
        ``skills/selected/<name>``: fraction of retrievals that included skill ``name`` (only names seen);
        ``skills/none``: fraction with no task-specific skill; ``skills/count``: mean number of task skills.
        Empty when ``retrievals`` is empty.
    """
    if not retrievals:
        return {}
    total = len(retrievals)
    counts = Counter(name for r in retrievals for name in set(r.skill_names))
    out = {f"skills/selected/{name}": counts[name] / total for name in sorted(counts)}
    out["skills/none"] = sum(not r.skill_names for r in retrievals) / total
    out["skills/count"] = sum(len(r.skill_names) for r in retrievals) / total
    return out
