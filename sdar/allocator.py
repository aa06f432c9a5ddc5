"""glibc's allocator told to keep freed memory for reuse: ``keep_freed_memory``, called once by the command line.

By default glibc serves every block larger than its mmap threshold (dynamic, at most 32 MiB) with a fresh ``mmap``
and unmaps it when it is freed, so each new activation, gradient or logits buffer of that size is page-faulted in
again, page by page. A CPU training step allocates and frees such buffers thousands of times (every layer's
activations, every LM-head chunk of ``[1024, V]`` logits, the ``[V, H]`` gradients of the embedding): millions of
page faults a step. Raising the mmap threshold to ``MMAP_THRESHOLD`` and the trim threshold to ``TRIM_THRESHOLD``
keeps that memory in the heap for the next allocation of the same size. Measured in docs/benchmarks.md (allocator
section): about 10x fewer page faults, the full fine-tuning step bench at 0.84x the time, rollouts at about 0.95x,
the same peak memory for training steps; one 64-task evaluation peaked 0.7 GB higher (within the spread of glibc's
own peaks), and a loop of nothing but same-sized 192 MiB blocks grew the heap to twice its size:
``SDAR_MALLOC=system`` where memory is tight. GPU memory is not touched (PyTorch caches it itself); on a GPU run
only the host's allocations are affected.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Mapping

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

MMAP_THRESHOLD = 256 << 20
"""Blocks up to this size come from (and go back to) the heap instead of their own ``mmap``: the LM head's
``[1024, V]`` fp32 logits chunk of a 50k vocabulary (201 MB) stays under it."""
TRIM_THRESHOLD = 1 << 30
"""Free memory at the top of the heap kept for reuse before glibc returns it to the system."""
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
"""glibc's own environment settings: where one is set, the user has chosen and nothing is changed."""
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)


def keep_freed_memory(environ: Mapping[str, str] | None = None, libc: Any = None) -> str:
    """Raise glibc's mmap and trim thresholds for this process; returns what was done, in words (for the log).

    Nothing is changed where the user already chose: ``SDAR_MALLOC=system``, any of glibc's ``MALLOC_*_`` /
    ``GLIBC_TUNABLES`` settings, another allocator in ``LD_PRELOAD``, or a C library other than glibc.

    Args:
        environ: The environment to read (default ``os.environ``).
        libc: An object with glibc's ``mallopt(param, value) -> int`` (default: this process's C library).
    """
    env = os.environ if environ is None else environ
    if env.get("SDAR_MALLOC", "").strip().lower() == "system":
        return "left as it is (SDAR_MALLOC=system)"
    chosen = [name for name in USER_SETTINGS if env.get(name)]
    if chosen:
        return f"left as it is ({', '.join(chosen)} set)"
    if any(name in env.get("LD_PRELOAD", "") for name in _PRELOADED):
        return "left as it is (another allocator is preloaded)"
    if libc is None:
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return "left as it is (not glibc)"
        import ctypes

        libc = ctypes.CDLL(None)
    refused = [name for name, param, value in (("mmap", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                               ("trim", _M_TRIM_THRESHOLD, TRIM_THRESHOLD))
               if libc.mallopt(param, value) != 1]
    if refused:
        return f"mallopt refused the {' and '.join(refused)} threshold"
    return (f"freed blocks up to {MMAP_THRESHOLD >> 20} MiB reused, up to {TRIM_THRESHOLD >> 30} GiB kept "
            "(SDAR_MALLOC=system leaves glibc's defaults)")
