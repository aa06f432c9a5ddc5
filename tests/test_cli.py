"""The `sdar` command: help texts, subcommands, config printing, honest 'not available' exits."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from sdar.commands import cli
from sdar.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command(capsys):
    code, _, err = run(["trian"], capsys)
    assert code == 2 and "unknown command 'trian'" in err


def _field_docs(cls, prefix=""):
    """(flag, first words of the attribute docstring) for every leaf option of the config tree."""
    import ast
    import inspect

    src = ast.parse(inspect.getsource(cls))
    docs = {}
    body = src.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = nxt.value.value
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _field_docs(hints[f.name], prefix=f"{prefix}{f.name}.")
        else:
            yield flag, docs.get(f.name)


def test_train_help_shows_every_option_with_its_doc():
    res = subprocess.run([sys.executable, "-m", "sdar.commands.cli", "train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    fields = list(_field_docs(RunConfig))
    assert len(fields) > 50
    for flag, doc in fields:
        assert flag in text, f"{flag} missing from `sdar train --help`"
        assert doc, f"{flag} has no attribute docstring"
        first = " ".join(doc.split()[:4])
        assert first in text, f"doc of {flag} ({first!r}) missing from help"


@pytest.mark.parametrize("name", ["eval", "compare", "report"])
def test_analysis_commands_without_arguments_say_what_to_pass(name, capsys):
    try:
        code = cli.main([name])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.strip()


def test_config_prints_resolved_yaml_with_overrides(capsys):
    code, out, _ = run(["config", "--config", str(ROOT / "configs/smoke_tiny.yaml"), "--algo.method", "grpo",
                        "--rollout.group-size", "4"], capsys)
    assert code == 0
    data = yaml.safe_load(out)
    assert data["algo"]["method"] == "grpo" and data["rollout"]["group_size"] == 4
    assert data["model"]["name"] == "tiny-random"  # from the preset


def test_invalid_combination_exits_with_the_fix(capsys):
    code, _, err = run(["config", "--teacher.source", "none"], capsys)
    assert code == 2 and "teacher.source" in err and "algo.method=grpo" in err


def test_bad_preset_key_exits_with_the_key(tmp_path, capsys):
    p = tmp_path / "x.yaml"
    p.write_text("algo:\n  gate_betta: 2\n")
    code, _, err = run(["config", "--config", str(p)], capsys)
    assert code == 2 and "gate_beta" in err and str(p) in err


def test_methods_table_lists_every_method_with_defaults(capsys):
    code, out, _ = run(["methods"], capsys)
    assert code == 0
    for name in ("grpo", "skill_grpo", "opsd", "grpo_opsd", "skill_sd", "rlsd", "sdar"):
        assert f"\n{name} " in out or out.startswith(name)
    sdar_row = next(line for line in out.splitlines() if line.startswith("sdar "))
    assert "0.01" in sdar_row and "1e-06" in sdar_row and " 5 " in f" {sdar_row} "


def test_envs_list(capsys):
    code, out, _ = run(["envs", "list"], capsys)
    assert code == 0 and "toy" in out and "available" in out


def test_envs_generate_unavailable(capsys):
    code, _, err = run(["envs", "generate", "webshop", "--n", "2"], capsys)
    assert code == cli.NOT_AVAILABLE and "not available" in err


def test_envs_generate_and_check_alfworld(tmp_path, capsys):
    code, _, _ = run(["envs", "generate", "alfworld", "--n", "2", "--seed", "3", "--out", str(tmp_path),
                      "--task-types", "look_at_obj_in_light"], capsys)
    assert code == 0
    assert len(list((tmp_path / "train").glob("*/*/game.tw-pddl"))) == 2
    code, out, _ = run(["envs", "check", "alfworld", "--data-dir", str(tmp_path), "--tasks", "2"], capsys)
    assert code == 0 and "check_env passed on 2 tasks" in out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    try:
        code = cli.main([name, "--help"])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr().out
    assert code == 0 and out.strip(), name
