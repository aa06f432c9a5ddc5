"""Atomic on-disk checkpoints: model weights (safetensors), optimizer state, run state and RNG streams.

Layout of ``<dir>/step_000042/``:

- ``model.safetensors``: ``learner_state["model"]``. Tensors that are the same view of the same storage (tied
  embeddings) are stored once; the alias names are kept in the file's metadata and restored on load.
- ``optimizer.pt``: every other entry of ``learner_state`` (optimizer state, schedule counters, generator states).
- ``rng.pt``: the global RNG streams (python ``random``, numpy, torch CPU, and every CUDA device when available).
- ``state.json``: ``{"step", "extra", "files"}``, written last.

A checkpoint is written into a hidden temporary folder, flushed to disk, and put in place by
:func:`sdar.atomic.replace_dir` (a rename, or an atomic swap when a folder of the same step already exists); only
then is ``<dir>/latest`` (one line: the folder name) replaced atomically. A crash at any point (even SIGKILL)
therefore leaves the previous checkpoint and ``latest`` intact, and :func:`latest_checkpoint` never returns a
partial folder. Leftovers of a crashed save are repaired when the folder is next opened: by :func:`save_checkpoint`
(every leftover) and by :func:`latest_checkpoint` / :func:`load_checkpoint` (those of dead processes on this host).
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from sdar.atomic import (
    clean_leftovers,
    fsync_dir,
    fsync_file,
    new_tmp_dir,
    remove_dir,
    replace_dir,
    write_text_atomic,
)

__all__ = ["capture_rng_state", "latest_checkpoint", "load_checkpoint", "restore_rng_state", "save_checkpoint"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")
_ALIASES_KEY = "sdar.aliases"


def _step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def capture_rng_state() -> dict[str, Any]:
    """Global RNG streams as plain containers and tensors (loadable with ``torch.load(weights_only=True)``)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
        state["numpy"] = (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA streams are restored only when the device count matches."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "checkpoint has CUDA RNG states for %d devices but %d are visible; CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


def _dedupe_tensors(tensors: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Split ``tensors`` into unique CPU tensors for safetensors and ``{alias: stored_name}`` for tied views.

    Two entries are aliases when they are the same view (storage, offset, shape, stride, dtype) of one storage.
    Other storage sharing (overlapping but different views) is broken by copying.
    """
    unique: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple[Any, ...], str] = {}
    seen_storages: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"model state entry {name!r} is {type(t).__name__}, expected a tensor")
        t = t.detach()
        if t.numel() == 0:
            unique[name] = t.cpu().clone()
            continue
        ptr = t.untyped_storage().data_ptr()
        view = (t.device, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in seen_views:
            aliases[name] = seen_views[view]
            continue
        seen_views[view] = name
        shared = ptr in seen_storages
        seen_storages.add(ptr)
        t = t.cpu()
        unique[name] = t.clone(memory_format=torch.contiguous_format) if shared or not t.is_contiguous() else t
    return unique, aliases


def _write_step_folder(tmp: Path, *, step: int, learner_state: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    if "model" not in learner_state:
        raise KeyError("learner_state needs a 'model' entry (name -> tensor), as returned by Learner.state_dict()")
    tensors, aliases = _dedupe_tensors(learner_state["model"])
    save_file(tensors, str(tmp / MODEL_FILE), metadata={_ALIASES_KEY: json.dumps(aliases, sort_keys=True)})
    torch.save({k: v for k, v in learner_state.items() if k != "model"}, tmp / OPTIMIZER_FILE)
    torch.save(capture_rng_state(), tmp / RNG_FILE)
    files = [MODEL_FILE, OPTIMIZER_FILE, RNG_FILE]
    text = json.dumps({"step": int(step), "extra": dict(extra), "files": files}, indent=2, sort_keys=True)
    (tmp / STATE_FILE).write_text(text + "\n", encoding="utf-8")
    for name in [*files, STATE_FILE]:
        fsync_file(tmp / name)
    fsync_dir(tmp)


def _write_latest(directory: Path, name: str) -> None:
    write_text_atomic(directory / LATEST_FILE, name + "\n")


def _is_complete(path: Path) -> bool:
    """A renamed-into-place step folder whose state file parses and lists files that all exist."""
    if not path.is_dir() or not _STEP_DIR.match(path.name):
        return False
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all((path / f).is_file() for f in state.get("files", []))


def _complete_steps(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and _is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def _prune(directory: Path, keep_last: int, protect: Path) -> None:
    complete = _complete_steps(directory)
    for _, path in complete[: max(len(complete) - keep_last, 0)]:
        if path != protect:
            remove_dir(path)  # renamed aside first: a crash never leaves a half-deleted step folder


def save_checkpoint(
    directory: str | Path,
    *,
    step: int,
    learner_state: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write ``directory/step_{step:06d}/`` atomically and point ``directory/latest`` at it.

    Args:
        directory: Checkpoint root (created if missing).
        step: Training step the checkpoint belongs to (the step just finished).
        learner_state: ``Learner.state_dict()``: ``"model"`` (name -> tensor) plus any torch-serialisable entries.
        extra: JSON-serialisable run state (data cursor, sampler state, ...); returned by :func:`load_checkpoint`.
        keep_last: Keep only this many most recent complete checkpoints (None = keep all).

    Returns:
        The final checkpoint folder.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    clean_leftovers(root, writer=True)  # left behind by a crashed save
    name = _step_dir_name(step)
    final = root / name
    tmp = new_tmp_dir(final)
    try:
        _write_step_folder(tmp, step=step, learner_state=learner_state, extra=extra or {})
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest(root, name)
    if keep_last is not None:
        _prune(root, keep_last, protect=final)
    logger.info("saved checkpoint %s", final)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint ``directory/latest`` points at, else the newest complete one; None when there is none.

    Temporary folders and step folders without a valid ``state.json`` are never returned.
    """
    root = Path(directory)
    clean_leftovers(root, writer=False)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if _is_complete(candidate):
            return candidate
    complete = _complete_steps(root)
    return complete[-1][1] if complete else None


def load_checkpoint(
    path: str | Path, *, restore_rng: bool = True, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint folder written by :func:`save_checkpoint`.

    Args:
        path: A ``step_XXXXXX`` folder (use :func:`latest_checkpoint` to find one).
        restore_rng: Also restore the global RNG streams saved with it.
        map_location: Device for the optimizer-state tensors.

    Returns:
        ``(learner_state, extra)``; ``learner_state["model"]`` has tied names pointing at the same tensor again, and
        ``extra`` has ``"step"`` added.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(path)
    clean_leftovers(folder.parent, writer=False)
    if not _is_complete(folder):
        raise FileNotFoundError(
            f"{folder} is not a complete checkpoint folder (step_XXXXXX with state.json); "
            "pass the result of latest_checkpoint(<checkpoint dir>)"
        )
    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    model = load_file(str(folder / MODEL_FILE))
    with safe_open(str(folder / MODEL_FILE), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get(_ALIASES_KEY, "{}"))
    for alias, stored in aliases.items():
        model[alias] = model[stored]
    learner_state: dict[str, Any] = torch.load(folder / OPTIMIZER_FILE, map_location=map_location, weights_only=True)
    learner_state["model"] = model
    if restore_rng:
        restore_rng_state(torch.load(folder / RNG_FILE, weights_only=True))
    extra = dict(state.get("extra", {}))
    extra["step"] = int(state["step"])
    return learner_state, extra
