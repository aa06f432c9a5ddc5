"""The only door to the ``alfworld`` / ``textworld`` packages: lazy imports, shipped data paths and the engine stack.

Every import of the optional engine happens inside a function here, so ``sdar.envs.alfworld`` imports fine when
the engine is not installed; a missing package becomes ``EnvUnavailable`` with the pip command that fixes it.
Note that importing ``alfworld`` itself creates ``$ALFWORLD_DATA`` (default ``~/.cache/alfworld``) and exports
``ALFWORLD_DATA`` when it is unset; that is ALFWorld's behaviour, and matches the default data location used here.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from sdar.envs.base import EnvUnavailable

__all__ = [
    "ENGINE_PACKAGES",
    "Engine",
    "ShippedData",
    "cached_translations",
    "constants",
    "goal_library",
    "guarded_argv",
    "open_engine",
    "require_engine",
    "shipped_data",
]

logger = logging.getLogger(__name__)

ENGINE_PACKAGES = ("textworld", "alfworld", "fast_downward")
"""Top-level modules the engine needs (``fast_downward`` comes with ``textworld[pddl]``, pulled by ``alfworld``)."""


def require_engine() -> None:
    """Import the engine packages once, or raise ``EnvUnavailable`` naming the missing one and the pip extra."""
    for name in ENGINE_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise EnvUnavailable.missing_package("alfworld", name, extra="alfworld") from exc


@dataclass(frozen=True)
class ShippedData:
    """Files the ``alfworld`` wheel ships: the PDDL domain, the TextWorld grammar and the floorplan layouts."""

    domain: Path
    """``alfworld/data/alfred.pddl``."""
    grammar: Path
    """``alfworld/data/alfred.twl2`` (its goal line reads ``UNKNOWN GOAL`` until a task is filled in)."""
    layouts: Path
    """``alfworld/gen/layouts`` with ``FloorPlan<N>-{objects.json,openable.json,layout.npy}``."""


def shipped_data() -> ShippedData:
    """Locate the files the installed ``alfworld`` package ships.

    Raises:
        EnvUnavailable: when ``alfworld`` is not installed or its data files are missing.
    """
    require_engine()
    spec = importlib.util.find_spec("alfworld")
    if spec is None or spec.origin is None:
        raise EnvUnavailable.missing_package("alfworld", "alfworld", extra="alfworld")
    root = Path(spec.origin).parent
    data = ShippedData(root / "data" / "alfred.pddl", root / "data" / "alfred.twl2", root / "gen" / "layouts")
    for path in (data.domain, data.grammar, data.layouts):
        if not path.exists():
            raise EnvUnavailable(
                f"the installed alfworld package lacks {path}; reinstall it with: pip install 'sdar[alfworld]'"
            )
    return data


def constants() -> ModuleType:
    """``alfworld.gen.constants``: object/receptacle compatibility and affordance tables."""
    require_engine()
    return importlib.import_module("alfworld.gen.constants")


def goal_library() -> dict[str, dict[str, Any]]:
    """``alfworld.gen.goal_library.gdict``: per task type, the PDDL goal and the goal sentence templates."""
    require_engine()
    return importlib.import_module("alfworld.gen.goal_library").gdict


@contextlib.contextmanager
def guarded_argv() -> Iterator[None]:
    """Restore ``sys.argv`` afterwards: the PDDL translator overwrites it each time a game is (re)loaded."""
    saved = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = saved


@functools.lru_cache(maxsize=32)
def _cached_translation(domain: str, problem: str, verbose: bool, optimize: bool) -> Any:
    import fast_downward.interface

    return fast_downward.interface.pddl2sas(domain, problem, verbose=verbose, optimize=optimize)


def _memo_pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
    """Same contract as ``fast_downward.pddl2sas``; the result is read-only for its callers, so it can be shared."""
    return _cached_translation(domain, problem, bool(verbose), bool(optimize))


@contextlib.contextmanager
def cached_translations() -> Iterator[None]:
    """Reuse PDDL-to-SAS translations while (re)loading games.

    ``PddlEnv`` translates the whole problem twice on every ``load`` and every ``reset`` (0.3-1 s for a furnished
    room), although the result depends only on the problem text. Inside this block ``fast_downward.pddl2sas``
    answers from a small process-wide cache; ``sys.argv``, which the translator overwrites, is restored.
    """
    import fast_downward

    saved = fast_downward.pddl2sas
    fast_downward.pddl2sas = _memo_pddl2sas
    try:
        with guarded_argv():
            yield
    finally:
        fast_downward.pddl2sas = saved


def _expert_view(command: str) -> str:
    """The command as the hand-coded expert should hear it.

    The expert of alfworld 0.4.2 notices that an object left the agent's hands only through the word ``put``,
    while the 0.4.2 grammar spells that action ``move X to Y``; without this, the expert believes it still holds
    a delivered object and stalls on the second object of ``pick_two_obj_and_place``.
    """
    return "put " + command[len("move "):] if command.startswith("move ") else command


def playable_plan(plan: list[str], admissible: list[str], rng: random.Random) -> list[str]:
    """The expert's plan with a leading ``help`` replaced by another admissible command (drawn with ``rng``).

    When the hand-coded expert would repeat its last action it falls back to a random admissible command, and the
    engine's list includes ``help``, which the environment hides from the agent (it shows the commands and changes
    nothing). An expert that proposes it would end its demonstration episode; the redraw keeps it going, as the
    fallback means to. Other plans are returned unchanged.
    """
    if not plan or plan[0] != "help":
        return plan
    others = [c for c in admissible if c != "help"]
    return [rng.choice(others)] if others else []


@functools.lru_cache(maxsize=1)
def _seeded_expert_class() -> type:
    """ALFWorld's ``AlfredExpert`` made deterministic and fault-tolerant (built lazily: it needs the engine)."""
    from alfworld.agents.environment.alfred_tw_env import AlfredExpert

    class SeededAlfredExpert(AlfredExpert):  # type: ignore[misc, valid-type]
        """Seeds the hand-coded expert's ``random.choice`` per step and keeps an expert failure out of the game.

        The hand-coded expert draws tie-breaks from the global ``random`` module; each computation runs under a
        seed derived from ``(episode seed, turn)`` and the caller's random state is restored afterwards. An
        expert error leaves an empty plan (the game itself is unaffected).
        """

        episode_seed: int = 0
        turn: int = 0

        def _gather_infos(self) -> None:
            saved, command = random.getstate(), self.prev_command
            random.seed(f"alfworld-expert|{self.episode_seed}|{self.turn}")
            self.prev_command = _expert_view(command)
            try:
                super()._gather_infos()
                self.state["extra.expert_plan"] = playable_plan(
                    list(self.state.get("extra.expert_plan") or []), list(self.state.get("admissible_commands") or []),
                    random.Random(f"alfworld-expert-help|{self.episode_seed}|{self.turn}"))
            except Exception as exc:  # noqa: BLE001 - the expert is advisory; the game must go on
                logger.warning("the ALFWorld expert failed on %s: %r", self.gamefile, exc)
                self.state["extra.expert_plan"] = []
            finally:
                random.setstate(saved)
                self.prev_command = command

    return SeededAlfredExpert


class Engine:
    """``PddlEnv`` wrapped by ALFWorld's demangler, infos and hand-coded (or planner) expert; loads game after game.

    Each ``PddlEnv`` holds a private copy of the Fast Downward library, so one engine serves every game of an
    environment instance (as in ALFWorld's own batch environments) instead of one engine per game.
    """

    def __init__(self, *, expert: str) -> None:
        require_engine()
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpertType, AlfredInfos
        from textworld.envs import PddlEnv

        kind = {"handcoded": AlfredExpertType.HANDCODED, "planner": AlfredExpertType.PLANNER}[expert]
        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "expert_plan"])
        self._pddl: Any = PddlEnv(infos)
        self._env: Any = _seeded_expert_class()(AlfredInfos(AlfredDemangler(self._pddl, shuffle=False)),
                                                expert_type=kind)
        self.game_file: Path | None = None

    def load(self, game_file: Path) -> None:
        """Load ``game_file`` (a ``game.tw-pddl`` next to its ``traj_data.json``)."""
        self.game_file = None
        with cached_translations():
            self._env.load(str(game_file))
        self.game_file = game_file

    def reset(self, seed: int) -> Any:
        """Restart the loaded game; ``seed`` drives the expert's tie-breaks. Returns the textworld ``GameState``."""
        self._env.episode_seed, self._env.turn = seed, 0
        with cached_translations():
            return self._env.reset()

    def step(self, command: str, turn: int) -> Any:
        """Apply ``command`` (turn ``turn`` >= 1). Returns the new ``GameState``."""
        self._env.turn = turn
        state, _, _ = self._env.step(command)
        return state

    def close(self) -> None:
        """Free the planner's task memory; idempotent.

        The library copy itself stays mapped: unloading copies with ``dlclose`` crashes the interpreter at exit.
        """
        lib = getattr(self._pddl, "downward_lib", None)
        self._pddl, self.game_file = None, None
        if lib is not None:
            with contextlib.suppress(Exception):
                lib.cleanup()


def open_engine(*, expert: str = "handcoded") -> Engine:
    """A fresh engine with no game loaded yet."""
    return Engine(expert=expert)
