"""Tests of the trajectory -> TokenBatch builders: per-turn rows, teacher prompts and the conversation view."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sdar.data.tokenize import (TemplateNotPrefixStableError, build_teacher_prompts, conversation_rows, teacher_prompts,
                                turn_rows)
from sdar.prompts.render import build_context, encode_prompt, render_messages
from sdar.records import Trajectory, Turn
from sdar.tiny import byte_tokenizer

SYSTEM = "You act in a text world."


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def make_traj(
    tok,
    responses: list[list[int]],
    *,
    episode_id: int = 0,
    group_id: int = 0,
    history_length: int = 2,
    observation_len: int = 1,
    system: str | None = SYSTEM,
) -> Trajectory:
    """An episode whose turn k saw observation ``obs k`` and sampled ``responses[k]`` (log-probs -0.01 * position)."""
    turns = []
    pairs: list[tuple[str, str]] = []
    for k, response in enumerate(responses):
        obs = f"obs {k}: you see a table {k}." * observation_len
        admissible = ("look", f"go to table {k}")
        ctx = build_context("toy", "put the mug on the table", k, obs, admissible, pairs, history_length)
        prompt = encode_prompt(tok, render_messages(ctx, system=system))
        logprobs = tuple(-0.01 * (j + 1) - episode_id for j in range(len(response)))
        action = f"go to table {k}"
        turns.append(
            Turn(
                index=k,
                context=ctx,
                prompt_ids=tuple(prompt),
                response_ids=tuple(response),
                response_logprobs=logprobs,
                response_text=tok.decode(response, skip_special_tokens=True),
                action=action,
                valid=True,
                finish_reason="stop",
                reward=float(k == len(responses) - 1),
                observation=f"obs {k + 1}",
                done=k == len(responses) - 1,
            )
        )
        pairs.append((obs, action))
    return Trajectory(
        task_id="t0", task_type="pick", group_id=group_id, episode_id=episode_id, seed=0, turns=tuple(turns), won=True
    )


def action(tok, k: int) -> list[int]:
    return ids(tok, f"<think>go</think><action>go to table {k}</action>") + [tok.eos_token_id]


def odd_response(tok) -> list[int]:
    """Ids whose decode -> encode round trip differs.

    They hold the bytes of '<|im_end|>' one by one and a lone UTF-8 lead byte.
    """
    spelled = ids(tok, "<|im_") + ids(tok, "end|>")  # decodes to '<|im_end|>', which encodes to ONE special id
    lone = ids(tok, "é")[:1]  # 0xC3 alone decodes to U+FFFD, which encodes to three other bytes
    return ids(tok, "a") + spelled + lone + ids(tok, "b") + [tok.eos_token_id]


def test_turn_rows_one_row_per_turn(tok):
    t0 = make_traj(tok, [action(tok, 0), action(tok, 1)[:5]], episode_id=3, group_id=1)
    t1 = make_traj(tok, [action(tok, 2)], episode_id=4, group_id=2)
    batch = turn_rows([t0, t1], advantages_per_turn=[0.5, -1.0, 2.0])
    assert batch.size == 3
    assert batch.prompts == (t0.turns[0].prompt_ids, t0.turns[1].prompt_ids, t1.turns[0].prompt_ids)
    assert batch.responses == (t0.turns[0].response_ids, t0.turns[1].response_ids, t1.turns[0].response_ids)
    lengths = [len(r) for r in batch.responses]
    assert batch.loss_mask.sum(1).tolist() == lengths and batch.response_len == max(lengths)
    assert batch.old_logprobs[1, :5].tolist() == pytest.approx([-3.01, -3.02, -3.03, -3.04, -3.05])
    assert batch.old_logprobs[1, 5:].abs().sum() == 0  # padding
    # the advantage sits on every response token of its row and nowhere else
    assert batch.advantages[0, : lengths[0]].unique().tolist() == [0.5]
    assert batch.advantages[1].tolist() == [-1.0] * 5 + [0.0] * (batch.response_len - 5)
    assert batch.group_ids.tolist() == [1, 1, 2]
    assert batch.episode_ids.tolist() == [3, 3, 4]
    assert batch.turn_ids.tolist() == [0, 1, 0]
    assert turn_rows([t0]).advantages.abs().sum() == 0
    with pytest.raises(ValueError, match="2 advantages given for 3 turns"):
        turn_rows([t0, t1], advantages_per_turn=[1.0, 2.0])


def test_incremental_render_equals_full_render(tok):
    traj = make_traj(tok, [action(tok, k) for k in range(3)])
    row = conversation_rows([traj], tok, system=SYSTEM)
    text = tok.decode(list(row.prompts[0]) + list(row.responses[0]), skip_special_tokens=False)
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in traj.turns:
        user = render_messages(dataclasses.replace(turn.context, history=()))[-1]
        messages += [{"role": "user", "content": user.content}, {"role": "assistant", "content": turn.response_text}]
    full = tok.apply_chat_template(messages, tokenize=False)
    # the row stops right after the last sampled id (its eos); the template would only add the newline after it
    assert text + "\n" == full
    # the user blocks hold the next observations, not the history
    assert text.count("obs 1: you see a table 1.") == 1 and "Step 1 observation" not in text


def test_conversation_and_per_turn_views_train_on_the_same_action_tokens(tok):
    trajs = [
        make_traj(tok, [action(tok, 0), odd_response(tok), action(tok, 2)[:-1]], episode_id=0, group_id=5),
        make_traj(tok, [odd_response(tok)], episode_id=1, group_id=6),
        make_traj(tok, [], episode_id=2, group_id=7),  # no turns: no conversation row
    ]
    per_turn = turn_rows(trajs)
    conv = conversation_rows(trajs, tok, advantages_per_episode=[1.5, -0.5, 9.0], system=SYSTEM)
    assert conv.size == 2 and conv.episode_ids.tolist() == [0, 1] and conv.group_ids.tolist() == [5, 6]
    assert conv.turn_ids.tolist() == [0, 0]
    for row, traj in enumerate(trajs[:2]):
        response = torch.tensor(list(conv.responses[row]) + [-1] * (conv.response_len - len(conv.responses[row])))
        trained = response[conv.loss_mask[row]].tolist()
        sel = [i for i, e in enumerate(per_turn.episode_ids.tolist()) if e == traj.episode_id]
        per_turn_trained = [t for i in sel for t in per_turn.responses[i]]
        assert trained == per_turn_trained == [t for turn in traj.turns for t in turn.response_ids]
        expected_lp = [lp for turn in traj.turns for lp in turn.response_logprobs]
        assert conv.old_logprobs[row][conv.loss_mask[row]].tolist() == pytest.approx(expected_lp)
        assert conv.old_logprobs[row][~conv.loss_mask[row]].abs().sum() == 0  # template / observation tokens
        assert conv.advantages[row][conv.loss_mask[row]].unique().tolist() == [[1.5, -0.5][row]]
        assert conv.advantages[row][~conv.loss_mask[row]].abs().sum() == 0
    # the first episode's conversation has observation tokens between its actions
    assert (~conv.loss_mask[0][: len(conv.responses[0])]).sum() > 0
    with pytest.raises(ValueError, match="2 advantages given for 3 episodes"):
        conversation_rows(trajs, tok, advantages_per_episode=[1.0, 2.0])


def test_sampled_ids_are_never_retokenized(tok):
    odd = odd_response(tok)
    assert ids(tok, tok.decode(odd, skip_special_tokens=False)) != odd  # the round trip really differs
    traj = make_traj(tok, [odd, odd])
    conv = conversation_rows([traj], tok, system=SYSTEM)
    response = list(conv.responses[0])
    first, second = response[: len(odd)], response[-len(odd) :]
    assert first == odd and second == odd
    assert conv.loss_mask[0, : len(odd)].all() and conv.loss_mask[0, len(response) - len(odd) :].all()
    assert conv.loss_mask[0].sum() == 2 * len(odd)
    assert turn_rows([traj]).responses == (tuple(odd), tuple(odd))


def test_prefix_unstable_template_is_rejected():
    tok = byte_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}[earlier reply]{% else %}{{ m['content'] }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    traj = make_traj(tok, [action(tok, 0), action(tok, 1)])
    with pytest.raises(TemplateNotPrefixStableError, match="leaves earlier turns unchanged"):
        conversation_rows([traj], tok)
    conversation_rows([make_traj(tok, [action(tok, 0)])], tok)  # one turn: nothing is re-rendered


def test_teacher_prompts_hold_privileged_text_and_share_responses(tok):
    trajs = [
        make_traj(tok, [action(tok, 0), action(tok, 1)], episode_id=0),
        make_traj(tok, [action(tok, 2)], episode_id=1),
    ]
    hint = "SKILL: open the fridge before taking things out of it."

    def source(traj: Trajectory, turn: Turn) -> str | None:
        return None if traj.episode_id == 1 else hint

    student = turn_rows(trajs, advantages_per_turn=[1.0, 2.0, 3.0])
    prompts, has_context = teacher_prompts(trajs, tok, source_text=source, max_tokens=4096, system=SYSTEM)
    assert has_context == [True, True, False]
    teacher = student.with_prompts(prompts)
    for i in range(2):
        assert hint in tok.decode(teacher.prompts[i]) and hint not in tok.decode(student.prompts[i])
        # same turn, same observation: the teacher prompt is the student one plus the privileged block
        assert tok.decode(student.prompts[i]).split("Current observation")[1] in tok.decode(teacher.prompts[i])
    assert teacher.prompts[2] == student.prompts[2]  # no context: the student prompt unchanged
    assert teacher.responses == student.responses
    for name in ("loss_mask", "old_logprobs", "advantages", "group_ids", "episode_ids", "turn_ids"):
        assert torch.equal(getattr(teacher, name), getattr(student, name)), name
    blank, _ = teacher_prompts(trajs, tok, source_text=lambda tr, tu: "  ", max_tokens=4096, system=SYSTEM)
    assert blank == list(student.prompts)


def test_teacher_prompt_drops_history_never_privileged_text(tok):
    traj = make_traj(tok, [action(tok, k) for k in range(4)], history_length=3, observation_len=6)
    hint = "PRIVILEGED " + "x" * 600 + " END"
    last = traj.turns[-1]
    assert len(last.context.history) == 3

    def source(traj: Trajectory, turn: Turn) -> str | None:
        return hint if turn.index == 3 else None

    full, _ = teacher_prompts([traj], tok, source_text=source, max_tokens=100_000)
    no_history = encode_prompt(
        tok, render_messages(dataclasses.replace(last.context, history=()), privileged=hint)
    )
    budget = len(no_history) + 60  # room for the privileged text but not for all three history pairs
    assert len(full[3]) > budget
    prompts, has_context = teacher_prompts([traj], tok, source_text=source, max_tokens=budget)
    text = tok.decode(prompts[3])
    assert len(prompts[3]) <= budget and has_context[3]
    assert hint in text  # intact
    assert "Step 1 observation" not in text  # the oldest history pair went first
    assert prompts[:3] == [t.prompt_ids for t in traj.turns[:3]]
    with pytest.raises(ValueError, match="even with no history"):
        teacher_prompts([traj], tok, source_text=source, max_tokens=len(no_history) - 1)
    # the rows whose teacher saw fewer history pairs than the student did
    rows = build_teacher_prompts([traj], tok, source_text=source, max_tokens=budget)
    assert rows.prompts == prompts and rows.has_context == has_context
    assert rows.history_dropped == [False, False, False, True] and rows.history_dropped_share == 0.25
    assert build_teacher_prompts([traj], tok, source_text=source, max_tokens=100_000).history_dropped_share == 0.0
