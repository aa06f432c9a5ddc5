"""What the machine is good at: a one-time probe of CPU bfloat16 speed and the choice of the autocast dtype.

Whether bfloat16 autocast helps on a CPU depends on the chip. Intel Xeons with ``avx512_bf16`` or AMX run bf16
matrix products natively and gain from it; CPUs with AVX2 only (many AMD EPYC parts) emulate it, and a bf16
autocast matmul there can be tens of times slower than float32. Flags alone do not settle it (kernels differ by
torch version), so ``cpu_bf16_probe`` times a representative matmul both ways, once per machine, and caches the
verdict in ``<sdar cache>/hardware.json`` (``$SDAR_CACHE`` or ``~/.cache/sdar``), keyed by CPU model, the relevant
CPU flags and the torch version. ``resolve_autocast`` turns a config setting (``"auto"``, ``"none"``,
``"bfloat16"``) into the dtype to run forward passes in.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

__all__ = [
    "BF16_FLAGS",
    "MIN_SPEEDUP",
    "AutocastSetting",
    "Bf16Probe",
    "bf16_is_worth_it",
    "cache_path",
    "cpu_bf16_is_fast",
    "cpu_bf16_probe",
    "cpu_description",
    "cpu_flags",
    "cpu_model_name",
    "probe_key",
    "resolve_autocast",
    "run_probe",
    "time_matmul",
]

logger = logging.getLogger(__name__)

AutocastSetting = Literal["auto", "none", "bfloat16"]

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (as /proc/cpuinfo spells them) that mean native bfloat16 arithmetic."""
_KEY_FLAGS = ("avx2", "avx512f", *BF16_FLAGS)
"""Flags in the cache key: besides native bf16, the vector width that bf16 emulation runs on (virtual machines
often report a generic model name, so the name alone may not tell two CPUs apart)."""
MIN_SPEEDUP = 1.2
"""bf16 autocast is chosen on a CPU only when it runs the probe matmul at least this many times faster than fp32."""
PROBE_SHAPE = (512, 576, 1536)
"""``(m, k, n)`` of the probe's ``[m, k] @ [k, n]``: a packed batch of a small model's hidden states times an MLP
up-projection (SmolLM2-135M: hidden 576, intermediate 1536)."""
_CACHE_FILE = "hardware.json"
_CACHE_VERSION = 1

TimeFn = Callable[[bool], float]
"""``time_fn(bf16) -> seconds`` of one probe matmul, under bf16 autocast when ``bf16`` is true."""


@dataclass(frozen=True)
class Bf16Probe:
    """The outcome of timing the probe matmul in float32 and under bfloat16 autocast on this CPU."""

    fp32_ms: float
    """Fastest float32 run, in milliseconds."""
    bf16_ms: float
    """Fastest bf16-autocast run, in milliseconds."""
    fast: bool
    """bf16 autocast is worth using (``speedup >= MIN_SPEEDUP``)."""
    cached: bool = False
    """Read from the cache file rather than measured by this process."""

    @property
    def speedup(self) -> float:
        """fp32 time / bf16 time: above 1 bf16 is faster, below 1 it is slower."""
        return self.fp32_ms / self.bf16_ms if self.bf16_ms > 0 else float("inf")


# ---------------------------------------------------------------------------------------------------- the CPU
def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name : value`` line of /proc/cpuinfo (None where there is no such file/line)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_model_name() -> str:
    """The CPU's marketing name (/proc/cpuinfo ``model name``, else ``platform.processor()``, else the machine)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it cannot be read, e.g. not on Linux)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_description() -> str:
    """One line for logs and docs, e.g. ``"AMD EPYC 7B13 64-Core Processor (avx512_bf16: no, amx_bf16: no)"``."""
    flags = cpu_flags()
    marks = ", ".join(f"{flag}: {'yes' if flag in flags else 'no'}" for flag in BF16_FLAGS)
    return f"{cpu_model_name()} ({marks})"


def probe_key() -> str:
    """Cache key of this machine's probe result: CPU model, the relevant flags it has, torch version."""
    flags = cpu_flags()
    present = ",".join(f for f in _KEY_FLAGS if f in flags) or "no-vector-flags"
    return f"{cpu_model_name()} | {present} | torch {torch.__version__}"


def cache_path() -> Path:
    """The probe cache file: ``<sdar cache dir>/hardware.json``."""
    from sdar.models import cache_dir

    return cache_dir() / _CACHE_FILE


# -------------------------------------------------------------------------------------------------- the probe
def time_matmul(bf16: bool, *, shape: tuple[int, int, int] = PROBE_SHAPE, seed: int = 0) -> float:
    """Seconds of one ``[m, k] @ [k, n]`` float32 matmul on the CPU, under bf16 autocast when ``bf16`` is true.

    The operands stay float32 (as a model's weights do under autocast), so the bf16 time includes the casts.
    Runs on the caller's thread count; ``run_probe`` sets one thread.
    """
    m, k, n = shape
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
        began = time.perf_counter()
        torch.matmul(a, b)
        return time.perf_counter() - began


def bf16_is_worth_it(fp32_s: float, bf16_s: float, *, min_speedup: float = MIN_SPEEDUP) -> bool:
    """True when bf16 ran at least ``min_speedup`` times faster than fp32 (times in any common unit)."""
    if bf16_s <= 0:
        return fp32_s > 0
    return fp32_s / bf16_s >= min_speedup


def run_probe(time_fn: TimeFn | None = None, *, repeats: int = 3, threads: int = 1,
              min_speedup: float = MIN_SPEEDUP) -> Bf16Probe:
    """Time the probe matmul both ways and decide; never reads or writes the cache.

    One warm-up run of each kind (kernel selection, first-touch allocation) is discarded, then ``repeats`` runs of
    each, interleaved so that a burst of load from elsewhere hits both; the fastest run of each kind counts. Torch
    runs on ``threads`` threads meanwhile (restored afterwards): per-thread speed is what the dtypes differ in.

    Args:
        time_fn: Seconds of one run (``time_matmul`` by default; injectable for tests).
        repeats: Timed runs per kind after the warm-up.
        threads: Torch intra-op threads during the probe (0 = leave as is).
        min_speedup: Speed-up bf16 needs to be chosen.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    timer = time_fn or time_matmul
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        timer(False)
        timer(True)
        fp32 = bf16 = float("inf")
        for _ in range(repeats):
            fp32 = min(fp32, timer(False))
            bf16 = min(bf16, timer(True))
    finally:
        torch.set_num_threads(before)
    return Bf16Probe(fp32_ms=fp32 * 1e3, bf16_ms=bf16 * 1e3,
                     fast=bf16_is_worth_it(fp32, bf16, min_speedup=min_speedup))


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries by key; an unreadable, corrupt or foreign file counts as empty."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring the unreadable hardware cache %s (%s); it will be rewritten", path, exc)
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("version") == _CACHE_VERSION else None
    if not isinstance(entries, dict):
        logger.warning("ignoring the hardware cache %s: unexpected content; it will be rewritten", path)
        return {}
    return entries


def _entry_probe(entry: Any) -> Bf16Probe | None:
    """The probe stored in one cache entry, or None when the entry is malformed."""
    try:
        probe = Bf16Probe(fp32_ms=float(entry["fp32_ms"]), bf16_ms=float(entry["bf16_ms"]),
                          fast=bool(entry["fast"]), cached=True)
    except (TypeError, KeyError, ValueError):
        return None
    if not isinstance(entry["fast"], bool) or not (probe.fp32_ms >= 0 and probe.bf16_ms >= 0):
        return None
    return probe


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    """Replace the cache file atomically; a failure (read-only home, full disk) only costs a re-probe later."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hardware-", suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": _CACHE_VERSION, "entries": entries}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not write the hardware cache %s: %s", path, exc)


_memo: dict[tuple[str, str], Bf16Probe] = {}
"""Probe results of this process by (cache file, key), so the file is read at most once per process."""


def cpu_bf16_probe(*, time_fn: TimeFn | None = None, refresh: bool = False) -> Bf16Probe:
    """This CPU's bf16-vs-fp32 probe result: from the cache when this machine was probed before, else measured
    (a few seconds at most) and stored.

    Args:
        time_fn: Timing function for the measurement (tests inject one).
        refresh: Measure again even when a result is cached (and overwrite it).
    """
    path, key = cache_path(), probe_key()
    if not refresh and (path.as_posix(), key) in _memo:
        return _memo[(path.as_posix(), key)]
    entries = _read_cache(path)
    probe = None if refresh else _entry_probe(entries.get(key))
    if probe is None:
        logger.info("timing bf16 autocast against fp32 on this CPU (once per machine; cached in %s)", path)
        probe = run_probe(time_fn)
        logger.info("CPU matmul probe: fp32 %.1f ms, bf16 autocast %.1f ms (%.2fx) -> bf16 %s", probe.fp32_ms,
                    probe.bf16_ms, probe.speedup, "used" if probe.fast else "not used")
        record = asdict(probe)
        record.pop("cached")
        record.update(speedup=probe.speedup, measured=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _write_cache(path, {**entries, key: record})
    _memo[(path.as_posix(), key)] = probe
    return probe


def cpu_bf16_is_fast() -> bool:
    """True when bf16 autocast runs matmuls at least ``MIN_SPEEDUP`` times faster than fp32 on this CPU."""
    return cpu_bf16_probe().fast


# -------------------------------------------------------------------------------------------------- the choice
def resolve_autocast(setting: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``setting`` on ``device`` (None = run in the weights' dtype).

    * ``"none"``: None.
    * ``"bfloat16"``: bfloat16 as asked; on a CPU where the probe found it slow, with a warning giving the measured
      ratio (on CUDA without bf16 support: None, with a warning).
    * ``"auto"``: on CUDA bfloat16 where the GPU supports it; on a CPU bfloat16 only when the probe found it at
      least ``MIN_SPEEDUP`` times faster than fp32; on other devices None.

    Raises:
        ValueError: for any other setting.
    """
    if setting not in ("auto", "none", "bfloat16"):
        raise ValueError(f"autocast must be 'auto', 'none' or 'bfloat16', got {setting!r}")
    if setting == "none":
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if setting == "bfloat16":
            logger.warning("autocast: bfloat16 was asked for, but this GPU does not support it; running in float32")
        return None
    if kind != "cpu":
        return torch.bfloat16 if setting == "bfloat16" else None
    probe = cpu_bf16_probe()
    if setting == "auto":
        return torch.bfloat16 if probe.fast else None
    if not probe.fast:
        logger.warning(
            "autocast: bfloat16 is slow on this CPU (%s): a probe matmul took %.1f ms under bf16 autocast against "
            "%.1f ms in float32 (%.2fx the speed); use autocast: auto or none to run in float32",
            cpu_description(), probe.bf16_ms, probe.fp32_ms, probe.speedup)
    return torch.bfloat16
