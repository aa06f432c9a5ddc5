"""Launching a 2-process ``torchrun`` job from a test while the same run goes on in the test's own process.

Used by the tests that compare a data-parallel run with a single-process reference (tests/test_distributed_train.py,
tests/test_vllm_torchrun.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_metrics(path: Path) -> list[dict]:
    """The lines of a run's metrics.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def torchrun_beside(script: Path, args: list[str], log_path: Path, reference: Callable[[], object], *,
                    env: Mapping[str, str] | None = None, timeout: float = 240) -> tuple[int | None, str]:
    """Run ``torchrun --nproc-per-node 2 script *args`` (one CPU thread a rank) while ``reference()`` runs here;
    returns the job's exit code and its whole log (the job is killed if it outlives ``timeout`` seconds after
    ``reference`` returns)."""
    full_env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port())]
    with log_path.open("w") as log:
        proc = subprocess.Popen([*torchrun, str(script), *args], cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        try:
            reference()
            proc.wait(timeout=timeout)
        finally:
            proc.kill()
    return proc.returncode, log_path.read_text()
