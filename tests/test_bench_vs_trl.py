"""bench/vs_trl_sdpo.py: the FLOP count it divides by, checked by hand (the bench itself needs trl)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench_module import load_bench

@pytest.fixture(scope="module")
def bench():
    return load_bench("vs_trl_sdpo")


def test_forward_flops_by_hand(bench):
    # h 4, 2 heads of 2 with 1 kv head (kv width 2), inter 8, 3 layers, vocab 10
    cfg = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=3, vocab_size=10,
                          num_attention_heads=2, num_key_value_heads=1)
    # per token: 2 FLOPs x 3 layers x (q 16 + o 16 + k 8 + v 8 + gate/up/down 96) = 6 x 144 = 864
    # attention, rows of 2 and 3 tokens: 2 x 3 x 4 x (2*3 + 3*4) = 24 x 18 = 432; LM head: 2 x 4 x 10 x 4 = 320
    assert bench.forward_flops(cfg, [2, 3], 4) == 864 * 5 + 432 + 320
    assert bench.forward_flops(cfg, [], 0) == 0


def test_matmul_rate_is_a_positive_rate(bench):
    rate = bench.matmul_rate(8, 16, seconds=0.01)
    assert 1e3 < rate < 1e16
