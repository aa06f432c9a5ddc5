"""Tests for prompt rendering: template snapshots, history window, privileged placement, encoding and fitting."""

from __future__ import annotations

import dataclasses

import pytest

from sdar.prompts import (
    GENERIC_TEMPLATE,
    HOUSEHOLD_TEMPLATE,
    TEMPLATES,
    build_context,
    encode_prompt,
    fit_prompt,
    get_template,
    render_messages,
    render_user_message,
)
from sdar.envs.registry import prompt_template  # importing the registry gives sdar.prompts the envs' templates
from sdar.records import Message
from sdar.tiny import byte_tokenizer

GOAL = "put a mug on the desk."
OBS = "You arrive at desk 1. On the desk 1, you see nothing."
PAIRS = [("o1", "a1"), ("o2", "a2"), ("o3", "a3")]
INSTRUCTION = (
    "First think about the situation and what to do next, inside <think> </think> tags. Then write exactly one "
    "action from the list above inside <action> </action> tags. Reply in the form "
    "<think>...</think><action>...</action>"
)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_snapshot_with_history_and_privileged_block() -> None:
    ctx = build_context("toy", GOAL, 3, OBS, ["go to desk 1", "look"], PAIRS, 2)
    expected = "\n\n".join(
        [
            "You are an agent carrying out a household task in a text-only simulator, one command per step. "
            "Your goal: put a mug on the desk.",
            "[Task notes]\n1. go to desk 1\n[End of task notes]",
            "You have taken 3 step(s) so far. Your 2 most recent observation(s), each followed by the action you "
            "chose:\nStep 2 observation: o2\nStep 2 action: a2\nStep 3 observation: o3\nStep 3 action: a3",
            f"This is step 4. Current observation: {OBS}",
            "Actions you can take now: ['go to desk 1', 'look']",
            INSTRUCTION,
        ]
    )
    assert render_user_message(ctx, privileged="1. go to desk 1") == expected


def test_snapshot_first_turn_has_no_history_part() -> None:
    ctx = build_context("alfworld", GOAL, 0, "You are in the middle of a room.", ["look"], [], 2)
    assert render_user_message(ctx) == "\n\n".join(
        [
            "You are an agent carrying out a household task in a text-only simulator, one command per step. "
            "Your goal: put a mug on the desk.",
            "This is your first step. Current observation: You are in the middle of a room.",
            "Actions you can take now: ['look']",
            INSTRUCTION,
        ]
    )


def test_later_turn_with_zero_history_window_shows_only_the_step_count() -> None:
    text = render_user_message(build_context("toy", GOAL, 5, OBS, ["look"], PAIRS, 0))
    assert "You have taken 5 step(s) so far.\n\nThis is step 6." in text
    assert "observation: o" not in text


def test_privileged_text_sits_after_the_task_line_and_blank_means_none() -> None:
    ctx = build_context("toy", GOAL, 1, OBS, ["look"], PAIRS[:1], 2)
    text = render_user_message(ctx, privileged="SKILL: open before you put.")
    assert text.index("Your goal:") < text.index("[Task notes]\nSKILL: open before you put.") < text.index(
        "You have taken 1 step(s)"
    )
    plain = render_user_message(ctx)
    assert render_user_message(ctx, privileged="  \n") == plain
    assert "Task notes" not in plain


def test_build_context_cuts_history_to_the_window() -> None:
    ctx = build_context("toy", GOAL, 3, OBS, ("look",), PAIRS, 2)
    assert ctx.history == (("o2", "a2"), ("o3", "a3"))
    assert ctx.admissible_actions == ("look",) and ctx.step == 3
    assert build_context("toy", GOAL, 3, OBS, (), PAIRS, 5).history == tuple(PAIRS)
    assert build_context("toy", GOAL, 3, OBS, (), PAIRS, 0).history == ()
    with pytest.raises(ValueError, match="history pairs"):
        build_context("toy", GOAL, 2, OBS, (), PAIRS, 2)
    with pytest.raises(ValueError, match=">= 0"):
        build_context("toy", GOAL, 0, OBS, (), [], -1)


def test_free_text_environment_uses_generic_template_without_action_list() -> None:
    text = render_user_message(build_context("some_new_env", "answer the question", 0, "q?", [], [], 2))
    assert text.startswith(GENERIC_TEMPLATE.preamble)
    assert "Actions you can take now" not in text
    assert text.endswith(GENERIC_TEMPLATE.instruction_free)


def test_registry_defaults_and_adding_an_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert prompt_template("toy") is HOUSEHOLD_TEMPLATE and prompt_template("alfworld") is HOUSEHOLD_TEMPLATE
    assert get_template("toy") is HOUSEHOLD_TEMPLATE and get_template("alfworld") is HOUSEHOLD_TEMPLATE
    assert get_template("unknown") is GENERIC_TEMPLATE
    shop = dataclasses.replace(GENERIC_TEMPLATE, preamble="You are shopping online.", task="Buy: {goal}")
    monkeypatch.setitem(TEMPLATES, "shop", shop)
    text = render_user_message(build_context("shop", "red shoes", 0, "home page", ["search[red shoes]"], [], 2))
    assert text.startswith("You are shopping online. Buy: red shoes")


def test_render_messages_roles() -> None:
    ctx = build_context("toy", GOAL, 0, OBS, ["look"], [], 2)
    assert render_messages(ctx) == [Message("user", render_user_message(ctx))]
    msgs = render_messages(ctx, privileged="notes", system="Be brief.")
    assert [m.role for m in msgs] == ["system", "user"]
    assert msgs[0].content == "Be brief." and "[Task notes]\nnotes" in msgs[1].content


def test_encode_prompt_matches_the_chat_template(tok) -> None:
    msgs = [Message("system", "S"), Message("user", "hi")]
    ids = encode_prompt(tok, msgs)
    text = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ids) == text
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert ids == tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in msgs], add_generation_prompt=True, return_dict=False
    )


class RecordingTokenizer:
    """Records the keyword arguments given to apply_chat_template; one id per character."""

    def __init__(self) -> None:
        self.kwargs: list[dict] = []

    def apply_chat_template(self, messages, **kwargs):
        self.kwargs.append(kwargs)
        return "|".join(m["content"] for m in messages)

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [ord(c) for c in text]}


def test_enable_thinking_is_forwarded_only_when_set() -> None:
    tok = RecordingTokenizer()
    encode_prompt(tok, [Message("user", "x")])
    encode_prompt(tok, [Message("user", "x")], enable_thinking=False)
    assert "enable_thinking" not in tok.kwargs[0]
    assert tok.kwargs[1]["enable_thinking"] is False
    assert all(k["add_generation_prompt"] is True and k["tokenize"] is False for k in tok.kwargs)


def test_fit_prompt_keeps_everything_when_it_fits(tok) -> None:
    ctx = build_context("toy", GOAL, 3, OBS, ["look"], PAIRS, 3)
    ids, used = fit_prompt(tok, ctx, privileged="notes", max_tokens=10_000)
    assert used == ctx
    assert ids == encode_prompt(tok, render_messages(ctx, privileged="notes"))


def test_fit_prompt_drops_oldest_history_first_and_never_cuts_privileged(tok) -> None:
    pairs = [(f"observation number {i} " * 5, f"action {i}") for i in range(1, 5)]
    ctx = build_context("toy", GOAL, 4, OBS, ["look"], pairs, 4)
    privileged = "PRIVILEGED " * 30
    full = len(encode_prompt(tok, render_messages(ctx, privileged=privileged)))
    # byte tokenizer: one history item is > 100 tokens, so a budget 20 below full forces exactly one drop
    ids, used = fit_prompt(tok, ctx, privileged=privileged, max_tokens=full - 20)
    assert used.history == ctx.history[1:]
    assert len(ids) <= full - 20
    text = tok.decode(ids)
    assert privileged.strip() in text and OBS in text and "action 1" not in text and "action 4" in text
    assert "Step 2 observation" in text  # numbering stays tied to the real step index


def test_fit_prompt_raises_when_even_no_history_is_too_long(tok) -> None:
    ctx = build_context("toy", GOAL, 2, OBS, ["look"], PAIRS[:2], 2)
    bare = len(encode_prompt(tok, render_messages(dataclasses.replace(ctx, history=()), privileged="P" * 50)))
    with pytest.raises(ValueError, match=rf"needs {bare} tokens.*max_tokens is {bare - 1}"):
        fit_prompt(tok, ctx, privileged="P" * 50, max_tokens=bare - 1)
    ids, used = fit_prompt(tok, ctx, privileged="P" * 50, max_tokens=bare)
    assert len(ids) == bare and used.history == ()
