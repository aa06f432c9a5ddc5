"""The testbed policy: a few-million-parameter causal LM built from scratch for the built-in household game.

SmolLM2-135M takes minutes per RL step on two CPU cores and does not read a plan it is given, so it cannot show
the two properties SDAR relies on: a policy that improves under the episode reward, and a teacher (the same weights
with privileged context) that knows more than the student. The testbed model is small enough for hundreds of RL
steps on a laptop, and ``sdar sft`` with ``privileged_fraction > 0`` teaches the same weights to act on the expert
plan when one is in the prompt.

``prepare_testbed(folder)`` writes an ordinary transformers folder (``load_model`` / ``load_tokenizer`` read it):

* a byte-level BPE tokenizer trained on the game's own text (prompts with and without the plan, answers), with
  ``<think>``, ``</think>``, ``<action>``, ``</action>`` as whole tokens and a ChatML chat template; any text still
  encodes (byte fallback) and ``decode(encode(text)) == text``;
* a randomly initialised Qwen2-style decoder (``TestbedSpec``; about 0.6M parameters by default).

The model alias ``toy-lm`` (``sdar model prepare toy-lm``, or any run that names it) builds it once into the cache.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

__all__ = ["TESTBED_ALIAS", "TestbedSpec", "build_tokenizer", "game_corpus", "init_model", "prepare_testbed"]

TESTBED_ALIAS = "toy-lm"
"""Model alias of the default testbed policy (built on first use into ``<cache>/toy-lm``)."""
SPECIALS = ("<|pad|>", "<|im_start|>", "<|im_end|>")
TAGS = ("<think>", "</think>", "<action>", "</action>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TestbedSpec:
    """Shape of the testbed model and tokenizer."""

    vocab_size: int = 1024
    """BPE vocabulary size (the game needs a few hundred words; the rest are sub-words and bytes)."""
    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 2048
    corpus_tasks: int = 120
    """Expert episodes (train split) whose prompts and answers train the tokenizer."""
    seed: int = 0
    """Initialisation seed of the weights."""


def game_corpus(num_tasks: int, *, seed: int = 0) -> Iterator[str]:
    """Text of the household game as the model will see it: user messages (full and compact style) of expert
    episodes with and without the expert plan, and answers ``<think></think><action>…</action>``, for every task
    type (train split only)."""
    from sdar.envs.registry import make_env_factory
    from sdar.envs.toy import TASK_TYPES, ToyTaskSource
    from sdar.prompts.render import render_user_message
    from sdar.data.demos import expert_turns
    from sdar.envs.registry import expert_for

    make_env = make_env_factory("toy", max_turns=30)
    tasks = ToyTaskSource(seed=seed, num_train=num_tasks, task_types=TASK_TYPES).tasks("train")
    for kind, style in (("search", ""), ("plan", ""), ("search", "compact"), ("plan", "compact")):
        for turn in expert_turns(make_env, tasks, expert=expert_for("toy", kind), history_length=2, max_turns=30,
                                 seed=seed, keep_failed=True, style=style):
            yield render_user_message(turn.context)
            plan = turn.privileged.get("expert_plan")
            if plan:
                yield render_user_message(turn.context, privileged=plan)
            yield f"<think></think><action>{turn.action}</action>"
    yield "You are carrying nothing. The task is done. Nothing happens."


def build_tokenizer(texts: Iterator[str] | list[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` with ChatML specials and whole-token tags."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|im_end|>",
                                  bos_token="<|im_start|>")
    tok.add_special_tokens({"additional_special_tokens": list(SPECIALS[1:])})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def init_model(spec: TestbedSpec, vocab_size: int) -> Any:
    """A randomly initialised Qwen2-style causal LM of ``spec``'s shape (float32, tied embeddings)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                      num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                      num_key_value_heads=spec.num_heads, max_position_embeddings=spec.max_positions,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()


def prepare_testbed(folder: Path, spec: TestbedSpec = TestbedSpec()) -> Path:
    """Write the tokenizer and the freshly initialised model of ``spec`` into ``folder`` (which must not hold a
    model yet); returns ``folder``."""
    tokenizer = build_tokenizer(list(game_corpus(spec.corpus_tasks)), spec.vocab_size)
    model = init_model(spec, len(tokenizer))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    (folder / "testbed_spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")
    n = sum(p.numel() for p in model.parameters())
    logger.info("testbed model: %d parameters, vocabulary %d, written to %s", n, len(tokenizer), folder)
    return folder
