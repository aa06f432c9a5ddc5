"""Model FLOPs of a decoder-only transformer's forward, shared by the bench scripts (bench/ is not a package: a script
run as ``python bench/X.py`` has bench/ on its path and imports this as ``flops``)."""

from __future__ import annotations

from typing import Any


def forward_flops(cfg: Any, row_lengths: list[int], head_positions: int) -> float:
    """Model FLOPs of one forward over rows of these lengths: the decoder's matmuls (2 per weight per token), causal
    attention (QK^T and AV over the lower triangle) and the LM head on ``head_positions`` positions."""
    h, inter, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = h * cfg.num_key_value_heads // cfg.num_attention_heads
    per_token = 2 * layers * (2 * h * h + 2 * h * kv + 3 * h * inter)  # q, o; k, v; gate, up, down
    attention = sum(2 * layers * h * n * (n + 1) for n in row_lengths)  # 2 matmuls x 2 FLOPs x n(n+1)/2 cells x h
    return per_token * sum(row_lengths) + attention + 2 * h * vocab * head_positions
