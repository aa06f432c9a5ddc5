"""bench/gpu_throughput.py: its tiny CPU mode runs every measurement and prints them; its FLOP formula."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_throughput.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_every_measurement():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--repeats", "1", "--device", "cpu", "--no-vllm"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for name in ("sdar", "plain"):
        m = re.search(rf"^update {name}\s*:\s*([\d.]+) ms\s+\(\s*(\d+) tokens/s, MFU\s+([\d.]+)%", text, re.M)
        assert m is not None, text
        assert float(m.group(1)) > 0 and int(m.group(2)) > 0
    assert re.search(r"^update plain / sdar time: [\d.]+x", text, re.M), text
    assert re.search(r"^logprob pass:\s+[\d.]+ ms .*logprob pass / sdar update: [\d.]+$", text, re.M), text
    counts = {}
    for name in ("generate", "hf_generator"):
        m = re.search(rf"^rollout {name}\s*:\s*(\d+) tokens/s\s+\((\d+) tokens", text, re.M)
        assert m is not None, text
        counts[name] = int(m.group(2))
    assert counts["generate"] == 4 * 8  # tiny rollout: batch 4 x 8 new tokens, min_new_tokens forces all 8
    assert 4 <= counts["hf_generator"] <= 4 * 8  # every row samples at least one token; eos may end a row early
    assert re.search(r"^rollout hf_generator / generate tokens/s: [\d.]+x", text, re.M), text
    assert "rollout vllm        : skipped (--no-vllm)" in text
    assert "model: tiny-shaped Qwen2" in text


def test_model_flops_matches_hand_count():
    bench = _load_script()
    shape = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=16, vocab_size=10)
    model = bench.build_model(shape, dtype=torch.float32, device="cpu", attn="sdpa", seed=0)
    # Parameters (tied embeddings, so the 10 x 8 matrix appears once and stands for the LM head matmul):
    # embed 80; q 8*8 + 8 = 72; k 8*4 + 4 = 36 (1 KV head of dim 4); v 36; o 64; gate/up/down 3 * 128 = 384;
    # two layer norms 16; final norm 8 -> N = 696.
    # Rows of 3 and 3 tokens: 6 * N * T = 6 * 696 * 6 = 25056; attention 6 * L * D * sum(S^2) = 6 * 1 * 8 * 18 = 864.
    assert bench.model_flops(model, [3, 3]) == 25056 + 864


def test_gpu_check_cpu_mode_runs_every_check():
    import os

    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=420, env={**os.environ, "PY": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "fp32 masters move: yes" in out  # 10 AdamW steps at lr 1e-6 moved >= 99% of the weights
    assert re.search(r"\| fp32 \| \d+ \|", out) and re.search(r"\| mixed_bf16 \| \d+ \|", out)
    assert "update plain / sdar time" in out and "gpu_check: done" in out
