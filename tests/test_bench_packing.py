"""bench/packing.py's model-work count, by hand."""

from types import SimpleNamespace

from bench_module import load_bench

packing = load_bench("packing")


def test_model_flops_by_hand():
    # h 4, inter 6, 1 layer, vocab 10, 2 heads with 1 kv head (kv width 2)
    cfg = SimpleNamespace(hidden_size=4, intermediate_size=6, num_hidden_layers=1, vocab_size=10,
                          num_attention_heads=2, num_key_value_heads=1)
    per_slot = 2 * (2 * 16 + 2 * 4 * 2 + 3 * 4 * 6)  # q+o 32, k+v 16, mlp 72 weights -> 240 FLOPs a slot
    assert per_slot == 240
    # one micro-batch of 2 rows padded to width 3: 6 slots; causal cells 3 * 4 / 2 = 6 a row, 2 * 2 * 4 FLOPs each
    attention = 2 * (2 * 1 * 4 * 3 * 4)  # 2 rows x (2 * layers * h * w * (w + 1)) = 2 x 96
    head = 2 * 4 * 10 * 5  # 5 scored positions
    assert packing.model_flops(cfg, [(2, 3)], 5) == 6 * 240 + attention + head
    # padding costs work: the same two rows unpadded (lengths 3 and 2) cost less
    free = packing.model_flops(cfg, [(1, 3), (1, 2)], 5)
    assert free == 5 * 240 + 2 * 4 * (3 * 4 + 2 * 3) + head
    assert packing.model_flops(cfg, [(2, 3)], 5) > free
