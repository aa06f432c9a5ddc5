"""Loads a skill library (markdown strategy files plus a ``skill_mapping.json``) into frozen records.

Folder layout::

    <folder>/
        skill_mapping.json
        general_skills.md          # general skills, always given (see "general" below)
        pick_and_place.md          # one markdown file per task-specific skill
        ...

``skill_mapping.json`` is one JSON object with these keys:

- ``skill_files`` (required): skill name -> file name in the folder, e.g. ``{"heat": "heat.md"}``. The order of
  this object is the library order (used by full retrieval and to break keyword ties).
- ``task_to_skill`` (required): task type -> skill name, e.g. ``{"pick_heat_then_place_in_recep": "heat"}``.
- ``task_keywords`` (required): skill name -> list of keywords or short phrases matched against the goal text
  when the task type is not in ``task_to_skill``.
- ``general`` (optional): file name, or list of file names, of the general skills that are always given before
  any task-specific skill. When the key is absent, ``general_skills.md`` is used if the folder has one, and there
  are no general skills otherwise. ``"general": []`` turns general skills off explicitly.

File names must be plain names inside the folder (no sub-folders). Every referenced file must exist and hold
non-blank UTF-8 text. Keywords are stored lower-cased and stripped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

MAPPING_FILE = "skill_mapping.json"
"""Name of the mapping file inside a skill folder."""
DEFAULT_GENERAL_FILE = "general_skills.md"
"""General skills file used when the mapping has no ``general`` key."""
REQUIRED_KEYS = ("skill_files", "task_to_skill", "task_keywords")
"""Keys ``skill_mapping.json`` must have."""


class SkillLibraryError(ValueError):
    """A skill folder or its ``skill_mapping.json`` is missing or malformed."""


@dataclass(frozen=True)
class SkillFile:
    """One markdown skill file."""

    name: str
    """Skill name (the ``skill_files`` key; for general files the file stem)."""
    text: str
    """File content with surrounding whitespace stripped; never empty."""
    path: Path
    """Where the text was read from."""


@dataclass(frozen=True)
class SkillLibrary:
    """All skills of one environment and the rules that map tasks to them."""

    general: tuple[SkillFile, ...]
    """General skills, always given first (may be empty)."""
    files: Mapping[str, SkillFile]
    """Task-specific skills by skill name, in ``skill_files`` order."""
    task_to_skill: Mapping[str, str]
    """Task type -> skill name (every value is a key of ``files``)."""
    task_keywords: Mapping[str, tuple[str, ...]]
    """Skill name -> lower-cased keywords for matching the goal text, in mapping order."""

    def resolve_task_type(self, task_type: str) -> str | None:
        """The ``task_to_skill`` key that ``task_type`` refers to, or None.

        An exact key wins; otherwise the longest key contained in ``task_type`` (so a game path such as
        ``.../pick_heat_then_place_in_recep-Apple-None-Fridge-1/trial_1`` resolves to its task type).
        """
        if not task_type:
            return None
        if task_type in self.task_to_skill:
            return task_type
        contained = [key for key in self.task_to_skill if key and key in task_type]
        if not contained:
            return None
        return max(contained, key=len)  # max keeps the first of equal lengths: mapping order


def _fail(path: Path, key: str | None, problem: str, fix: str) -> SkillLibraryError:
    where = f"{path}" if key is None else f"{path}, key {key!r}"
    return SkillLibraryError(f"{where}: {problem}. {fix}")


def _read_mapping(folder: Path) -> dict[str, Any]:
    mapping_path = folder / MAPPING_FILE
    if not mapping_path.is_file():
        raise _fail(mapping_path, None, "the skill mapping file is missing",
                    f"Create {MAPPING_FILE} with the keys {list(REQUIRED_KEYS)} (see sdar/skills/library.py)")
    try:
        raw = json.loads(mapping_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise _fail(mapping_path, None, f"the file is not UTF-8 text (byte {err.start}: {err.reason})",
                    "Save it with UTF-8 encoding") from None
    except json.JSONDecodeError as err:
        raise _fail(mapping_path, None, f"invalid JSON at line {err.lineno} column {err.colno} ({err.msg})",
                    "Fix the JSON syntax") from err
    if not isinstance(raw, dict):
        raise _fail(mapping_path, None, f"the top level is a {type(raw).__name__}, not an object",
                    f"Make it one JSON object with the keys {list(REQUIRED_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise _fail(mapping_path, key, "required key is missing", f"Add {key!r} (an object, may be empty)")
        if not isinstance(raw[key], dict):
            raise _fail(mapping_path, key, f"expected an object, got {type(raw[key]).__name__}",
                        "Write it as a JSON object")
    return raw


def _read_skill_file(folder: Path, mapping_path: Path, key: str, name: str, file_name: Any) -> SkillFile:
    if not isinstance(file_name, str) or not file_name or Path(file_name).name != file_name:
        raise _fail(mapping_path, key, f"entry {name!r} has file name {file_name!r}",
                    "Give a plain file name inside the skill folder, e.g. \"heat.md\"")
    path = folder / file_name
    if not path.is_file():
        raise _fail(mapping_path, key, f"entry {name!r} refers to {file_name!r}, which does not exist in {folder}",
                    "Add the file or correct the file name")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as err:
        raise _fail(path, key, f"skill file of entry {name!r} is not UTF-8 text (byte {err.start}: {err.reason})",
                    "Save it with UTF-8 encoding") from None
    if not text:
        raise _fail(path, key, f"skill file of entry {name!r} is empty", "Write the skill text or drop the entry")
    return SkillFile(name=name, text=text, path=path)


def _general_file_names(folder: Path, mapping_path: Path, raw: dict[str, Any]) -> list[str]:
    if "general" not in raw:
        return [DEFAULT_GENERAL_FILE] if (folder / DEFAULT_GENERAL_FILE).is_file() else []
    value = raw["general"]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(mapping_path, "general", f"expected a file name or a list of file names, got {value!r}",
                    f"Write e.g. \"general\": [\"{DEFAULT_GENERAL_FILE}\"]")
    return names


def _str_map(mapping_path: Path, key: str, value: dict[str, Any]) -> dict[str, str]:
    for k, v in value.items():
        if not isinstance(v, str) or not v:
            raise _fail(mapping_path, key, f"entry {k!r} has value {v!r}", "Every value must be a non-empty string")
    return dict(value)


def load_skill_library(folder: Path) -> SkillLibrary:
    """Reads a skill folder (layout in the module docstring).

    Args:
        folder: the folder holding ``skill_mapping.json`` and the markdown skill files.

    Returns:
        The loaded library.

    Raises:
        SkillLibraryError: when the folder or mapping is missing, the JSON is invalid, a required key is missing
            or of the wrong type, an entry refers to a missing skill or file, or a skill file is empty. The
            message names the file and the key.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(folder, None, "the skill folder does not exist",
                    "Point teacher.skills_dir at a folder with skill_mapping.json, or leave it unset for the "
                    "built-in skills")
    raw = _read_mapping(folder)
    mapping_path = folder / MAPPING_FILE

    skill_files = _str_map(mapping_path, "skill_files", raw["skill_files"])
    files = {name: _read_skill_file(folder, mapping_path, "skill_files", name, fn) for name, fn in skill_files.items()}
    general = tuple(
        _read_skill_file(folder, mapping_path, "general", Path(fn).stem, fn)
        for fn in _general_file_names(folder, mapping_path, raw)
    )

    task_to_skill = _str_map(mapping_path, "task_to_skill", raw["task_to_skill"])
    for task_type, skill in task_to_skill.items():
        if skill not in files:
            raise _fail(mapping_path, "task_to_skill",
                        f"task type {task_type!r} maps to skill {skill!r}, which is not in skill_files",
                        f"Use one of {sorted(files)} or add {skill!r} to skill_files")

    task_keywords: dict[str, tuple[str, ...]] = {}
    for skill, words in raw["task_keywords"].items():
        if skill not in files:
            raise _fail(mapping_path, "task_keywords", f"keywords given for unknown skill {skill!r}",
                        f"Use one of {sorted(files)} or add {skill!r} to skill_files")
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise _fail(mapping_path, "task_keywords", f"entry {skill!r} is {words!r}",
                        "Give a list of non-empty strings, e.g. [\"heat\", \"hot\"]")
        task_keywords[skill] = tuple(w.strip().lower() for w in words)

    return SkillLibrary(
        general=general,
        files=MappingProxyType(files),
        task_to_skill=MappingProxyType(task_to_skill),
        task_keywords=MappingProxyType(task_keywords),
    )


def builtin_skill_dir(env_name: str) -> Path:
    """Folder of the skills shipped with the package for ``env_name`` (e.g. ``"toy"`` or ``"alfworld"``).

    Raises:
        SkillLibraryError: when no built-in skills exist for ``env_name``.
    """
    data = Path(__file__).resolve().parent / "data"
    folder = data / env_name
    if not env_name or not (folder / MAPPING_FILE).is_file():
        available = sorted(p.name for p in data.iterdir() if (p / MAPPING_FILE).is_file()) if data.is_dir() else []
        raise SkillLibraryError(
            f"{folder}: no built-in skills for environment {env_name!r}. "
            f"Use one of {available} or set teacher.skills_dir to your own skill folder"
        )
    return folder
