"""The testbed policy (tokenizer trained on the game's text, model from scratch), compact prompts, privileged SFT."""

from __future__ import annotations

import pytest

from sdar.envs.registry import make_env_factory, make_task_source
from sdar.prompts.render import build_context, render_user_message
from sdar.commands.sft import encode_examples, expert_for, expert_turns, privileged_example_turns
from sdar.testbed import TAGS, build_tokenizer, game_corpus, init_model
from sdar.testbed import TestbedSpec as Spec


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(list(game_corpus(8)), 512)


def test_tokenizer_round_trips_game_text_and_keeps_tags_whole(tokenizer) -> None:
    for text in ("<think></think><action>put apple 1 in/on fridge 1</action>",
                 "Household game. Goal: put a mug in the desk.\n\nActions: ['go to desk 1', 'look']",
                 "unseen words still encode: zebra Ω 42"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    for tag in TAGS:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode([tokenizer.eos_token_id]) == "<|im_end|>"


def test_model_shape_follows_the_spec(tokenizer) -> None:
    spec = Spec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = init_model(spec, len(tokenizer))
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)
    again = init_model(spec, len(tokenizer))
    assert all((a == b).all() for a, b in zip(model.parameters(), again.parameters()))  # seeded


def test_compact_prompt_is_shorter_and_holds_the_same_parts(tokenizer) -> None:
    ctx = build_context("toy", "put a mug in the desk.", 1, "You arrive at desk 1.", ("look", "go to bed 1"),
                        [("start", "go to desk 1")], 2)
    compact = build_context("toy", "put a mug in the desk.", 1, "You arrive at desk 1.", ("look", "go to bed 1"),
                            [("start", "go to desk 1")], 2, "compact")
    full_text, short_text = render_user_message(ctx, privileged="1. look"), render_user_message(compact,
                                                                                               privileged="1. look")
    for part in ("put a mug in the desk.", "1. look", "You arrive at desk 1.", "'go to bed 1'", "start -> go to desk 1",
                 "<action>"):
        assert part in short_text
    assert len(tokenizer(short_text)["input_ids"]) < 0.6 * len(tokenizer(full_text)["input_ids"])
    with pytest.raises(ValueError, match="compact"):
        render_user_message(build_context("search", "q", 0, "o", (), [], 2, "compact"))


def test_privileged_examples_answer_with_the_plans_next_step(tokenizer) -> None:
    tasks = make_task_source("toy", task_types=("pick_and_place",)).tasks("train")[:6]
    turns = expert_turns(make_env_factory("toy", max_turns=12), tasks, expert=expert_for("toy", "search"),
                         history_length=2, max_turns=12, seed=0, style="compact")
    chosen = privileged_example_turns(turns, 0.5, source="expert_plan", seed=0)
    assert 0.25 * len(turns) < len(chosen) < 0.75 * len(turns)
    assert privileged_example_turns(turns, 1.0, source="expert_plan", seed=0) == privileged_example_turns(
        turns, 1.0, source="expert_plan", seed=0)
    examples = encode_examples(tokenizer, turns, seed=0, max_prompt_tokens=1024, reasoning=False, privileged=chosen)
    assert len(examples) == len(turns) + len(chosen)
    # the search expert and the plan differ somewhere (the plan walks straight to the object)
    assert any(t.action != action for t, _, action in chosen)
    for example, (turn, plan, action) in zip(examples[len(turns):], chosen):
        assert example.text == f"<think></think><action>{action}</action>"
        assert plan.splitlines()[0].endswith(action)
        assert "Plan:" in tokenizer.decode(list(example.prompt_ids))
    assert all("Plan:" not in tokenizer.decode(list(e.prompt_ids)) for e in examples[:len(turns)])


def test_task_types_filter_other_environments(tmp_path) -> None:
    from sdar.envs.base import EnvUnavailable, TaskSpec
    from sdar.envs.registry import _OnlyTypes

    class Source:
        def tasks(self, split):
            return [TaskSpec("a1", "a"), TaskSpec("b1", "b"), TaskSpec("a2", "a")]

    assert [t.task_id for t in _OnlyTypes(Source(), ("a",)).tasks("train")] == ["a1", "a2"]
    with pytest.raises(EnvUnavailable, match="task_types"):
        _OnlyTypes(Source(), ("z",)).tasks("train")
