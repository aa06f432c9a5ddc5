"""glibc's thresholds raised once by the command line: what is set, when nothing is touched, and the page faults saved."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from sdar import allocator
from sdar.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, keep_freed_memory


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_sets_both_thresholds() -> None:
    libc = FakeLibc()
    said = keep_freed_memory({}, libc)
    assert libc.calls == [(-3, 256 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (malloc.h)
    assert (MMAP_THRESHOLD, TRIM_THRESHOLD) == (256 << 20, 1 << 30)
    assert "256 MiB" in said and "SDAR_MALLOC=system" in said


@pytest.mark.parametrize("env, why", [
    ({"SDAR_MALLOC": "system"}, "SDAR_MALLOC=system"),
    ({"SDAR_MALLOC": " System "}, "SDAR_MALLOC=system"),
    ({"MALLOC_TRIM_THRESHOLD_": "100000"}, "MALLOC_TRIM_THRESHOLD_ set"),
    ({"MALLOC_MMAP_THRESHOLD_": "1", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
     "MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES set"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "another allocator"),
])
def test_the_users_choice_is_left_alone(env: dict[str, str], why: str) -> None:
    libc = FakeLibc()
    said = keep_freed_memory(env, libc)
    assert libc.calls == []
    assert said.startswith("left as it is") and why in said


def test_an_unrelated_preload_or_empty_setting_does_not_stop_it() -> None:
    libc = FakeLibc()
    keep_freed_memory({"LD_PRELOAD": "/opt/libfaketime.so", "MALLOC_TRIM_THRESHOLD_": "", "SDAR_MALLOC": "auto"}, libc)
    assert len(libc.calls) == 2


def test_a_refusal_is_reported() -> None:
    assert keep_freed_memory({}, FakeLibc(answer=0)) == "mallopt refused the mmap and trim threshold"


def test_not_glibc_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert keep_freed_memory({}) == "left as it is (not glibc)"


PROBE = """
import json, resource, sys, torch
torch.set_num_threads(1)
said = "default"
if sys.argv[1] == "keep":
    from sdar.allocator import keep_freed_memory
    said = keep_freed_memory({})
from sdar.algo.logprobs import hidden_token_logprobs
g = torch.Generator().manual_seed(0)
weight = torch.randn(49152, 64, generator=g).requires_grad_()  # a 49k vocabulary: [1024, V] logits are 192 MiB
hidden = torch.randn(1024, 64, generator=g).requires_grad_()
targets = torch.randint(0, 49152, (1024,), generator=g)
def step():
    lp, _ = hidden_token_logprobs(hidden, weight, targets)
    lp.sum().backward()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
before = faults()
for _ in range(3):
    step()
print(json.dumps({"said": said, "faults": faults() - before}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_an_lm_head_update_faults_far_fewer_pages_in() -> None:
    def run(mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    default, kept = run("default"), run("keep")
    assert kept["said"].startswith("freed blocks up to 256 MiB reused")
    # by default every [1024, V] buffer of a step (logits, their exp, their gradient) is a fresh mmap, faulted in
    # page by page (~49k pages of 4 KiB each); kept, most of them reuse the heap's memory
    assert default["faults"] > 3 * 3 * 40_000
    assert kept["faults"] * 2 < default["faults"]  # measured 5-12x fewer (a no-op: 1x)


def test_the_command_line_sets_it_for_commands_that_run_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdar.commands import cli

    calls: list[str] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("set") or "stub")
    monkeypatch.setattr(cli, "cmd_train", lambda argv: 0)
    monkeypatch.setattr(cli, "cmd_methods", lambda argv: 0)
    assert cli.main(["methods"]) == 0 and calls == []
    assert cli.main(["train"]) == 0 and calls == ["set"]
    assert cli.COMPUTE_COMMANDS == {"train", "demo", "sft", "eval", "compare"}
