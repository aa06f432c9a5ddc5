"""Crash-safe replacement of folders and small files: write a new copy, flush it, then switch names.

A writer builds the new content under a hidden sibling name (:func:`new_tmp_dir`), and :func:`replace_dir` fsyncs
it and puts it in place of the final name:

* when the final name is free, one ``rename``;
* when it exists, on Linux one ``renameat2(RENAME_EXCHANGE)``, which swaps the two names atomically (there is no
  moment without a complete folder under the final name); the old content, now under the hidden name, is deleted;
* where the swap is not available (other systems, some network file systems), the old folder is first renamed to
  a hidden ``old`` name, the new one renamed into place, then the old one deleted. A crash between the two renames
  leaves the final name missing; :func:`clean_leftovers` then renames the old folder back.

Hidden names are ``.tmp-<kind>~<final name>~<host>~<pid>~<random>`` with kind ``new`` (content being written, or
old content swapped out: always safe to delete) or ``old`` (the previous content during a non-atomic replacement).
The host and process id let :func:`clean_leftovers` tell a leftover of a dead writer from a save in progress.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_PREFIX",
    "clean_leftovers",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "new_tmp_dir",
    "remove_dir",
    "replace_dir",
    "tmp_name",
    "write_bytes_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
"""Every hidden name this module (and older versions of the checkpoint code) writes starts with this."""
_SEP = "~"
_LEGACY_OLD = re.compile(r"^\.tmp-old-(?P<name>.+)-[0-9a-f]{8}$")
"""Moved-aside folders of the previous checkpoint code: ``.tmp-old-<name>-<8 hex>``."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"


def tmp_name(final: Path, kind: str = "new") -> Path:
    """A fresh hidden sibling of ``final`` owned by this process (``kind`` is ``new`` or ``old``)."""
    if kind not in ("new", "old"):
        raise ValueError(f"kind must be 'new' or 'old', got {kind!r}")
    label = f"{TMP_PREFIX}{kind}{_SEP}{final.name}{_SEP}{_host()}{_SEP}{os.getpid()}{_SEP}{uuid.uuid4().hex[:8]}"
    return final.with_name(label)


@dataclass(frozen=True)
class _Leftover:
    path: Path
    kind: str
    """``new`` (delete) or ``old`` (restore when the final name is missing, else delete)."""
    final: Path
    host: str | None
    pid: int | None
    """Owner; None for names written by older code, whose owner is unknown."""


def _parse(path: Path) -> _Leftover | None:
    name = path.name
    if not name.startswith(TMP_PREFIX):
        return None
    parts = name[len(TMP_PREFIX):].split(_SEP)
    if len(parts) >= 5 and parts[0] in ("new", "old") and parts[-2].isdigit():
        return _Leftover(path, parts[0], path.with_name(_SEP.join(parts[1:-3])), parts[-3], int(parts[-2]))
    legacy = _LEGACY_OLD.match(name)
    if legacy:
        return _Leftover(path, "old", path.with_name(legacy.group("name")), None, None)
    return _Leftover(path, "new", path, None, None)  # any other hidden temporary: an unfinished write


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _abandoned(item: _Leftover, *, writer: bool) -> bool:
    """Whether ``item`` can be acted on: its writer is known to be gone, or (``writer``) we own the folder."""
    if item.pid is None:  # written by older code, which no longer runs: restoring its moved-aside folder is safe
        return writer or item.kind == "old"
    if item.host == _host():
        if item.pid == os.getpid():
            return writer  # an earlier, failed save of this very process
        return not _alive(item.pid)
    return writer  # another host: only the folder's single writer may decide


def clean_leftovers(parent: str | Path, *, writer: bool, only: str | None = None) -> list[Path]:
    """Repair ``parent`` after crashed replacements; returns the paths acted on.

    A moved-aside ``old`` folder whose final name is missing is renamed back (the replacement never finished, so
    the previous content is the good one); any other leftover is deleted. With ``writer=False`` (a reader, which
    may run while a save is in progress elsewhere) only leftovers of dead processes on this host are touched; with
    ``writer=True`` (the single writer of ``parent``, before it saves) every leftover except those of other live
    processes on this host. ``only`` restricts the repair to leftovers of that one final name (written by this
    module), for folders shared with other programs. Errors from a concurrent cleaner are ignored.
    """
    folder = Path(parent)
    if not folder.is_dir():
        return []
    done: list[Path] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    for path in entries:
        item = _parse(path)
        if item is None or not _abandoned(item, writer=writer):
            continue
        if only is not None and (item.pid is None or item.final.name != only):
            continue
        try:
            if item.kind == "old" and not item.final.exists():
                os.rename(item.path, item.final)
                fsync_dir(folder)
                logger.warning("restored %s from an interrupted replacement", item.final)
            else:
                _delete(item.path)
                logger.info("removed %s, left by an interrupted write", item.path)
        except OSError:
            continue
        done.append(item.path)
    return done


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_file(path: str | Path) -> None:
    """Flush one file's content to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (names) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """Flush every file and folder under ``root`` (deepest folders first), then ``root`` itself."""
    base = Path(root)
    for here, dirs, files in os.walk(base, topdown=False):
        for name in files:
            path = Path(here) / name
            if not path.is_symlink():
                fsync_file(path)
        for name in dirs:
            fsync_dir(Path(here) / name)
    fsync_dir(base)


def new_tmp_dir(final: str | Path) -> Path:
    """Create and return an empty hidden sibling folder of ``final`` to write the new content into."""
    target = Path(final)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(target)
    tmp.mkdir()
    return tmp


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    """glibc's ``renameat2`` (2.28+), or None where there is none (other systems, musl, old glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically (Linux ``renameat2``); False where that is not supported."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this file system cannot swap; the caller falls back
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Put the fully written folder ``tmp`` (a sibling from :func:`new_tmp_dir`) in place of ``final``.

    ``tmp`` is fsynced first. A crash at any point leaves either the previous ``final`` or the new one (module
    docstring), never a mixture; leftovers are repaired by :func:`clean_leftovers`. Returns ``final``.
    """
    src, dst = Path(tmp), Path(final)
    fsync_tree(src)
    if not dst.exists():
        os.rename(src, dst)
    elif _exchange(src, dst):
        _delete(src)  # the old content, now under the hidden name
    else:
        old = tmp_name(dst, "old")
        os.rename(dst, old)
        try:
            os.rename(src, dst)
        except BaseException:
            os.rename(old, dst)  # put the previous content back before reporting the failure
            raise
        fsync_dir(dst.parent)
        _delete(old)
    fsync_dir(dst.parent)
    return dst


def remove_dir(path: str | Path) -> None:
    """Delete a folder so that a crash midway leaves no half-deleted folder under its name.

    The folder is first renamed to a hidden ``new`` name (which :func:`clean_leftovers` deletes), then removed.
    """
    target = Path(path)
    if not target.exists():
        return
    trash = tmp_name(target)
    try:
        os.rename(target, trash)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        return
    _delete(trash)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a hidden sibling file, fsync it and rename it into place."""
    target = Path(path)
    tmp = tmp_name(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))
