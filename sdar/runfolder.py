"""Output folders of the commands: refuse to mix two runs, clear only a command's own files, check a resume.

Rules (the commands ``sdar train``, ``sdar sft``, ``sdar eval`` and ``sdar compare`` follow them):

- A command writes into a new or empty folder. A folder that already holds files is refused with a message naming
  them, unless
  - ``--resume`` (``sdar train``): continue the run in it. The stored ``config.yaml`` is compared with the new
    configuration and any difference outside :data:`RESUME_MAY_CHANGE` is refused, naming the keys;
  - ``--overwrite`` (every command): delete the files the command writes there (its :class:`Layout`), then start
    afresh. A folder that also holds anything else is refused instead, so ``--overwrite`` never deletes a file the
    command did not write;
  - ``sdar compare``: a folder that holds only a comparison's own output is reused (finished runs are kept,
    interrupted ones resumed, see :mod:`sdar.commands.compare`).
- ``sdar demo`` replaces its own run folder each time (``--overwrite`` semantics), so ``make demo`` can run again.
- Library calls (``sdar.commands.train.train(cfg)``) write into the folder as they find it unless asked otherwise.

Under torchrun only rank 0 checks and clears the folder (before the process group exists); a refusal there ends
the job.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from sdar.config import ConfigError, MethodName, RunConfig, dump_yaml, from_dict

__all__ = [
    "COMPARE_LAYOUT",
    "EVAL_LAYOUT",
    "FolderMode",
    "Layout",
    "LOSS_SPEC_FILE",
    "RESUME_MAY_CHANGE",
    "RunFolderError",
    "SFT_LAYOUT",
    "TRAIN_LAYOUT",
    "changed_settings",
    "check_resume",
    "foreign_entries",
    "launcher_rank",
    "loss_spec_yaml",
    "prepare_folder",
]

FolderMode = Literal["new", "overwrite", "reuse", "own"]
"""What to do with an output folder that holds files: ``new`` refuses it, ``overwrite`` deletes the command's own
files first (refusing when anything else is there), ``reuse`` writes into it as it is, ``own`` accepts it when it
holds nothing but the command's own files."""

LOSS_SPEC_FILE = "loss_spec.yaml"
"""Resolved loss settings of a training run, written next to ``config.yaml``."""

RESUME_MAY_CHANGE: tuple[str, ...] = (
    "total_steps", "resume", "device", "out_dir", "log", "eval_every", "eval_tasks", "eval_temperature",
    "eval_at_start", "eval_with_skills", "save_every", "keep_checkpoints", "optim.rollback_nonfinite", "sft",
)
"""Settings (a dotted key, or a section for all of its keys) that ``--resume`` may change: the length of the run,
where and how it logs, evaluates and checkpoints, the device, and the warm start's section (RL does not read it). Every other setting defines the run (model,
data, method, sampling, optimizer, seed), so changing it on resume would make the continued steps a different run."""


class RunFolderError(ConfigError):
    """An output folder that cannot be used as asked; the message names the folder, its files and the options."""


@dataclass(frozen=True)
class Layout:
    """The files one command writes into its output folder."""

    command: str
    """The command, for messages (e.g. ``sdar train``)."""
    files: tuple[str, ...] = ()
    """Name patterns (fnmatch) of the files it writes."""
    folders: Mapping[str, Layout | None] = field(default_factory=dict)
    """Name pattern of a sub-folder -> its layout, or None when everything inside belongs to the command."""
    option: str = "--out-dir"
    """The option that names the folder, for messages."""


_TRAIN_FILES = ("config.yaml", LOSS_SPEC_FILE, "metrics.jsonl", "delta_samples.jsonl", "report.txt")
_TRAIN_FOLDERS: dict[str, Layout | None] = {"checkpoints": None, "tensorboard": None, "report": None, "eval": None,
                                            "eval_skills": None}
TRAIN_LAYOUT = Layout("sdar train", _TRAIN_FILES, _TRAIN_FOLDERS)
"""A training run: config, loss settings, metrics, checkpoints, TensorBoard events, and what `sdar report`,
`sdar eval` (default output) and `sdar demo` add to it."""
EVAL_LAYOUT = Layout("sdar eval", ("eval.json", "eval.md"), option="--out")
"""An evaluation: the result and its table."""
SFT_LAYOUT = Layout("sdar sft", ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.jinja", "*.tiktoken"))
"""A supervised warm start: a transformers model folder (weights, config, tokenizer files) and sft_report.json."""
_SEED_LAYOUT = Layout("sdar compare", _TRAIN_FILES + EVAL_LAYOUT.files, _TRAIN_FOLDERS)
_METHOD_LAYOUT = Layout("sdar compare", folders={"seed*": _SEED_LAYOUT})
_COMPARE_ROWS = ("vanilla", "skill_prompt", *typing.get_args(MethodName))  # sdar.commands.compare.BASE_ROWS + the methods
COMPARE_LAYOUT = Layout("sdar compare", ("table.md", "results.json", "*.png"),
                        {row: _METHOD_LAYOUT for row in _COMPARE_ROWS}, option="--out")
"""A comparison: its table, results and plots, and a run folder per row and seed (``<row>/seed<k>``)."""


def launcher_rank() -> int:
    """This process's rank under torchrun (0 without it), readable before the process group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _match(name: str, patterns: Any) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


def foreign_entries(folder: Path, layout: Layout) -> list[Path]:
    """Everything under ``folder`` that the layout's command does not write (sorted; a foreign folder is listed
    once, not its content)."""
    out: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            pattern = _match(entry.name, layout.folders)
            if pattern is None:
                out.append(entry)
            elif layout.folders[pattern] is not None:
                out.extend(foreign_entries(entry, layout.folders[pattern]))  # type: ignore[arg-type]
        elif _match(entry.name, layout.files) is None:
            out.append(entry)
    return out


def _clear(folder: Path, layout: Layout) -> None:
    """Delete the layout's files under ``folder`` (the caller checked that nothing else is there)."""
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            pattern = _match(entry.name, layout.folders)
            sub = layout.folders.get(pattern) if pattern is not None else None
            if pattern is None:
                continue
            if sub is None:
                shutil.rmtree(entry)
            else:
                _clear(entry, sub)
                if not any(entry.iterdir()):
                    entry.rmdir()
        elif _match(entry.name, layout.files) is not None:
            entry.unlink()


def _names(paths: list[Path], root: Path, limit: int = 6) -> str:
    shown = [str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in paths[:limit]]
    return ", ".join(shown) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def prepare_folder(folder: str | Path, layout: Layout, *, mode: FolderMode, resume_option: bool = False) -> Path:
    """Make ``folder`` ready for the layout's command according to ``mode`` (see :data:`FolderMode`); returns it.

    Args:
        resume_option: The command has ``--resume`` (named in the refusal).

    Raises:
        RunFolderError: when the folder holds files and ``mode`` does not allow them, or ``overwrite`` would have
            to delete something the command did not write.
    """
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"{layout.command}: {root} is a file, not a folder; choose another {layout.option}")
    if not root.exists() or not any(root.iterdir()) or mode == "reuse":
        root.mkdir(parents=True, exist_ok=True)
        return root
    if mode == "new":
        resume = "--resume to continue the run in it, " if resume_option else ""
        raise RunFolderError(
            f"{layout.command}: {root} is not empty (it holds {_names(sorted(root.iterdir()), root)}); pass {resume}"
            f"--overwrite to delete that output and start again, or choose another {layout.option}")
    foreign = foreign_entries(root, layout)
    if foreign:
        what = ("--overwrite deletes only what it writes" if mode == "overwrite" else
                "it reuses a folder only when it holds nothing else")
        raise RunFolderError(
            f"{layout.command}: {root} holds files that {layout.command} does not write ({_names(foreign, root)}); "
            f"{what}, so move them away or choose another {layout.option}")
    if mode == "overwrite":
        _clear(root, layout)
    return root


# ------------------------------------------------------------------------------------------------------ resume
def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def changed_settings(stored: Mapping[str, Any], cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (stored value, new value) for every run-defining setting in which ``cfg`` differs from the
    stored configuration (a key missing on one side shows as ``"(absent)"``).

    A stored configuration written before a setting existed gets that setting's default first."""
    try:
        old = yaml.safe_load(dump_yaml(from_dict(RunConfig, stored)))
    except (ConfigError, TypeError, ValueError):
        old = dict(stored)  # a setting was removed or renamed since: compare the raw values
    a, b = _flatten(old), _flatten(yaml.safe_load(dump_yaml(cfg)))
    return {k: (a.get(k, "(absent)"), b.get(k, "(absent)")) for k in sorted(set(a) | set(b))
            if not _may_change(k) and a.get(k, "(absent)") != b.get(k, "(absent)")}


def check_resume(folder: str | Path, cfg: RunConfig) -> None:
    """Refuse to resume the run in ``folder`` with a configuration that changes a run-defining setting.

    Nothing is checked when the folder has no ``config.yaml`` (a resume there starts from step 0).

    Raises:
        RunFolderError: naming the changed keys with their stored and new values.
    """
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path} cannot be read ({type(err).__name__}); the run cannot be resumed: restore "
                             "the file, or start again with --overwrite") from None
    if not isinstance(stored, Mapping):
        raise RunFolderError(f"{path} is not a configuration; restore it, or start again with --overwrite")
    changed = changed_settings(stored, cfg)
    if changed:
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise RunFolderError(
            f"--resume would change settings that define the run in {path.parent} ({shown}{more}); resume with the "
            "stored settings, or start a new run with --overwrite or another --out-dir (a resume may change only "
            f"{', '.join(RESUME_MAY_CHANGE)})")


# ------------------------------------------------------------------------------------------------- loss settings
def loss_spec_yaml(cfg: RunConfig, spec: Any, lr: float) -> str:
    """The resolved loss settings of a run (``spec``: the ``LossSpec`` of ``sdar.runtime.resolve_spec``) as YAML,
    with the method and the resolved learning rate."""
    header = (f"# Loss of algo.method={cfg.algo.method}: the method's defaults (`sdar methods`) with the algo.* values "
              "set in config.yaml applied.\n# RLSD's rlsd_lambda is the starting value of its schedule.\n")
    body = {"method": cfg.algo.method, "lr": lr, "loss": dataclasses.asdict(spec)}
    return header + yaml.safe_dump(body, sort_keys=False)


def prepare_run_folder(cfg: RunConfig, folder: FolderMode) -> None:
    """Check (and with ``overwrite`` clear) ``cfg.out_dir`` before a run, and check a resume against the stored
    config (rank 0 only).

    Raises:
        RunFolderError: when the folder cannot be used as asked or a resume changes a run-defining setting.
    """
    if launcher_rank() != 0:
        return
    if cfg.resume and folder == "overwrite":
        raise RunFolderError("--resume continues the run in out_dir and --overwrite deletes it; give only one")
    mode: FolderMode = "reuse" if cfg.resume and folder == "new" else folder
    prepare_folder(cfg.out_dir, TRAIN_LAYOUT, mode=mode, resume_option=True)
    if cfg.resume:
        check_resume(cfg.out_dir, cfg)


def write_run_settings(cfg: RunConfig, spec: Any, lr: float) -> None:
    """``config.yaml`` (the resolved configuration) and ``loss_spec.yaml`` (the resolved loss ``spec`` and
    learning rate ``lr``) in the run folder."""
    out = Path(cfg.out_dir)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    (out / LOSS_SPEC_FILE).write_text(loss_spec_yaml(cfg, spec, lr))
