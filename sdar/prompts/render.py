"""Per-turn prompt rendering: PromptContext (+ optional privileged text) -> chat messages -> prompt token ids.

Each environment step is its own prompt: a single user message holding, in order, the task line, an optional
privileged block (teacher-only context such as skills; placed right after the task line), the number of steps
taken with the last few (observation, action) pairs, the current step and observation, the admissible actions,
and the answer-format instruction (``<think>…</think>`` then ``<action>…</action>``). The first turn uses a
variant without the history part.

Which template a turn uses belongs to its environment (``EnvSpec.template`` in ``sdar.envs``): callers pass it as
``template=``. This module never imports the environments; when no template is passed, the one ``TEMPLATES`` holds
for ``ctx.env_name`` is used (``sdar.envs.registry`` adds every registered environment's template there when it is
imported), and ``GENERIC_TEMPLATE`` for a name without an entry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from sdar.records import Message, PromptContext

__all__ = [
    "GENERIC_TEMPLATE",
    "HOUSEHOLD_COMPACT_TEMPLATE",
    "HOUSEHOLD_TEMPLATE",
    "TEMPLATES",
    "PromptTemplate",
    "build_context",
    "encode_prompt",
    "fit_prompt",
    "get_template",
    "render_messages",
    "render_user_message",
]


@dataclass(frozen=True)
class PromptTemplate:
    """The text pieces of one environment's per-turn prompt (``str.format`` fields in braces)."""

    preamble: str
    """Opening sentence: who the agent is and where it acts."""
    task: str = "Your goal: {goal}"
    privileged: str = "[Task notes]\n{text}\n[End of task notes]"
    first_step: str = "This is your first step. Current observation: {observation}"
    progress: str = "You have taken {step} step(s) so far."
    history_intro: str = "Your {count} most recent observation(s), each followed by the action you chose:"
    history_item: str = "Step {index} observation: {observation}\nStep {index} action: {action}"
    current: str = "This is step {current_step}. Current observation: {observation}"
    admissible: str = "Actions you can take now: [{actions}]"
    instruction: str = (
        "First think about the situation and what to do next, inside <think> </think> tags. Then write exactly "
        "one action from the list above inside <action> </action> tags. Reply in the form "
        "<think>...</think><action>...</action>"
    )
    instruction_free: str = (
        "First think about the situation and what to do next, inside <think> </think> tags. Then write your "
        "action inside <action> </action> tags. Reply in the form <think>...</think><action>...</action>"
    )
    """Used instead of ``instruction`` when the environment gives no admissible-action list."""


HOUSEHOLD_TEMPLATE = PromptTemplate(
    preamble="You are an agent carrying out a household task in a text-only simulator, one command per step."
)
GENERIC_TEMPLATE = PromptTemplate(preamble="You are an agent interacting with a text environment, one action per step.")

HOUSEHOLD_COMPACT_TEMPLATE = PromptTemplate(
    preamble="Household game.",
    task="Goal: {goal}",
    privileged="Plan:\n{text}",
    first_step="Observation: {observation}",
    progress="Step {step}.",
    history_intro="Last {count}:",
    history_item="{observation} -> {action}",
    current="Observation: {observation}",
    admissible="Actions: [{actions}]",
    instruction="Reply <think>...</think><action>...</action>",
    instruction_free="Reply <think>...</think><action>...</action>",
)
"""A short household prompt (about a third of the tokens) for small models trained from scratch (the testbed)."""

TEMPLATES: dict[str, PromptTemplate] = {}
"""Environment name -> template, for rendering without an explicit ``template=``. ``sdar.envs.registry`` fills it
from the environment specs on import; an entry added by hand serves an environment no spec describes."""
COMPACT_TEMPLATES: dict[str, PromptTemplate] = {}
"""Environment name -> its ``style="compact"`` template (filled like ``TEMPLATES``)."""
PROMPT_STYLES = ("", "compact")


def get_template(env_name: str, style: str = "") -> PromptTemplate:
    """The template ``TEMPLATES`` holds for ``env_name`` (``style="compact"``: ``COMPACT_TEMPLATES``'s), or
    ``GENERIC_TEMPLATE``. Package code asks the environment's spec instead (``sdar.envs.registry.prompt_template``).

    Raises:
        ValueError: for an unknown style, or a compact style the environment has no template for.
    """
    if style:
        if style != "compact" or env_name not in COMPACT_TEMPLATES:
            raise ValueError(f"prompt style {style!r} is not available for {env_name!r}; compact exists for "
                             f"{sorted(COMPACT_TEMPLATES)}, or use the default style ''")
        return COMPACT_TEMPLATES[env_name]
    return TEMPLATES.get(env_name, GENERIC_TEMPLATE)


def _privileged_text(privileged: str | None) -> str | None:
    return privileged if privileged is not None and privileged.strip() else None


def build_context(
    env_name: str,
    goal: str,
    step: int,
    observation: str,
    admissible: Sequence[str],
    history_pairs: Sequence[tuple[str, str]],
    history_length: int,
    style: str = "",
) -> PromptContext:
    """Collect one turn's prompt inputs, keeping only the last ``history_length`` (observation, action) pairs.

    Args:
        env_name: the environment (``TextEnv.name``); recorded so the turn can be re-rendered with its template.
        goal: task description.
        step: number of turns already taken (0 on the first turn).
        observation: the current observation.
        admissible: actions accepted now (empty for a free-text action space).
        history_pairs: all past (observation, action) pairs of the episode, oldest first.
        history_length: window size; 0 shows no history.
        style: prompt style ('' = the environment's template, 'compact' = its short variant).

    Raises:
        ValueError: for a negative ``step``/``history_length`` or more pairs than steps taken.
    """
    if step < 0 or history_length < 0:
        raise ValueError(f"step and history_length must be >= 0, got step={step}, history_length={history_length}")
    if len(history_pairs) > step:
        raise ValueError(f"{len(history_pairs)} history pairs given but only {step} step(s) taken")
    window = tuple(history_pairs)[max(0, len(history_pairs) - history_length) :] if history_length else ()
    return PromptContext(
        env_name=env_name,
        goal=goal,
        step=step,
        observation=observation,
        admissible_actions=tuple(admissible),
        history=tuple((str(o), str(a)) for o, a in window),
        style=style,
    )


def render_user_message(
    ctx: PromptContext, *, privileged: str | None = None, template: PromptTemplate | None = None
) -> str:
    """The user-message text for one turn; ``privileged`` (if non-blank) goes right after the task line.

    ``template`` is the environment's wording for ``ctx.style`` (``EnvSpec.template`` or ``compact_template``);
    None looks it up with ``get_template(ctx.env_name, ctx.style)``.

    Raises:
        ValueError: when ``ctx`` holds more history pairs than steps taken.
    """
    if len(ctx.history) > ctx.step:
        raise ValueError(f"PromptContext has {len(ctx.history)} history pairs but step={ctx.step}")
    t = template if template is not None else get_template(ctx.env_name, ctx.style)
    parts = [f"{t.preamble} {t.task.format(goal=ctx.goal)}"]
    text = _privileged_text(privileged)
    if text is not None:
        parts.append(t.privileged.format(text=text))
    if ctx.step == 0:
        parts.append(t.first_step.format(observation=ctx.observation))
    else:
        progress = t.progress.format(step=ctx.step)
        if ctx.history:
            first = ctx.step - len(ctx.history) + 1
            items = [
                t.history_item.format(index=first + i, observation=obs, action=act)
                for i, (obs, act) in enumerate(ctx.history)
            ]
            progress = "\n".join([f"{progress} {t.history_intro.format(count=len(ctx.history))}", *items])
        parts.append(progress)
        parts.append(t.current.format(current_step=ctx.step + 1, observation=ctx.observation))
    if ctx.admissible_actions:
        parts.append(t.admissible.format(actions=", ".join(f"'{a}'" for a in ctx.admissible_actions)))
        parts.append(t.instruction)
    else:
        parts.append(t.instruction_free)
    return "\n\n".join(parts)


def render_messages(
    ctx: PromptContext,
    *,
    privileged: str | None = None,
    system: str | None = None,
    template: PromptTemplate | None = None,
) -> list[Message]:
    """``[system?, user]`` messages for one turn (no system message when ``system`` is None or empty); ``template``
    as in ``render_user_message``."""
    messages = [Message("system", system)] if system else []
    messages.append(Message("user", render_user_message(ctx, privileged=privileged, template=template)))
    return messages


def encode_prompt(tokenizer: Any, messages: Sequence[Message], *, enable_thinking: bool | None = None) -> list[int]:
    """Apply the tokenizer's chat template with a generation prompt and return the token ids.

    ``enable_thinking`` is forwarded to the template only when not None (Qwen3 templates read it).
    """
    kwargs: dict[str, Any] = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    text = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False,
        add_generation_prompt=True,
        **kwargs,
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(
    tokenizer: Any,
    ctx: PromptContext,
    *,
    privileged: str | None,
    max_tokens: int,
    system: str | None = None,
    enable_thinking: bool | None = None,
    template: PromptTemplate | None = None,
) -> tuple[list[int], PromptContext]:
    """Encode the turn's prompt within ``max_tokens``, dropping the oldest history pairs first.

    The privileged text and the current observation are never shortened. ``template`` as in
    ``render_user_message``.

    Returns:
        The prompt ids and the context actually rendered (``ctx`` with possibly fewer history pairs).

    Raises:
        ValueError: when the prompt is too long even without history.
    """
    while True:
        messages = render_messages(ctx, privileged=privileged, system=system, template=template)
        ids = encode_prompt(tokenizer, messages, enable_thinking=enable_thinking)
        if len(ids) <= max_tokens:
            return ids, ctx
        if not ctx.history:
            raise ValueError(
                f"the prompt needs {len(ids)} tokens even with no history, but max_tokens is {max_tokens}; "
                "raise the prompt token limit or shorten the observation / privileged text"
            )
        ctx = dataclasses.replace(ctx, history=ctx.history[1:])
