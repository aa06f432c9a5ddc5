"""Crash-safe saves: a writer killed with a real SIGKILL at each critical point leaves the previous good state.

Each scenario runs a small script in a subprocess: it saves a first state, then starts saving a second one and,
at the chosen point (while writing, between the renames of a replacement, right after the swap), writes a marker
file and sleeps. The test then sends SIGKILL and checks, in this process, that the folder still loads and holds a
complete state (the first, or the second where the swap had already happened), and that leftovers are repaired.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sdar import atomic
from torchrun_launch import free_port

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
import os, sys, time
from pathlib import Path
import sdar.atomic as atomic

root, point = Path(sys.argv[1]), sys.argv[2]

def hold(*_args, **_kwargs):
    (root.parent / "ready").write_text(str(os.getpid()))
    time.sleep(600)

def hold_after(fn, nth=1):
    calls = []
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls.append(1)
        if len(calls) == nth:
            hold()
        return out
    return wrapper

def arm_common():
    if point == "between_renames":  # the non-atomic fallback: old moved aside, new not yet in place
        atomic._exchange = lambda a, b: False
        atomic.os.rename = hold_after(os.rename)
    elif point == "after_swap":  # the new folder is in place, the old one not yet deleted
        atomic._delete = hold
"""


def _kill_during(tmp_path: Path, body: str, point: str, timeout: float = 120.0) -> Path:
    """Run PRELUDE + ``body`` with (work folder, point); SIGKILL it once it reports ``ready``; returns the folder."""
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "scenario.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(work), point], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = tmp_path / "ready"
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"the writer exited ({proc.returncode}) before reaching {point!r}:\n{out[-4000:]}")
            assert time.monotonic() < deadline, f"the writer did not reach {point!r} in {timeout} s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    return work


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(atomic.TMP_PREFIX))


# ------------------------------------------------------------------------------------------------ the primitive
PLAIN = """
final = root / "data"
def save(text):
    tmp = atomic.new_tmp_dir(final)
    for i in range(3):
        (tmp / f"part{i}").write_text(text)
        if point == "writing" and text == "new" and i == 1:
            hold()
    atomic.replace_dir(tmp, final)
save("old")
arm_common()
save("new")
"""


@pytest.mark.parametrize(("point", "survivor"), [("writing", "old"), ("between_renames", "old"),
                                                 ("after_swap", "new")])
def test_a_killed_folder_replacement_leaves_one_complete_version(tmp_path: Path, point: str, survivor: str) -> None:
    work = _kill_during(tmp_path, PLAIN, point)
    assert _leftovers(work)  # the kill left something behind
    atomic.clean_leftovers(work, writer=False)  # a reader: the writer is dead, so it may repair
    assert _leftovers(work) == []
    assert [(work / "data" / f"part{i}").read_text() for i in range(3)] == [survivor] * 3


def test_readers_leave_saves_in_progress_alone(tmp_path: Path) -> None:
    final = tmp_path / "data"
    mine = atomic.new_tmp_dir(final)  # this (live) process is writing it
    theirs = atomic.tmp_name(final).with_name(atomic.tmp_name(final).name.replace(f"~{os.getpid()}~",
                                                                                  f"~{os.getppid()}~"))
    theirs.mkdir()  # another live process on this host
    assert atomic.clean_leftovers(tmp_path, writer=False) == []
    assert atomic.clean_leftovers(tmp_path, writer=True) == [mine]  # our own failed attempt; the other stays
    assert mine.exists() is False and theirs.exists()


def test_replace_dir_without_the_atomic_swap(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "data"
    for text in ("a", "b"):
        tmp = atomic.new_tmp_dir(final)
        (tmp / "f").write_text(text)
        atomic.replace_dir(tmp, final)
    assert (final / "f").read_text() == "b" and _leftovers(tmp_path) == []
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    tmp = atomic.new_tmp_dir(final)
    (tmp / "f").write_text("c")
    atomic.replace_dir(tmp, final)
    assert (final / "f").read_text() == "c" and _leftovers(tmp_path) == []
    atomic.write_text_atomic(tmp_path / "latest", "x\n")
    atomic.remove_dir(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


# ---------------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT = """
import torch
from sdar.learner import checkpoint as ck

def state(v):
    w = torch.full((256, 256), float(v))
    return {"model": {"w": w, "tied": w}, "optimizer": {"m": torch.tensor(float(v))}}

ck.save_checkpoint(root, step=1, learner_state=state(1), extra={"v": 1})
ck.save_checkpoint(root, step=2, learner_state=state(2), extra={"v": 2})
arm_common()
if point == "writing":  # model and optimizer files written, RNG and state.json not yet
    ck.capture_rng_state = lambda: hold()
ck.save_checkpoint(root, step=2, learner_state=state(3), extra={"v": 3})  # the same step again
"""


@pytest.mark.parametrize(("point", "survivor"), [("writing", 2), ("between_renames", 2), ("after_swap", 3)])
def test_a_killed_checkpoint_resave_keeps_the_step(tmp_path: Path, point: str, survivor: int) -> None:
    import torch

    from sdar.learner.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    work = _kill_during(tmp_path, CHECKPOINT, point)
    ckpt = latest_checkpoint(work)  # repairs first: no fall-back to step 1
    assert ckpt is not None and ckpt.name == "step_000002"
    state, extra = load_checkpoint(ckpt, restore_rng=False)
    assert extra == {"v": survivor, "step": 2}
    assert torch.equal(state["model"]["w"], torch.full((256, 256), float(survivor)))
    assert state["model"]["tied"] is state["model"]["w"]
    assert _leftovers(work) == []
    save_checkpoint(work, step=3, learner_state={"model": {"w": torch.zeros(2)}}, keep_last=1)
    assert sorted(p.name for p in work.iterdir()) == ["latest", "step_000003"]


def test_a_folder_moved_aside_by_the_previous_code_is_restored(tmp_path: Path) -> None:
    import torch

    from sdar.learner.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    for step in (1, 2):
        save_checkpoint(tmp_path, step=step, learner_state={"model": {"w": torch.full((2,), float(step))}})
    os.rename(tmp_path / "step_000002", tmp_path / ".tmp-old-step_000002-0123abcd")  # killed mid-replacement
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step_000002"
    assert float(load_checkpoint(ckpt, restore_rng=False)[0]["model"]["w"][0]) == 2.0
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- FSDP sharded save
FSDP = """
import torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
torch.set_num_threads(1)
from sdar.learner import dist as dist_util
dist_util.init_from_env(backend="gloo", timeout_s=60)
import torch.distributed.checkpoint as dcp
from sdar.learner.fsdp import FSDPLearner
from sdar.tiny import byte_tokenizer, tiny_model

learner = FSDPLearner(tiny_model(len(byte_tokenizer())), micro_batch_tokens=16)
folder = root / "sharded" / "step_000001"
learner.save_sharded(folder)
torch.save({k: v.detach().clone() for k, v in learner.export_weights()}, root.parent / "first.pt")
with torch.no_grad():
    for p in learner.model.parameters():
        p.add_(1.0)
arm_common()
if point == "writing":  # every shard written, the run state and the rename not yet
    dcp.save = hold_after(dcp.save)
learner.save_sharded(folder)
"""


@pytest.mark.parametrize(("point", "shift"), [("writing", 0.0), ("after_swap", 1.0)])
def test_a_killed_sharded_save_keeps_a_loadable_folder(tmp_path: Path, point: str, shift: float) -> None:
    import torch

    from sdar.distributed import consolidate_sharded
    from sdar.learner.fsdp import SHARDED_STATE_FILE

    work = tmp_path / "work"
    body = FSDP.replace("sys.argv[3]", repr(str(free_port())))
    _kill_during(tmp_path, body, point)
    folder = work / "sharded" / "step_000001"
    got = consolidate_sharded(folder)  # reads the shards in one process, after repairing leftovers
    first = torch.load(tmp_path / "first.pt", weights_only=True)
    assert set(got) == set(first)
    assert max(float((got[k] - first[k] - shift).abs().max()) for k in first) < 1e-6
    assert (folder / SHARDED_STATE_FILE).is_file()
    assert _leftovers(work / "sharded") == []


# ----------------------------------------------------------------------------------------------- sft model folder
SFT = """
import torch
import sdar.commands.sft as sft
from sdar.models import load_model
from sdar.tiny import byte_tokenizer

tok = byte_tokenizer()
torch.manual_seed(0)
model = load_model("tiny-random", dtype="float32")
out = root / "model"
sft.save_model(model, tok, out)
torch.save({k: v.clone() for k, v in model.state_dict().items()}, root.parent / "first.pt")
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
if point == "writing":  # weights written into the temporary folder, tokenizer not yet
    tok.save_pretrained = hold
elif point == "before_rename":  # the new folder is complete but not in place
    sft.replace_dir = hold
sft.save_model(model, tok, out)
"""


@pytest.mark.parametrize("point", ["writing", "before_rename"])
def test_a_killed_sft_save_keeps_the_previous_model(tmp_path: Path, point: str) -> None:
    import torch

    from sdar.models import load_model, load_tokenizer
    from sdar.commands.sft import save_model

    work = _kill_during(tmp_path, SFT, point)
    out = work / "model"
    assert _leftovers(work)  # the half-written new folder, beside the intact old one
    model = load_model(str(out), dtype="float32")
    first = torch.load(tmp_path / "first.pt", weights_only=True)
    assert all(torch.equal(v, first[k]) for k, v in model.state_dict().items())
    tok = load_tokenizer(str(out))
    save_model(model, tok, out)  # the next save repairs the folder
    assert _leftovers(work) == [] and (out / "config.json").is_file()


def test_sft_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    from sdar.commands.sft import save_model

    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no saved model"):
        save_model(object(), object(), tmp_path)  # refused before anything is written
    assert (tmp_path / "notes.txt").read_text() == "keep me"
