"""Multi-turn episode collection in the step-independent form: every turn is its own prompt built from structure.

All episodes run in lock-step: each turn, the prompts of every still-active episode go to the generator in one
``generate`` call. Per turn and episode the collector builds a ``PromptContext`` (task, steps taken, last
``history_length`` (observation, action) pairs, current observation, admissible actions), renders and encodes it
with ``fit_prompt`` (oldest history dropped first when over ``max_prompt_tokens``), samples, decodes the sampled
ids only to parse the action (``Turn.response_ids`` are the generator's ids verbatim), and steps the environment.

Decisions:

* Which responses are invalid is ``settings.invalid_rule``: ``format`` (the default, as the reference) = malformed
  tags or CJK text only; a well-formed action outside the admissible list is valid and sent to the environment,
  which answers it like any other action (e.g. "Nothing happens."). ``admissible`` = also actions outside the list.
* An invalid response is *not* sent to the environment. The turn is recorded with ``valid=False``, reward 0 and
  observation ``INVALID_FEEDBACK``; the environment state and admissible actions stay as they were and the episode
  continues. The turn still counts towards ``max_turns``. The invalid-action penalty is applied later by the
  trainer (``Turn.reward`` is raw).
* History pairs are (observation the turn saw, action it produced); an unparseable response shows as
  ``NO_ACTION_TEXT``.
* Environment failures never stop the collection: a failed ``reset`` is retried once on a fresh instance; a second
  failure gives an empty trajectory with ``failed=True``. An exception from ``step`` ends that episode with
  ``failed=True`` and ``won=False``; the turn whose step failed is dropped (it has no environment answer).
* A prompt that does not fit ``max_prompt_tokens`` even with no history raises ``ValueError``: it is a
  configuration error that would repeat on every step.
* ``Trajectory.privileged`` is the env's privileged info at reset (e.g. ``expert_plan``) updated with the
  request's mappings: ``privileged_at_reset(info)`` (context that needs what the environment reports at reset,
  such as skills retrieved by the goal), then ``privileged`` (request wins on a key clash); ``Turn.privileged`` is
  the env's privileged info in the state the turn acted in (a plan re-made from that state).
* With ``settings.sampling.seed`` set, turn ``t`` samples with a seed derived from ``(seed, t)`` and the episode
  ids as ``row_keys`` (when they are distinct), so a backend that seeds rows one by one (vLLM) gives each episode the
  same sample however the episodes are split over ranks; the caller varies ``sampling.seed`` between calls to get
  fresh samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from sdar.envs.base import EnvFactory, TaskSpec, TextEnv
from sdar.envs.pool import StepOutcome, reset_envs, step_envs
from sdar.envs.registry import get_parser, prompt_template
from sdar.prompts.parse import INVALID_RULES, ParsedAction, apply_invalid_rule
from sdar.prompts.render import build_context, fit_prompt
from sdar.records import EnvInfo, PromptContext, Trajectory, Turn
from sdar.rollout.generator import Generator, Sample, SamplingParams, session

__all__ = [
    "INVALID_FEEDBACK",
    "NO_ACTION_TEXT",
    "CollectSettings",
    "EpisodeRequest",
    "TurnProgress",
    "collect_episodes",
    "turn_seed",
]

logger = logging.getLogger(__name__)

INVALID_FEEDBACK = "Nothing happens."
"""Observation recorded for an invalid turn (nothing was sent to the environment)."""
NO_ACTION_TEXT = "(no valid action)"
"""Action shown in the history for a turn whose response could not be parsed."""


@dataclass(frozen=True)
class CollectSettings:
    """How episodes are rolled out."""

    max_turns: int = 50
    """Episodes stop (truncated) after this many turns."""
    history_length: int = 2
    """(observation, action) pairs shown in each prompt."""
    max_prompt_tokens: int = 2048
    invalid_penalty: float = 0.1
    """Stored for the trainer, which subtracts it per invalid turn; the collector keeps raw rewards."""
    invalid_rule: str = "format"
    """``format``: only malformed responses are invalid, a well-formed inadmissible action is sent to the environment
    (the reference); ``admissible``: an action outside the admissible list is invalid too and is not sent."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    enable_thinking: bool | None = None
    """Forwarded to the chat template when not None (Qwen3 runs use False)."""
    system_prompt: str | None = None
    prompt_style: str = ""
    """Prompt style ('' = the environment's template, 'compact' = its short variant)."""
    student_privileged_source: str | None = None
    """Key of a privileged text shown to the *student* as well (Skill-GRPO puts skills there). Looked up in the
    request's context first (``privileged``, then ``privileged_at_reset``), then in the environment's current
    ``EnvInfo.privileged``; absent -> none."""

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.history_length < 0:
            raise ValueError(f"history_length must be >= 0, got {self.history_length}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if self.invalid_penalty < 0:
            raise ValueError(f"invalid_penalty must be >= 0 (it is subtracted), got {self.invalid_penalty}")
        if self.invalid_rule not in INVALID_RULES:
            raise ValueError(f"invalid_rule must be one of {INVALID_RULES}, got {self.invalid_rule!r}")


@dataclass(frozen=True)
class EpisodeRequest:
    """One episode to run."""

    task: TaskSpec
    seed: int
    group_id: int
    episode_id: int
    privileged: Mapping[str, str] = field(default_factory=dict)
    """Teacher context decided before the episode (e.g. retrieved skills), by source name."""
    privileged_at_reset: Callable[[EnvInfo], Mapping[str, str]] | None = None
    """Teacher context that needs what the environment reports at reset (e.g. skills retrieved by the goal text):
    called once after the episode's successful reset with its ``EnvInfo``; ``privileged`` wins on a key clash."""


@dataclass(frozen=True)
class TurnProgress:
    """Where a collection stands after one lock-step turn (what ``collect_episodes`` reports to ``progress``)."""

    turn: int
    """Index of the turn just finished (0-based, as ``Turn.index``); ``turn + 1`` turns are done."""
    max_turns: int
    """The turn limit (``CollectSettings.max_turns``): the collection ends after this many turns at the latest."""
    active: int
    """Episodes still running after this turn."""
    finished: int
    """Episodes that have ended (won, lost, truncated or failed), including those whose reset failed."""
    total: int
    """Episodes requested (``active + finished``)."""
    tokens: int
    """Response tokens generated so far, over all episodes and turns."""
    seconds: float
    """Wall-clock seconds since the collection started (environment resets included)."""


ProgressFn = Callable[[TurnProgress], None]
"""Called by ``collect_episodes`` after every turn."""


def turn_seed(seed: int, turn: int) -> int:
    """A 31-bit sampling seed for ``turn`` derived from the collection seed (no correlation between turns)."""
    digest = hashlib.sha256(f"{seed}:{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class _Episode:
    """Mutable bookkeeping of one running episode."""

    request: EpisodeRequest
    env: TextEnv | None
    observation: str = ""
    info: EnvInfo | None = None
    privileged: dict[str, str] = field(default_factory=dict)
    given: dict[str, str] = field(default_factory=dict)
    """The request's context: ``privileged_at_reset(info)`` updated with ``privileged``."""
    turns: list[Turn] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False
    won: bool = False
    failed: bool = False


def _close(env: TextEnv | None) -> None:
    if env is None:
        return
    try:
        env.close()
    except Exception:  # noqa: BLE001 - a failing close must not stop the collection
        logger.warning("closing environment %r failed", getattr(env, "name", env), exc_info=True)


def _start_all(requests: Sequence[EpisodeRequest], make_env: EnvFactory) -> list[_Episode]:
    """Build and reset one environment per request (concurrently on pool environments), retrying once on a fresh
    instance."""
    episodes: dict[int, _Episode] = {}
    todo = list(range(len(requests)))
    for attempt in (1, 2):
        envs: dict[int, TextEnv] = {}
        for i in todo:
            try:
                envs[i] = make_env()
            except Exception:  # noqa: BLE001 - any backend failure is handled as a failed reset
                logger.warning("building the env of task %s failed (attempt %d of 2)", requests[i].task.task_id,
                               attempt, exc_info=True)
        outcomes = reset_envs([(env, requests[i].task.task_id, requests[i].seed) for i, env in envs.items()])
        for (i, env), outcome in zip(envs.items(), outcomes):
            request = requests[i]
            if isinstance(outcome, Exception):
                logger.warning("reset of task %s failed (attempt %d of 2)", request.task.task_id, attempt,
                               exc_info=outcome)
                _close(env)
                continue
            observation, info = outcome
            late = request.privileged_at_reset(info) if request.privileged_at_reset is not None else {}
            given = {**dict(late), **dict(request.privileged)}
            episodes[i] = _Episode(request, env, observation=observation, info=info,
                                   privileged={**dict(info.privileged), **given}, given=given)
        todo = [i for i in todo if i not in episodes]
    for i in todo:
        episodes[i] = _Episode(requests[i], None, privileged=dict(requests[i].privileged), done=True, failed=True)
    return [episodes[i] for i in range(len(requests))]


def _student_privileged(ep: _Episode, source: str | None) -> str | None:
    if source is None:
        return None
    if source in ep.given:
        return ep.given[source]
    assert ep.info is not None
    return ep.info.privileged.get(source)


def _prepare(ep: _Episode, turn: int, tokenizer: Any, settings: CollectSettings) -> tuple[list[int], PromptContext]:
    assert ep.env is not None and ep.info is not None
    ctx = build_context(
        ep.env.name,
        ep.info.goal,
        turn,
        ep.observation,
        ep.info.admissible_actions,
        ep.history,
        settings.history_length,
        settings.prompt_style,
    )
    return fit_prompt(
        tokenizer,
        ctx,
        privileged=_student_privileged(ep, settings.student_privileged_source),
        max_tokens=settings.max_prompt_tokens,
        system=settings.system_prompt,
        enable_thinking=settings.enable_thinking,
        template=prompt_template(ctx.env_name, ctx.style),
    )


def _parse(ep: _Episode, sample: Sample, tokenizer: Any, rule: str) -> tuple[str, ParsedAction]:
    """Decode one sampled response and parse its action against the episode's admissible actions, judged by
    ``rule`` (``CollectSettings.invalid_rule``)."""
    assert ep.info is not None
    if len(sample.logprobs) != len(sample.token_ids):
        raise RuntimeError(
            f"the generator returned {len(sample.logprobs)} logprobs for {len(sample.token_ids)} tokens; "
            "a Generator must return one logprob per sampled id"
        )
    text = tokenizer.decode(list(sample.token_ids), skip_special_tokens=True)
    return text, apply_invalid_rule(get_parser(ep.env.name)(text, ep.info.admissible_actions or None), rule)


def _advance(
    ep: _Episode,
    turn: int,
    ids: list[int],
    ctx: PromptContext,
    sample: Sample,
    text: str,
    parsed: ParsedAction,
    outcome: StepOutcome | None,
    max_turns: int,
) -> None:
    """Record one turn from its parsed response and the environment's answer (None when nothing was stepped)."""
    assert ep.env is not None and ep.info is not None
    reward, observation, done = 0.0, INVALID_FEEDBACK, False
    state_privileged = dict(ep.info.privileged)  # what the environment knew in the state this turn acted in
    if parsed.valid:
        if isinstance(outcome, Exception) or outcome is None:
            logger.warning("env.step failed on task %s, turn %d", ep.request.task.task_id, turn, exc_info=outcome)
            ep.done, ep.failed, ep.won = True, True, False
            return
        result = outcome
        reward, observation, ep.info = float(result.reward), result.observation, result.info
        done = result.terminated or result.truncated
        ep.won = bool(result.info.won)
    done = done or turn + 1 >= max_turns
    ep.turns.append(
        Turn(
            index=turn,
            context=ctx,
            prompt_ids=tuple(ids),
            response_ids=tuple(sample.token_ids),
            response_logprobs=tuple(sample.logprobs),
            response_text=text,
            action=parsed.action,
            valid=parsed.valid,
            finish_reason=sample.finish_reason,
            reward=reward,
            observation=observation,
            done=done,
            privileged=state_privileged,
        )
    )
    ep.history.append((ep.observation, parsed.action or NO_ACTION_TEXT))
    ep.observation = observation
    ep.done = done


def _trajectory(ep: _Episode) -> Trajectory:
    request = ep.request
    task_type = ep.info.task_type if ep.info is not None and ep.info.task_type else request.task.task_type
    return Trajectory(
        task_id=request.task.task_id,
        task_type=task_type,
        group_id=request.group_id,
        episode_id=request.episode_id,
        seed=request.seed,
        turns=tuple(ep.turns),
        won=ep.won and not ep.failed,
        privileged=dict(ep.privileged),
        failed=ep.failed,
        final_extra=dict(ep.info.extra) if ep.info is not None and ep.turns else {},
    )


def collect_episodes(
    requests: Sequence[EpisodeRequest],
    make_env: EnvFactory,
    generator: Generator,
    tokenizer: Any,
    settings: CollectSettings,
    progress: ProgressFn | None = None,
) -> list[Trajectory]:
    """Run every requested episode to its end, batching all active prompts into one generate call per turn.

    Args:
        requests: episodes to run (one environment instance each).
        make_env: builds a fresh environment.
        generator: samples responses for token-id prompts.
        tokenizer: chat tokenizer (``apply_chat_template``, ``__call__``, ``decode``).
        settings: turn limit, history window, prompt budget, sampling.
        progress: called after every turn with a ``TurnProgress`` (e.g. ``sdar.metrics.RolloutProgress``, a
            throttled console line); an exception it raises propagates.

    Returns:
        One trajectory per request, in request order.

    Raises:
        ValueError: when a prompt does not fit ``max_prompt_tokens`` even with no history.
        RuntimeError: when the generator returns the wrong number of samples or logprobs.
    """
    began = time.perf_counter()
    tokens = 0
    episodes = _start_all(requests, make_env)
    try:
        with session(generator):  # the sampler's per-rollout state (merged LoRA weights) set up once
            for turn in range(settings.max_turns):
                active = [ep for ep in episodes if not ep.done]
                if not active:
                    break
                prepared = [_prepare(ep, turn, tokenizer, settings) for ep in active]
                params = settings.sampling
                if params.seed is not None:  # rows keyed by episode: the same sample on any rank, in any batch
                    keys = tuple(ep.request.episode_id for ep in active)
                    params = dataclasses.replace(params, seed=turn_seed(params.seed, turn),
                                                 row_keys=keys if len(set(keys)) == len(keys) else None)
                samples = generator.generate([ids for ids, _ in prepared], params)
                if len(samples) != len(active):
                    raise RuntimeError(f"the generator returned {len(samples)} samples for {len(active)} prompts")
                parsed = [_parse(ep, sample, tokenizer, settings.invalid_rule) for ep, sample in zip(active, samples)]
                stepping = [k for k, (_, p) in enumerate(parsed) if p.valid]
                answers = dict(zip(stepping, step_envs([(active[k].env, parsed[k][1].action) for k in stepping])))
                for k, (ep, (ids, ctx), sample) in enumerate(zip(active, prepared, samples)):
                    text, action = parsed[k]
                    _advance(ep, turn, ids, ctx, sample, text, action, answers.get(k), settings.max_turns)
                    if ep.done:
                        _close(ep.env)
                        ep.env = None
                logger.debug("turn %d: %d active episodes", turn, len(active))
                if progress is not None:
                    tokens += sum(len(sample.token_ids) for sample in samples)
                    running = sum(not ep.done for ep in episodes)
                    progress(TurnProgress(turn=turn, max_turns=settings.max_turns, active=running,
                                          finished=len(episodes) - running, total=len(episodes), tokens=tokens,
                                          seconds=time.perf_counter() - began))
    finally:
        for ep in episodes:
            _close(ep.env)
    return [_trajectory(ep) for ep in episodes]
