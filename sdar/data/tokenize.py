"""Build learner batches from trajectories: the per-turn view, its teacher prompts, and the whole-conversation view.

Sampled token ids are always used verbatim (never decoded and re-encoded); only template and environment text is
tokenized here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import torch

from sdar.batch import TokenBatch, pad_right
from sdar.envs.registry import prompt_template
from sdar.prompts.render import encode_prompt, fit_prompt, render_messages
from sdar.records import Message, Trajectory, Turn

SourceText = Callable[[Trajectory, Turn], "str | None"]
"""Returns the privileged text for one turn's teacher prompt, or None when there is none."""


def _batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    masks: Sequence[Sequence[bool]],
    logprobs: Sequence[Sequence[float]],
    advantages: Sequence[float],
    group_ids: Sequence[int],
    episode_ids: Sequence[int],
    turn_ids: Sequence[int],
) -> TokenBatch:
    """Pad ragged per-row lists into a ``TokenBatch``; each row's advantage is put on its loss-mask positions."""
    width = max((len(r) for r in responses), default=0)
    loss_mask = pad_right(masks, width, value=False, dtype=torch.bool)  # [N, A]
    old_logprobs = pad_right(logprobs, width, dtype=torch.float32) * loss_mask  # [N, A]
    adv = torch.as_tensor(list(advantages), dtype=torch.float32).reshape(-1, 1) * loss_mask  # [N, A]
    return TokenBatch(
        prompts=tuple(tuple(p) for p in prompts),
        responses=tuple(tuple(r) for r in responses),
        loss_mask=loss_mask,
        old_logprobs=old_logprobs,
        advantages=adv,
        group_ids=torch.as_tensor(list(group_ids), dtype=torch.long),
        episode_ids=torch.as_tensor(list(episode_ids), dtype=torch.long),
        turn_ids=torch.as_tensor(list(turn_ids), dtype=torch.long),
    )


def _check_turn(traj: Trajectory, turn: Turn) -> None:
    if len(turn.response_logprobs) != len(turn.response_ids):
        raise ValueError(
            f"episode {traj.episode_id} turn {turn.index}: {len(turn.response_ids)} response ids but "
            f"{len(turn.response_logprobs)} log-probs"
        )


def turn_rows(
    trajectories: Sequence[Trajectory], *, advantages_per_turn: Sequence[float] | None = None
) -> TokenBatch:
    """The per-turn view: one row per turn (trajectories in order, turns in order).

    prompt = ``turn.prompt_ids``; response = ``turn.response_ids``; every response token counts in the loss;
    ``old_logprobs`` = the generator's log-probs (sampled under exactly this prompt).

    Args:
        trajectories: episodes.
        advantages_per_turn: one scalar per row, broadcast over the row's tokens; zeros when None.

    Returns:
        A ``TokenBatch`` with N = total number of turns.
    """
    turns = [(traj, turn) for traj in trajectories for turn in traj.turns]
    if advantages_per_turn is None:
        advantages_per_turn = [0.0] * len(turns)
    if len(advantages_per_turn) != len(turns):
        raise ValueError(f"{len(advantages_per_turn)} advantages given for {len(turns)} turns")
    for traj, turn in turns:
        _check_turn(traj, turn)
    return _batch(
        prompts=[turn.prompt_ids for _, turn in turns],
        responses=[turn.response_ids for _, turn in turns],
        masks=[[True] * len(turn.response_ids) for _, turn in turns],
        logprobs=[turn.response_logprobs for _, turn in turns],
        advantages=advantages_per_turn,
        group_ids=[traj.group_id for traj, _ in turns],
        episode_ids=[traj.episode_id for traj, _ in turns],
        turn_ids=[turn.index for _, turn in turns],
    )


class TeacherPrompts(NamedTuple):
    """Teacher prompts of the rows of ``turn_rows(trajectories)``, in the same order."""

    prompts: list[tuple[int, ...]]
    has_context: list[bool]
    """Whether the row got privileged text (False rows reuse the student prompt unchanged)."""
    history_dropped: list[bool]
    """Whether the teacher's prompt holds fewer history pairs than the student's did (the budget cut them)."""

    @property
    def history_dropped_share(self) -> float:
        """Share of the rows whose teacher saw less history than the student (0 for no rows)."""
        return sum(self.history_dropped) / len(self.history_dropped) if self.history_dropped else 0.0


def build_teacher_prompts(
    trajectories: Sequence[Trajectory],
    tokenizer: Any,
    *,
    source_text: SourceText,
    max_tokens: int,
    system: str | None = None,
    enable_thinking: bool | None = None,
) -> TeacherPrompts:
    """Teacher prompt ids for every row of ``turn_rows(trajectories)``, in the same order.

    Each turn's ``PromptContext`` (the context the student's prompt was rendered from) is re-rendered with the
    privileged text inside the user message. When the result exceeds ``max_tokens``, the oldest history pairs are
    dropped; the privileged text is never cut. Such a row is flagged in ``history_dropped``: its teacher conditions on
    less history than the student, so part of the teacher-student gap comes from the missing history, not from the
    privileged text. Responses are not touched: use ``batch.with_prompts(result.prompts)``.

    Args:
        trajectories: the same episodes given to ``turn_rows``.
        tokenizer: a tokenizer with a chat template.
        source_text: privileged text for a turn, or None (blank text counts as None).
        max_tokens: budget of one teacher prompt.
        system: system message of the teacher prompt (use the one the student prompt was rendered with).
        enable_thinking: forwarded to the chat template when not None.

    Raises:
        ValueError: when a prompt with privileged text does not fit even without history.
    """
    out = TeacherPrompts([], [], [])
    for traj in trajectories:
        for turn in traj.turns:
            text = source_text(traj, turn)
            if text is None or not text.strip():
                out.prompts.append(tuple(turn.prompt_ids))
                out.has_context.append(False)
                out.history_dropped.append(False)
                continue
            ids, rendered = fit_prompt(
                tokenizer,
                turn.context,
                privileged=text,
                max_tokens=max_tokens,
                system=system,
                enable_thinking=enable_thinking,
                template=prompt_template(turn.context.env_name, turn.context.style),
            )
            out.prompts.append(tuple(ids))
            out.has_context.append(True)
            out.history_dropped.append(len(rendered.history) < len(turn.context.history))
    return out


def teacher_prompts(
    trajectories: Sequence[Trajectory],
    tokenizer: Any,
    *,
    source_text: SourceText,
    max_tokens: int,
    system: str | None = None,
    enable_thinking: bool | None = None,
) -> tuple[list[tuple[int, ...]], list[bool]]:
    """``(prompts, has_context)`` of ``build_teacher_prompts`` (same arguments)."""
    rows = build_teacher_prompts(trajectories, tokenizer, source_text=source_text, max_tokens=max_tokens,
                                 system=system, enable_thinking=enable_thinking)
    return rows.prompts, rows.has_context


class TemplateNotPrefixStableError(ValueError):
    """The chat template re-renders earlier turns differently once a message is appended."""


def _render_text(tokenizer: Any, messages: Sequence[Message], enable_thinking: bool | None) -> str:
    kwargs: dict[str, Any] = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False,
        add_generation_prompt=True,
        **kwargs,
    )


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _user_message(turn: Turn, system: str | None) -> list[Message]:
    """The turn's observation block without history (the conversation itself holds the history)."""
    ctx = turn.context
    return render_messages(dataclasses.replace(ctx, history=()), system=system,
                           template=prompt_template(ctx.env_name, ctx.style))


def conversation_rows(
    trajectories: Sequence[Trajectory],
    tokenizer: Any,
    *,
    advantages_per_episode: Sequence[float] | None = None,
    system: str | None = None,
    enable_thinking: bool | None = None,
) -> TokenBatch:
    """The whole-conversation view: one row per episode with at least one turn.

    Row = prompt ``[system?, user: first observation]`` + response ``sampled_0, user block_1, sampled_1, ...``.
    The sampled ids are copied verbatim; each user block is the text that a full re-render of the conversation
    (with the new user message and a generation prompt) adds after the held prefix
    ``render(conversation so far, generation prompt) + decode(sampled ids)``, and only that text is tokenized.
    ``loss_mask`` is True exactly on the sampled ids.

    ``old_logprobs`` are the generator's log-probs, which were sampled under the per-turn prompts, not under this
    conversation: the learner must recompute old log-probs for this view before using them as a ratio baseline.

    Args:
        trajectories: episodes.
        tokenizer: a tokenizer with a chat template.
        advantages_per_episode: one scalar per trajectory (including empty ones), put on the sampled tokens.
        system: system message at the start of the conversation.
        enable_thinking: forwarded to the chat template when not None.

    Raises:
        TemplateNotPrefixStableError: the chat template changes earlier text when a message is appended (for
            example a template that strips reasoning from past assistant turns); such templates cannot be used.
    """
    if advantages_per_episode is None:
        advantages_per_episode = [0.0] * len(trajectories)
    if len(advantages_per_episode) != len(trajectories):
        raise ValueError(f"{len(advantages_per_episode)} advantages given for {len(trajectories)} episodes")
    special = set(tokenizer.all_special_ids)
    rows: dict[str, list[Any]] = {k: [] for k in ("p", "r", "m", "lp", "adv", "g", "e")}
    for traj, adv in zip(trajectories, advantages_per_episode):
        if not traj.turns:
            continue
        messages = _user_message(traj.turns[0], system)
        rendered = _render_text(tokenizer, messages, enable_thinking)
        prompt = encode_prompt(tokenizer, messages, enable_thinking=enable_thinking)
        response: list[int] = []
        mask: list[bool] = []
        logprobs: list[float] = []
        for k, turn in enumerate(traj.turns):
            _check_turn(traj, turn)
            if k > 0:
                prev = traj.turns[k - 1]
                # the next user block: the part of the full re-render after what is already held
                content_ids = list(prev.response_ids)
                if content_ids and content_ids[-1] in special:  # the end-of-turn token is the template's to write
                    content_ids = content_ids[:-1]
                messages = [
                    *messages,
                    Message("assistant", tokenizer.decode(content_ids, skip_special_tokens=False)),
                    *_user_message(turn, None),
                ]
                held = rendered + tokenizer.decode(list(prev.response_ids), skip_special_tokens=False)
                rendered = _render_text(tokenizer, messages, enable_thinking)
                if not rendered.startswith(held):
                    raise TemplateNotPrefixStableError(
                        f"episode {traj.episode_id} turn {k}: re-rendering the conversation does not start with the "
                        f"text held so far (held text ends {held[-60:]!r}, re-render continues "
                        f"{rendered[len(held) - 60 : len(held) + 20]!r}); the conversation view needs a chat template "
                        "that leaves earlier turns unchanged, use the per-turn view instead"
                    )
                block = _encode_text(tokenizer, rendered[len(held) :])
                response += block
                mask += [False] * len(block)
                logprobs += [0.0] * len(block)
            response += list(turn.response_ids)
            mask += [True] * len(turn.response_ids)
            logprobs += list(turn.response_logprobs)
        for key, value in zip(
            rows, (prompt, response, mask, logprobs, adv, traj.group_id, traj.episode_id), strict=True
        ):
            rows[key].append(value)
    return _batch(
        prompts=rows["p"],
        responses=rows["r"],
        masks=rows["m"],
        logprobs=rows["lp"],
        advantages=rows["adv"],
        group_ids=rows["g"],
        episode_ids=rows["e"],
        turn_ids=[0] * len(rows["p"]),
    )
