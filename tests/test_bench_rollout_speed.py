"""bench/rollout_speed.py runs its arms on the tiny testbed and counts the prompt tokens that sharing saves."""

from __future__ import annotations

import re
from pathlib import Path

from bench_module import load_bench

ROOT = Path(__file__).resolve().parents[1]


def test_rollout_speed_bench_runs_both_arms_on_the_same_episodes(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the preset names its warm start relative to the repository
    bench = load_bench("rollout_speed")
    assert bench.main(["--config", str(ROOT / "configs" / "testbed" / "rl.yaml"), "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    for rep in (0, 1):  # same seeds, same episodes: each arm reports the same training success
        successes = set(re.findall(rf"rep {rep} (?:plain|dedup|shared): [\d.]+ s, training success ([\d.]+)", out))
        assert len(successes) == 1, out
    assert re.search(r"shared: median [\d.]+ s .*ratio to plain", out)
    assert "shared+merged" not in out  # the testbed model has no adapters
    total, distinct, shared = map(int, re.search(r"prefilled, of (\d+) .*: dedup (\d+) .*shared (\d+)", out).groups())
    assert 0 < shared < distinct < total  # a group's first turns are identical, and all prompts share the preamble
    from sdar.rollout import hf
    assert hf.unique_prompts.__name__ == "unique_prompts" and hf.SHARED_PREFIX_MIN == 8  # restored after the bench
