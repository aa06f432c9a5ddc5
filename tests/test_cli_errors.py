"""User errors through the `sdar` entry point: exit status 2, a short message naming the file and the fix, no traceback.

Each case builds its bad input under ``tmp_path`` and runs ``sdar.commands.cli.main(argv)`` in this process; a few run the
real command in a subprocess. ``--debug`` / ``SDAR_DEBUG=1`` bring the traceback back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from sdar.commands import cli
from sdar.config import dump_yaml, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_tiny.yaml")
QUIET = ["--log.sample-every", "0", "--total-steps", "1"]


@dataclass(frozen=True)
class Case:
    """One bad input: ``build(tmp_path)`` writes what it needs and returns the argv; ``expect`` are message parts
    (``{tmp}`` stands for tmp_path)."""

    name: str
    build: Callable[[Path], list[str]]
    expect: tuple[str, ...]


def _file(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _preset(tmp: Path, content: str | bytes) -> list[str]:
    return ["config", "--config", str(_file(tmp, "preset.yaml", content))]


def _train(tmp: Path, *extra: str) -> list[str]:
    return ["train", "--config", SMOKE, "--out-dir", str(tmp / "run"), *QUIET, *extra]


def _skills(tmp: Path, mapping: str, files: dict[str, bytes] | None = None) -> list[str]:
    folder = tmp / "skills"
    _file(folder, "skill_mapping.json", mapping)
    for name, data in (files or {}).items():
        _file(folder, name, data)
    return _train(tmp, "--teacher.source", "skills", "--teacher.skills-dir", str(folder))


def _stored_run(tmp: Path) -> Path:
    """A run folder as `sdar train` leaves it (its config.yaml is all a resume check reads)."""
    run = tmp / "run"
    cfg = load_config(SMOKE, overrides={"out_dir": str(run), "log.sample_every": 0, "total_steps": 1})
    _file(run, "config.yaml", dump_yaml(cfg))
    return run


def _resume_changed(tmp: Path) -> list[str]:
    _stored_run(tmp)
    return _train(tmp, "--resume", "--algo.method", "grpo", "--rollout.group-size", "4")


def _non_empty_run(tmp: Path) -> list[str]:
    _stored_run(tmp)
    return _train(tmp)


def _overwrite_foreign(tmp: Path) -> list[str]:
    run = _stored_run(tmp)
    _file(run, "my_notes.txt", "keep me")
    return [*_train(tmp), "--overwrite"]


def _resume_and_overwrite(tmp: Path) -> list[str]:
    _stored_run(tmp)
    return [*_train(tmp, "--resume"), "--overwrite"]


def _eval_non_empty(tmp: Path) -> list[str]:
    _file(tmp, "ev/eval.json", "{}")
    return ["eval", "--config", SMOKE, "--out", str(tmp / "ev")]


def _sft_non_empty(tmp: Path) -> list[str]:
    _file(tmp, "sft/config.json", "{}")
    return ["sft", "--model.name", "tiny-random", "--sft.out-dir", str(tmp / "sft")]


def _compare_foreign(tmp: Path) -> list[str]:
    _file(tmp, "cmp/notes.txt", "mine")
    return ["compare", "--config", SMOKE, "--methods", "grpo", "--out", str(tmp / "cmp")]


def _webshop_json(tmp: Path) -> list[str]:
    _file(tmp, "shop/products.json", '{"products": [')
    _file(tmp, "shop/goals.json", "{}")
    return ["envs", "check", "webshop", "--data-dir", str(tmp / "shop")]


def _search_json(tmp: Path) -> list[str]:
    _file(tmp, "qa/nq/test.json", '[{"question": "Who?",')
    return ["envs", "check", "search", "--data-dir", str(tmp / "qa")]


def _search_utf8(tmp: Path) -> list[str]:
    _file(tmp, "qa/nq/test.jsonl", b'{"question": "\xff\xfe"}\n')
    return ["envs", "check", "search", "--data-dir", str(tmp / "qa")]


def _broken_model(tmp: Path) -> list[str]:
    _file(tmp, "model/config.json", "{not json")
    return _train(tmp, "--model.name", str(tmp / "model"))


GOOD_MAPPING = json.dumps({"skill_files": {"heat": "heat.md"}, "task_to_skill": {}, "task_keywords": {}})

CASES = [
    Case("yaml_syntax", lambda t: _preset(t, "algo:\n  method: sdar\n lr: 1\n"), ("{tmp}", "YAML syntax error", "line 3")),
    Case("unknown_key", lambda t: _preset(t, "algo:\n  gate_betta: 2\n"), ("{tmp}", "gate_betta", "did you mean 'gate_beta'")),
    Case("wrong_type", lambda t: _preset(t, "rollout:\n  group_size: many\n"), ("rollout.group_size", "integer")),
    Case("not_a_mapping", lambda t: _preset(t, "- a\n- b\n"), ("{tmp}", "top level is a list")),
    Case("preset_not_utf8", lambda t: _preset(t, b"seed: 1\n# \xff\xfe\n"), ("{tmp}", "not UTF-8")),
    Case("preset_is_folder", lambda t: ["config", "--config", str(t)], ("{tmp}", "is a folder")),
    Case("missing_preset", lambda t: ["train", "--config", str(t / "nope.yaml")], ("nope.yaml", "does not exist")),
    Case("config_without_file", lambda t: ["train", "--config"], ("--config needs a file name",)),
    Case("inf_in_yaml", lambda t: _preset(t, "optim:\n  lr: .inf\n"), ("optim.lr", "finite number", "preset.yaml")),
    Case("nan_in_yaml", lambda t: _preset(t, "env:\n  invalid_penalty: .nan\n"), ("env.invalid_penalty", "finite")),
    Case("nan_on_command_line", lambda t: ["config", "--rollout.temperature", "nan"], ("rollout.temperature", "finite")),
    Case("inf_lr_train", lambda t: _train(t, "--optim.lr", "inf"), ("optim.lr", "finite number")),
    Case("lr_too_large", lambda t: ["config", "--optim.lr", "5"], ("optim.lr must be < 1",)),
    Case("bad_combination", lambda t: ["config", "--teacher.source", "none"], ("teacher.source", "algo.method=grpo")),
    Case("missing_model_folder", lambda t: _train(t, "--model.name", str(t / "no_model")),
         ("no model folder", "no_model", "sdar model prepare")),
    Case("broken_model_folder", _broken_model, ("could not load", "model")),
    Case("unknown_model_alias", lambda t: ["model", "prepare", "gpt-17"], ("unknown model alias 'gpt-17'", "known aliases")),
    Case("malformed_skill_mapping", lambda t: _skills(t, '{"skill_files": {'), ("skill_mapping.json", "invalid JSON")),
    Case("skill_mapping_missing_key", lambda t: _skills(t, '{"skill_files": {}}'), ("skill_mapping.json", "task_to_skill")),
    Case("skill_file_not_utf8", lambda t: _skills(t, GOOD_MAPPING, {"heat.md": b"\xff\xfe heat it\n"}),
         ("heat.md", "not UTF-8", "Save it with UTF-8")),
    Case("missing_skill_folder", lambda t: _train(t, "--teacher.source", "skills", "--teacher.skills-dir",
                                                  str(t / "nope")), ("skill folder does not exist",)),
    Case("missing_alfworld_data", lambda t: _train(t, "--env.name", "alfworld", "--env.data-dir", str(t / "games")),
         ("ALFWorld", "games")),
    Case("webshop_catalogue_json", _webshop_json, ("products.json", "invalid JSON", "line 1")),
    Case("search_questions_json", _search_json, ("test.json", "invalid JSON")),
    Case("search_questions_not_utf8", _search_utf8, ("test.jsonl", "not UTF-8")),
    Case("resume_changes_the_run", _resume_changed,
         ("--resume", "algo.method: 'sdar' -> 'grpo'", "rollout.group_size: 2 -> 4", "--overwrite")),
    Case("non_empty_out_dir", _non_empty_run, ("not empty", "config.yaml", "--resume", "--overwrite")),
    Case("overwrite_keeps_foreign_files", _overwrite_foreign, ("my_notes.txt", "does not write")),
    Case("resume_and_overwrite", _resume_and_overwrite, ("give only one",)),
    Case("eval_out_not_empty", _eval_non_empty, ("sdar eval", "not empty", "--overwrite")),
    Case("eval_missing_run", lambda t: ["eval", str(t / "no_run")], ("no_run", "neither a checkpoint folder")),
    Case("sft_out_not_empty", _sft_non_empty, ("sdar sft", "not empty", "--overwrite")),
    Case("sft_nan_lr", lambda t: ["sft", "--sft.lr", "nan"], ("sft.lr must be a finite number",)),
    Case("sft_unknown_key", lambda t: ["sft", "--config", str(_file(t, "s.yaml", "sft:\n  epoch: 2\n"))],
         ("s.yaml", "did you mean 'epochs'")),
    Case("compare_foreign_folder", _compare_foreign, ("notes.txt", "does not write", "sdar compare")),
    Case("report_missing_run", lambda t: ["report", str(t / "none")], ("metrics.jsonl", "does not exist")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_user_error_is_one_short_message(case: Case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SDAR_DEBUG", raising=False)
    argv = case.build(tmp_path)
    code = cli.main(argv)
    out = capsys.readouterr()
    err = out.err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in out.err + out.out
    for part in case.expect:
        assert part.replace("{tmp}", str(tmp_path)) in err, (part, err)
    lines = [line for line in err.splitlines() if not line.startswith("INFO ")]
    assert 1 <= len(lines) <= 3, err  # the message (and a second problem or the --debug hint)


def test_there_are_enough_cases():
    assert len(CASES) >= 25


def test_non_finite_refusal_leaves_no_run_folder(tmp_path, capsys):
    assert cli.main(_train(tmp_path, "--optim.lr", "nan")) == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, tmp_path, capsys, monkeypatch):
    argv = _preset(tmp_path, "optim:\n  lr: .inf\n")
    if how == "flag":
        monkeypatch.delenv("SDAR_DEBUG", raising=False)
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("SDAR_DEBUG", "1")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err and "optim.lr must be a finite number" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(argv):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli, "cmd_methods", broken)
    with pytest.raises(KeyError):
        cli.main(["methods"])


@pytest.mark.parametrize("argv", [["config", "--config", "{tmp}/bad.yaml"], ["train", "--config", "{tmp}/missing.yaml"]])
def test_the_installed_command_exits_2_without_traceback(argv, tmp_path):
    (tmp_path / "bad.yaml").write_text("algo: [\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "sdar.commands.cli", *[a.replace("{tmp}", str(tmp_path)) for a in argv]],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and str(tmp_path) in res.stderr
