"""A small deterministic household text game in the style of ALFWorld, with a built-in optimal solver.

The world of an episode is a pure function of its task id: a room with numbered receptacles ("fridge 1",
"desk 1"), a few objects, and a goal such as "put a clean apple in the fridge." The reset seed only changes the
order in which receptacles are listed (room description and admissible actions). Actions use ALFWorld phrasing
(``go to X``, ``open X``, ``take O from X``, ``put O in/on X``, ``clean O with sinkbasin 1``, ``look``, ...).
The agent holds at most one object; ``go to`` reaches any receptacle in one step. Every task is solvable in at
most 8 actions (``go_to`` tasks in one), and the solver's remaining plan is reported each step as privileged
``expert_plan`` text for a teacher.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from sdar.envs.base import EnvError, TaskSpec
from sdar.records import EnvInfo, StepResult

__all__ = [
    "DEFAULT_TASK_TYPES",
    "INVALID_FEEDBACK",
    "TASK_TYPES",
    "ToyTask",
    "ToyTaskSource",
    "ToyTextEnv",
    "build_task",
    "expert_action",
]

TASK_TYPES = ("pick_and_place", "pick_clean_then_place", "pick_heat_then_place", "pick_cool_then_place", "go_to")
"""All task types; ``go_to`` ("go to the desk.") is a one-step type meant for learning tests."""
DEFAULT_TASK_TYPES = TASK_TYPES[:4]
INVALID_FEEDBACK = "Nothing happens."
"""Observation returned for an action that is not admissible in the current state."""

# task type -> (verb, appliance receptacle, adjective in the goal / state flag)
_TREATMENTS = {
    "pick_clean_then_place": ("clean", "sinkbasin 1", "clean"),
    "pick_heat_then_place": ("heat", "microwave 1", "hot"),
    "pick_cool_then_place": ("cool", "fridge 1", "cool"),
}
_APPLIANCE_VERB = {"sinkbasin": ("clean", "clean"), "microwave": ("heat", "hot"), "fridge": ("cool", "cool")}
_OPENABLE = frozenset({"cabinet", "drawer", "fridge", "microwave", "safe"})
_CONTAINERS = _OPENABLE | {"sinkbasin", "garbagecan"}
_NOT_STORAGE = frozenset({"sinkbasin", "microwave"})
_CLEANABLE = ("apple", "potato", "tomato", "mug", "cup", "plate", "bowl", "lettuce", "spoon", "egg")
_HEATABLE = ("apple", "potato", "tomato", "egg", "mug", "cup", "plate", "bread")
_COOLABLE = ("apple", "potato", "tomato", "egg", "mug", "cup", "plate", "bread", "lettuce")
_POOLS = {"clean": _CLEANABLE, "hot": _HEATABLE, "cool": _COOLABLE}


@dataclass(frozen=True)
class _Room:
    fixed: tuple[str, ...]
    """Receptacle types always present."""
    optional: tuple[str, ...]
    """Receptacle types drawn from (a repeated type gives numbered copies)."""
    objects: tuple[str, ...]


_ROOMS = {
    "kitchen": _Room(
        ("countertop", "fridge", "microwave", "sinkbasin"),
        ("cabinet", "cabinet", "drawer", "diningtable", "shelf", "garbagecan"),
        tuple(sorted(set(_CLEANABLE + _HEATABLE + _COOLABLE))),
    ),
    "bedroom": _Room(
        ("bed", "desk"),
        ("dresser", "drawer", "drawer", "shelf", "sidetable", "safe", "garbagecan"),
        ("book", "pen", "pencil", "cd", "cellphone", "keychain", "alarmclock", "laptop", "mug", "pillow"),
    ),
    "living room": _Room(
        ("sofa", "coffeetable"),
        ("sidetable", "cabinet", "cabinet", "shelf", "drawer", "garbagecan"),
        ("remotecontrol", "newspaper", "vase", "statue", "box", "keychain", "creditcard", "pillow", "book"),
    ),
}


def _stable_int(text: str) -> int:
    """A seed derived from ``text`` that does not depend on Python's per-process hash salt."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _rtype(name: str) -> str:
    return name.rsplit(" ", 1)[0]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _listing(names: list[str] | tuple[str, ...]) -> str:
    items = [f"{_article(n)} {n}" for n in names]
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


@dataclass(frozen=True)
class ToyTask:
    """The static description of one task instance (what ``build_task`` derives from a task id)."""

    task_id: str
    task_type: str
    room: str
    goal: str
    receptacles: tuple[str, ...]
    placements: tuple[tuple[str, str], ...]
    """Initial (object, receptacle) pairs."""
    target_object: str
    """The object to deliver ('' for ``go_to``)."""
    target_type: str
    """Receptacle type that completes the task (any numbered copy counts)."""
    treatment: str
    """State flag the object needs ('', 'clean', 'hot' or 'cool')."""


def build_task(task_id: str) -> ToyTask:
    """Derive the world and goal of ``task_id`` (format ``"<task_type>-<anything>"``, e.g. ``"go_to-train-0-0003"``).

    Raises:
        ValueError: when the id does not start with a known task type.
    """
    task_type = task_id.split("-", 1)[0]
    if task_type not in TASK_TYPES:
        raise ValueError(
            f"toy task id {task_id!r} does not start with a task type; ids look like "
            f"'pick_and_place-train-0-0003' with a type from {TASK_TYPES}"
        )
    rng = random.Random(_stable_int(task_id))
    treatment = _TREATMENTS.get(task_type)
    room_name = "kitchen" if treatment else rng.choice(sorted(_ROOMS))
    room = _ROOMS[room_name]
    types = list(room.fixed) + rng.sample(room.optional, rng.randint(2, 4))
    counts: dict[str, int] = {}
    receptacles = []
    for t in types:
        counts[t] = counts.get(t, 0) + 1
        receptacles.append(f"{t} {counts[t]}")
    receptacles.sort()
    storage = [r for r in receptacles if _rtype(r) not in _NOT_STORAGE]
    flag = treatment[2] if treatment else ""
    obj_type = rng.choice(_POOLS[flag] if flag else room.objects)
    others = rng.sample([o for o in room.objects if o != obj_type], rng.randint(2, 4))
    start = rng.choice(storage)
    placements = [(f"{obj_type} 1", start)] + [(f"{o} 1", rng.choice(storage)) for o in others]
    if task_type == "go_to":
        target_type = rng.choice(sorted({_rtype(r) for r in receptacles}))
        return ToyTask(task_id, task_type, room_name, f"go to the {target_type}.", tuple(receptacles),
                       tuple(placements[1:]), "", target_type, "")
    banned = {_rtype(start)} | _NOT_STORAGE | ({_rtype(treatment[1])} if treatment else set())
    target_type = rng.choice(sorted({_rtype(r) for r in receptacles} - banned))
    prep = "in" if target_type in _CONTAINERS else "on"
    noun = f"{flag} {obj_type}" if flag else obj_type
    goal = f"put {_article(noun)} {noun} {prep} the {target_type}."
    return ToyTask(task_id, task_type, room_name, goal, tuple(receptacles), tuple(placements),
                   f"{obj_type} 1", target_type, flag)


@dataclass
class _State:
    """Mutable state of a running episode."""

    order: tuple[str, ...]
    where: dict[str, str]
    flags: dict[str, set[str]]
    opened: set[str]
    location: str | None = None
    holding: str | None = None
    turns: int = 0
    done: bool = False
    won: bool = False


def _is_won(task: ToyTask, s: _State) -> bool:
    if task.task_type == "go_to":
        return s.location is not None and _rtype(s.location) == task.target_type
    place = s.where.get(task.target_object)
    if place is None or _rtype(place) != task.target_type:
        return False
    return not task.treatment or task.treatment in s.flags[task.target_object]


def _solve(task: ToyTask, s: _State) -> list[str]:
    """The shortest action sequence from state ``s`` to the goal (each subgoal costs a fixed number of actions)."""
    if _is_won(task, s):
        return []
    plan: list[str] = []
    loc, opened = s.location, set(s.opened)

    def go(r: str) -> None:
        nonlocal loc
        if loc != r:
            plan.append(f"go to {r}")
            loc = r

    def ensure_open(r: str) -> None:
        if _rtype(r) in _OPENABLE and r not in opened:
            plan.append(f"open {r}")
            opened.add(r)

    def best(rtype: str) -> str:
        cands = [r for r in task.receptacles if _rtype(r) == rtype]
        return min(cands, key=lambda r: (r != loc, _rtype(r) in _OPENABLE and r not in opened, r))

    if task.task_type == "go_to":
        go(best(task.target_type))
        return plan
    obj = task.target_object
    if s.holding is not None and s.holding != obj:
        assert loc is not None  # an object is only ever taken from a receptacle
        ensure_open(loc)
        plan.append(f"put {s.holding} in/on {loc}")
    if s.holding != obj:
        src = s.where[obj]
        go(src)
        ensure_open(src)
        plan.append(f"take {obj} from {src}")
    if task.treatment and task.treatment not in s.flags[obj]:
        verb, appliance, _ = _TREATMENTS[task.task_type]
        go(appliance)
        plan.append(f"{verb} {obj} with {appliance}")
    dest = best(task.target_type)
    go(dest)
    ensure_open(dest)
    plan.append(f"put {obj} in/on {dest}")
    return plan


class ToyTextEnv:
    """The built-in household game; pure Python, tens of microseconds per step.

    Args:
        win_reward: reward of the step that completes the task (all other steps give 0).
        max_turns: the episode is truncated after this many steps (admissible or not).
    """

    name = "toy"

    def __init__(self, *, win_reward: float = 10.0, max_turns: int = 50) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.win_reward = float(win_reward)
        self.max_turns = max_turns
        self._task: ToyTask | None = None
        self._state: _State | None = None
        self._closed = False

    # ----- episode life cycle -------------------------------------------------------------------------------
    def reset(self, *, task_id: str, seed: int) -> tuple[str, EnvInfo]:
        """Start ``task_id``; ``seed`` only permutes the order receptacles are listed in."""
        if self._closed:
            raise EnvError("this ToyTextEnv is closed; build a new one with the environment factory")
        task = build_task(task_id)
        order = list(task.receptacles)
        random.Random(_stable_int(f"{task_id}#{seed}")).shuffle(order)
        self._task = task
        self._state = _State(
            order=tuple(order),
            where=dict(task.placements),
            flags={o: set() for o, _ in task.placements},
            opened=set(),
        )
        obs = (
            f"You are in the middle of a {task.room}. Looking around, you see {_listing(order)}.\n\n"
            f"Your task: {task.goal}"
        )
        return obs, self._info()

    def step(self, action: str) -> StepResult:
        """Apply ``action`` (compared case- and whitespace-insensitively with the admissible actions)."""
        task, s = self._running()
        moves = self._moves()
        key = " ".join(str(action).lower().split())
        s.turns += 1
        obs = self._apply(moves[key]) if key in moves else INVALID_FEEDBACK
        s.won = _is_won(task, s)
        truncated = not s.won and s.turns >= self.max_turns
        s.done = s.won or truncated
        reward = self.win_reward if s.won else 0.0
        return StepResult(obs, reward, s.won, truncated, self._info())

    def close(self) -> None:
        """Drop the episode; later ``reset``/``step`` calls raise ``EnvError``. Idempotent."""
        self._closed = True
        self._task = None
        self._state = None

    def expert_plan(self) -> tuple[str, ...]:
        """The remaining optimal actions from the current state (empty once the task is solved)."""
        task, s = self._current()
        return tuple(_solve(task, s))

    # ----- internals -----------------------------------------------------------------------------------------
    def _current(self) -> tuple[ToyTask, _State]:
        if self._closed:
            raise EnvError("this ToyTextEnv is closed; build a new one with the environment factory")
        if self._task is None or self._state is None:
            raise EnvError("no episode is running; call reset(task_id=..., seed=...) first")
        return self._task, self._state

    def _running(self) -> tuple[ToyTask, _State]:
        task, s = self._current()
        if s.done:
            raise EnvError("the episode is over (terminated or truncated); call reset() to start a new one")
        return task, s

    def _info(self) -> EnvInfo:
        task, s = self._current()
        plan = _solve(task, s)
        return EnvInfo(
            task_id=task.task_id,
            task_type=task.task_type,
            goal=task.goal,
            admissible_actions=() if s.done else tuple(self._moves()),
            won=s.won,
            privileged={"expert_plan": "\n".join(f"{i}. {a}" for i, a in enumerate(plan, 1))},
            extra={"location": s.location or "", "holding": s.holding or "", "turn": s.turns},
        )

    def _moves(self) -> dict[str, tuple[str, ...]]:
        """Admissible action text -> (operation, arguments...), in a stable display order."""
        _, s = self._current()
        moves: dict[str, tuple[str, ...]] = {f"go to {r}": ("go", r) for r in s.order if r != s.location}
        r = s.location
        if r is not None:
            rtype = _rtype(r)
            if rtype in _OPENABLE:
                moves[f"close {r}" if r in s.opened else f"open {r}"] = ("toggle", r)
            if rtype not in _OPENABLE or r in s.opened:
                if s.holding is None:
                    for o in sorted(o for o, p in s.where.items() if p == r):
                        moves[f"take {o} from {r}"] = ("take", o, r)
                else:
                    moves[f"put {s.holding} in/on {r}"] = ("put", s.holding, r)
            if s.holding is not None and rtype in _APPLIANCE_VERB:
                moves[f"{_APPLIANCE_VERB[rtype][0]} {s.holding} with {r}"] = ("treat", s.holding, r)
            moves[f"examine {r}"] = ("examine", r)
        moves["inventory"] = ("inventory",)
        moves["look"] = ("look",)
        return moves

    def _describe(self, r: str) -> str:
        _, s = self._current()
        if _rtype(r) in _OPENABLE and r not in s.opened:
            return f"The {r} is closed."
        items = sorted(o for o, p in s.where.items() if p == r)
        prep = "In" if _rtype(r) in _CONTAINERS else "On"
        return f"{prep} the {r}, you see {_listing(items) if items else 'nothing'}."

    def _apply(self, move: tuple[str, ...]) -> str:
        task, s = self._current()
        op, *args = move
        if op == "go":
            s.location = args[0]
            return f"You arrive at {args[0]}. {self._describe(args[0])}"
        if op == "toggle":
            if args[0] in s.opened:
                s.opened.discard(args[0])
                return f"You close the {args[0]}."
            s.opened.add(args[0])
            return f"You open the {args[0]}. {self._describe(args[0])}"
        if op == "take":
            del s.where[args[0]]
            s.holding = args[0]
            return f"You pick up the {args[0]} from the {args[1]}."
        if op == "put":
            s.where[args[0]] = args[1]
            s.holding = None
            prep = "in" if _rtype(args[1]) in _CONTAINERS else "on"
            return f"You put the {args[0]} {prep} the {args[1]}."
        if op == "treat":
            verb, flag = _APPLIANCE_VERB[_rtype(args[1])]
            s.flags[args[0]] -= {"hot", "cool"} if flag in ("hot", "cool") else set()
            s.flags[args[0]].add(flag)
            return f"You {verb} the {args[0]} using the {args[1]}."
        if op == "examine":
            return self._describe(args[0])
        if op == "inventory":
            return f"You are carrying {_article(s.holding)} {s.holding}." if s.holding else "You are carrying nothing."
        if s.location is None:
            return f"You are in the middle of a {task.room}. Looking around, you see {_listing(s.order)}."
        return f"You are at {s.location}. {self._describe(s.location)}"


def expert_action(env: ToyTextEnv) -> str:
    """The next action of the optimal plan in ``env``'s current state.

    Raises:
        EnvError: when no episode is running or the task is already solved.
    """
    plan = env.expert_plan()
    if not plan:
        raise EnvError("the task is already solved; there is no expert action left")
    return plan[0]


@dataclass(frozen=True)
class ToyTaskSource:
    """Disjoint ``"train"`` and ``"eval"`` task lists; types are assigned round-robin, worlds depend on ``seed``.

    Task ids look like ``"pick_clean_then_place-train-0-0013"`` (type, split, seed, index).
    """

    seed: int = 0
    num_train: int = 200
    num_eval: int = 256
    task_types: tuple[str, ...] = DEFAULT_TASK_TYPES

    def __post_init__(self) -> None:
        unknown = set(self.task_types) - set(TASK_TYPES)
        if unknown or not self.task_types:
            raise ValueError(f"task_types must be a non-empty subset of {TASK_TYPES}, got {self.task_types}")

    def tasks(self, split: str) -> list[TaskSpec]:
        """The tasks of ``split`` in a fixed order.

        Raises:
            ValueError: for a split other than ``"train"`` or ``"eval"``.
        """
        sizes = {"train": self.num_train, "eval": self.num_eval}
        if split not in sizes:
            raise ValueError(f"unknown split {split!r}; ToyTaskSource has 'train' and 'eval'")
        types = self.task_types
        return [
            TaskSpec(f"{types[i % len(types)]}-{split}-{self.seed}-{i:04d}", types[i % len(types)])
            for i in range(sizes[split])
        ]
