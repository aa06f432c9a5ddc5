"""Errors a user can fix, readers of user files that name the file in every failure, and the CLI's one-line report.

Every command of ``sdar`` runs inside :func:`sdar.commands.cli.main`, which turns the errors listed by :func:`user_message`
into one or two lines on stderr (the file, the problem, the fix) and exit status 2; ``sdar --debug`` or
``SDAR_DEBUG=1`` prints the traceback as well. Any other exception is a bug and keeps its traceback.

This module imports only the standard library and PyYAML, so text-only layers (environments, skills) can use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "DEBUG_HINT",
    "InputFileError",
    "NonFiniteWeightsError",
    "ShowTraceback",
    "UserError",
    "read_json",
    "read_text",
    "user_message",
]

DEBUG_HINT = "(run `sdar --debug ...` or set SDAR_DEBUG=1 for the traceback)"
"""Second line of a reported error whose message may not say enough on its own."""


class InputFileError(ValueError):
    """A file the user pointed at is unreadable or malformed; the message names the file and the fix."""


class NonFiniteWeightsError(RuntimeError):
    """The model's weights hold NaN or infinity; nothing was saved (the message names the tensors)."""


def read_text(path: str | Path, *, what: str = "file") -> str:
    """The UTF-8 text of ``path``.

    Raises:
        InputFileError: when the file is missing, is a folder, or is not UTF-8 text (the message names it).
    """
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"{p}: the {what} does not exist; check the path") from None
    except IsADirectoryError:
        raise InputFileError(f"{p}: is a folder, but a {what} was expected; pass the file inside it") from None
    except UnicodeDecodeError as err:
        raise InputFileError(f"{p}: the {what} is not UTF-8 text (byte {err.start}: {err.reason}); "
                             "save it with UTF-8 encoding") from None


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """The parsed JSON of ``path`` (errors as in :func:`read_text`, plus the position of a syntax error)."""
    p = Path(path)
    text = read_text(p, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputFileError(f"{p}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg}); "
                             "fix the syntax (a JSON validator shows the spot)") from None


class UserError(Exception):
    """Mixed into the project's error types that a user can fix from the message alone (a missing package, an
    unreachable server, a bad environment setting): the CLI shows the message without a traceback."""


class ShowTraceback(Exception):
    """Mixed into error types whose traceback is the useful part (a crash inside an environment worker), even
    when they derive from a ``UserError``."""


def _known_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(user-error types, types that are never user errors)."""
    import yaml

    user = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
            ConnectionError, TimeoutError, yaml.YAMLError, NonFiniteWeightsError, UserError)
    return user, (ShowTraceback,)


def user_message(exc: BaseException) -> str | None:
    """The text to show for an error the user can fix, or None for an exception that is a bug.

    Messages of the project's own error types name the file and the fix already; for errors raised by libraries
    on a user's file (a JSON or YAML syntax error, a file that is not UTF-8) the text adds what is known.
    """
    user, never = _known_types()
    if isinstance(exc, never) or not isinstance(exc, (*user, UnicodeDecodeError)):
        return None
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it with UTF-8 encoding"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); fix the file's syntax"
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text or type(exc).__name__
