"""The CPU bf16 probe: its decision with injected timings, its per-machine cache file, and the autocast choice."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from sdar import hardware
from sdar.hardware import (
    Bf16Probe,
    bf16_is_worth_it,
    cache_path,
    cpu_bf16_probe,
    cpu_description,
    probe_key,
    resolve_autocast,
    run_probe,
    time_matmul,
)


class FakeTimer:
    """``time_fn(bf16)``: pops the next scripted seconds of that kind and counts the calls."""

    def __init__(self, fp32: list[float], bf16: list[float]) -> None:
        self.queues = {False: list(fp32), True: list(bf16)}
        self.calls: list[bool] = []

    def __call__(self, bf16: bool) -> float:
        self.calls.append(bf16)
        return self.queues[bf16].pop(0)


def never(bf16: bool) -> float:
    raise AssertionError("the probe ran although a cached result should have been used")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private sdar cache dir and an empty in-process memo."""
    monkeypatch.setenv("SDAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "_memo", {})
    return tmp_path / "cache"


# --------------------------------------------------------------------------------------------- the decision
def test_worth_it_needs_the_minimum_speedup() -> None:
    assert bf16_is_worth_it(12.0, 10.0)  # exactly 1.2x
    assert not bf16_is_worth_it(11.9, 10.0)
    assert not bf16_is_worth_it(11.9, 739.0)  # the AVX2-only EPYC: 60x slower
    assert bf16_is_worth_it(10.0, 5.0, min_speedup=2.0)
    assert not bf16_is_worth_it(10.0, 5.1, min_speedup=2.0)


def test_probe_discards_the_warm_up_and_keeps_the_fastest_run() -> None:
    # warm-up runs (first of each kind) are slow outliers; the timed runs are interleaved fp32, bf16, fp32, ...
    timer = FakeTimer(fp32=[9.0, 0.012, 0.010, 0.011], bf16=[9.0, 0.006, 0.008, 0.005])
    before = torch.get_num_threads()
    probe = run_probe(timer, repeats=3)
    assert timer.calls == [False, True] + [False, True] * 3
    assert probe.fp32_ms == pytest.approx(10.0) and probe.bf16_ms == pytest.approx(5.0)
    assert probe.speedup == pytest.approx(2.0) and probe.fast and not probe.cached
    assert torch.get_num_threads() == before  # the one-thread setting of the probe is undone


@pytest.mark.parametrize(("bf16_s", "fast"), [(0.0119 / 1.25, True), (0.0119 / 1.1, False), (0.739, False)])
def test_probe_decision_follows_the_ratio(bf16_s: float, fast: bool) -> None:
    probe = run_probe(FakeTimer([1.0, 0.0119], [1.0, bf16_s]), repeats=1)
    assert probe.fast is fast
    assert probe.speedup == pytest.approx(0.0119 / bf16_s)


def test_probe_rejects_no_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        run_probe(FakeTimer([], []), repeats=0)


def test_real_timing_function_returns_a_duration() -> None:
    assert time_matmul(False, shape=(8, 16, 8)) > 0
    assert time_matmul(True, shape=(8, 16, 8)) > 0


# ------------------------------------------------------------------------------------------------- the cache
def test_cache_round_trip_runs_the_probe_once_per_machine(cache, monkeypatch) -> None:
    timer = FakeTimer(fp32=[1.0, 0.012, 0.012, 0.012], bf16=[1.0, 0.7, 0.7, 0.7])
    first = cpu_bf16_probe(time_fn=timer)
    assert not first.fast and not first.cached and len(timer.calls) == 8
    assert cache_path() == cache / "hardware.json"
    stored = json.loads((cache / "hardware.json").read_text())
    entry = stored["entries"][probe_key()]
    assert entry["fp32_ms"] == pytest.approx(12.0) and entry["bf16_ms"] == pytest.approx(700.0)
    assert entry["fast"] is False and entry["speedup"] == pytest.approx(12.0 / 700.0)

    assert cpu_bf16_probe(time_fn=never) is first  # same process: memoised
    monkeypatch.setattr(hardware, "_memo", {})  # a new process reads the file instead of probing
    again = cpu_bf16_probe(time_fn=never)
    assert again.cached and (again.fp32_ms, again.bf16_ms, again.fast) == (first.fp32_ms, first.bf16_ms, False)
    assert not hardware.cpu_bf16_is_fast()

    # another machine (or torch version) sharing the cache dir gets its own entry, and the first one stays
    mine = probe_key()
    monkeypatch.setattr(hardware, "probe_key", lambda: "Other CPU | avx2 | torch 0.0")
    other = cpu_bf16_probe(time_fn=FakeTimer([1.0, 0.01, 0.01, 0.01], [1.0, 0.005, 0.005, 0.005]))
    assert other.fast and not other.cached
    entries = json.loads((cache / "hardware.json").read_text())["entries"]
    assert set(entries) == {mine, "Other CPU | avx2 | torch 0.0"}


def test_refresh_measures_again_and_overwrites(cache) -> None:
    cpu_bf16_probe(time_fn=FakeTimer([1.0, 0.01, 0.01, 0.01], [1.0, 0.02, 0.02, 0.02]))
    fresh = cpu_bf16_probe(time_fn=FakeTimer([1.0, 0.01, 0.01, 0.01], [1.0, 0.005, 0.005, 0.005]), refresh=True)
    assert fresh.fast and not fresh.cached
    assert json.loads((cache / "hardware.json").read_text())["entries"][probe_key()]["fast"] is True


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2]",
    '{"version": 99, "entries": {}}',
    '{"version": 1, "entries": "nope"}',
    "KEY_WITH_BAD_ENTRY",
])
def test_corrupt_cache_is_ignored_and_rewritten(cache, content: str, caplog) -> None:
    cache.mkdir(parents=True)
    if content == "KEY_WITH_BAD_ENTRY":
        content = json.dumps({"version": 1, "entries": {probe_key(): {"fp32_ms": "x"}, "kept": {"fp32_ms": 1}}})
    (cache / "hardware.json").write_text(content)
    timer = FakeTimer(fp32=[1.0, 0.01, 0.01, 0.01], bf16=[1.0, 0.004, 0.004, 0.004])
    with caplog.at_level(logging.WARNING, logger="sdar.hardware"):
        probe = cpu_bf16_probe(time_fn=timer)
    assert len(timer.calls) == 8 and probe.fast and not probe.cached  # measured, not read
    data = json.loads((cache / "hardware.json").read_text())  # valid again
    assert data["version"] == 1 and data["entries"][probe_key()]["fast"] is True
    if "kept" in content:
        assert "kept" in data["entries"]  # other machines' entries of a readable file survive
    else:
        assert "ignoring the" in caplog.text


def test_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SDAR_CACHE", str(blocker / "cache"))  # its parent is a file: mkdir fails
    monkeypatch.setattr(hardware, "_memo", {})
    with caplog.at_level(logging.WARNING, logger="sdar.hardware"):
        probe = cpu_bf16_probe(time_fn=FakeTimer([1.0, 0.01, 0.01, 0.01], [1.0, 0.1, 0.1, 0.1]))
    assert not probe.fast and "could not write the hardware cache" in caplog.text


# -------------------------------------------------------------------------------------------- the description
def test_cpu_description_names_the_model_and_bf16_flags(monkeypatch) -> None:
    fields = {"model name": "AMD EPYC 7B13 64-Core Processor", "flags": "fpu sse avx2 fma"}
    monkeypatch.setattr(hardware, "_cpuinfo_field", fields.get)
    assert cpu_description() == "AMD EPYC 7B13 64-Core Processor (avx512_bf16: no, amx_bf16: no)"
    assert probe_key() == f"AMD EPYC 7B13 64-Core Processor | avx2 | torch {torch.__version__}"
    fields.update({"model name": "Intel(R) Xeon(R) Platinum 8481C", "flags": "avx2 avx512f avx512_bf16 amx_bf16"})
    assert cpu_description() == "Intel(R) Xeon(R) Platinum 8481C (avx512_bf16: yes, amx_bf16: yes)"
    assert "avx512_bf16,amx_bf16" in probe_key()


def test_cpu_model_falls_back_to_platform(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "_cpuinfo_field", lambda name: None)
    monkeypatch.setattr(hardware.platform, "processor", lambda: "arm")
    assert cpu_description() == "arm (avx512_bf16: no, amx_bf16: no)"
    assert isinstance(hardware.cpu_description(), str) and "\n" not in hardware.cpu_description()


# ---------------------------------------------------------------------------------------------- the choice
def _fixed_probe(monkeypatch, fast: bool, fp32_ms: float = 11.9, bf16_ms: float = 739.0) -> None:
    monkeypatch.setattr(hardware, "cpu_bf16_probe", lambda: Bf16Probe(fp32_ms, bf16_ms, fast, cached=True))


def test_resolve_autocast_on_cpu_follows_the_probe(monkeypatch, caplog) -> None:
    _fixed_probe(monkeypatch, fast=False)
    assert resolve_autocast("none", "cpu") is None
    assert resolve_autocast("auto", "cpu") is None
    with caplog.at_level(logging.WARNING, logger="sdar.hardware"):
        assert resolve_autocast("bfloat16", torch.device("cpu")) is torch.bfloat16  # asked for: kept, with a warning
    assert "bfloat16 is slow on this CPU" in caplog.text and "0.02x" in caplog.text and "739.0 ms" in caplog.text
    _fixed_probe(monkeypatch, fast=True, fp32_ms=10.0, bf16_ms=4.0)
    caplog.clear()
    assert resolve_autocast("auto", "cpu") is torch.bfloat16
    assert resolve_autocast("bfloat16", "cpu") is torch.bfloat16 and not caplog.text


def test_resolve_autocast_on_cuda_needs_bf16_support(monkeypatch, caplog) -> None:
    monkeypatch.setattr(hardware, "cpu_bf16_probe", never)  # no CPU probe for a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_autocast("auto", "cuda") is torch.bfloat16
    assert resolve_autocast("none", "cuda:0") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_autocast("auto", "cuda") is None
    with caplog.at_level(logging.WARNING, logger="sdar.hardware"):
        assert resolve_autocast("bfloat16", "cuda") is None
    assert "does not support it" in caplog.text


def test_resolve_autocast_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="'auto', 'none' or 'bfloat16'"):
        resolve_autocast("float16", "cpu")
