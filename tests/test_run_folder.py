"""Run folders: a non-empty folder is refused unless --resume or --overwrite, --overwrite deletes only a command's own
files, a resume may not change the run, loss_spec.yaml sits next to config.yaml, and `sdar demo` runs twice."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from sdar.commands import cli
from sdar.config import RunConfig, dump_yaml, load_config
from sdar.runfolder import (COMPARE_LAYOUT, EVAL_LAYOUT, RESUME_MAY_CHANGE, SFT_LAYOUT, TRAIN_LAYOUT, RunFolderError,
                            changed_settings, check_resume, foreign_entries, prepare_folder)
from sdar.runtime import resolve_spec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.yaml"


def _tree(root: Path, files: list[str]) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


RUN_FILES = ["config.yaml", "loss_spec.yaml", "metrics.jsonl", "delta_samples.jsonl", "report.txt",
             "checkpoints/latest", "checkpoints/step_000001/state.json", "tensorboard/events.out",
             "report/report.md", "eval/step_000001/eval.json"]


def test_a_missing_or_empty_folder_is_created_or_used(tmp_path):
    for mode in ("new", "overwrite", "own", "reuse"):
        folder = tmp_path / mode / "deep"
        assert prepare_folder(folder, TRAIN_LAYOUT, mode=mode).is_dir()
        assert prepare_folder(folder, TRAIN_LAYOUT, mode=mode) == folder  # empty: fine again


def test_new_refuses_a_folder_with_files(tmp_path):
    _tree(tmp_path, ["metrics.jsonl"])
    with pytest.raises(RunFolderError, match="not empty.*metrics.jsonl.*--resume.*--overwrite"):
        prepare_folder(tmp_path, TRAIN_LAYOUT, mode="new", resume_option=True)
    with pytest.raises(RunFolderError) as err:
        prepare_folder(tmp_path, EVAL_LAYOUT, mode="new")
    assert "--resume" not in str(err.value) and "--out" in str(err.value)


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        prepare_folder(tmp_path / "f", TRAIN_LAYOUT, mode="overwrite")


def test_overwrite_deletes_the_run_files_only_when_nothing_else_is_there(tmp_path):
    _tree(tmp_path, RUN_FILES + ["notes.txt", "data/games.json"])
    with pytest.raises(RunFolderError, match="data/, notes.txt"):
        prepare_folder(tmp_path, TRAIN_LAYOUT, mode="overwrite")
    assert len(_listing(tmp_path)) == len(RUN_FILES) + 2  # nothing deleted
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "data" / "games.json").unlink()
    (tmp_path / "data").rmdir()
    prepare_folder(tmp_path, TRAIN_LAYOUT, mode="overwrite")
    assert list(tmp_path.iterdir()) == []


def test_compare_reuses_its_own_folder_and_overwrite_clears_it(tmp_path):
    own = ["table.md", "results.json", "success_vs_step.png", "vanilla/seed0/eval.json",
           *[f"grpo/seed0/{f}" for f in RUN_FILES], "sdar/seed1/eval_skills/eval.md"]
    _tree(tmp_path, own)
    assert foreign_entries(tmp_path, COMPARE_LAYOUT) == []
    prepare_folder(tmp_path, COMPARE_LAYOUT, mode="own")
    assert len(_listing(tmp_path)) == len(own)  # reused as it is
    _tree(tmp_path, ["grpo/seed0/mine.txt", "grpo/notes/a.txt", "other/x"])
    with pytest.raises(RunFolderError, match="grpo/notes/, grpo/seed0/mine.txt, other/"):
        prepare_folder(tmp_path, COMPARE_LAYOUT, mode="own")
    for extra in ("grpo/seed0/mine.txt", "grpo/notes/a.txt", "other/x"):
        (tmp_path / extra).unlink()
    (tmp_path / "grpo" / "notes").rmdir()
    (tmp_path / "other").rmdir()
    prepare_folder(tmp_path, COMPARE_LAYOUT, mode="overwrite")
    assert list(tmp_path.iterdir()) == []


def test_sft_layout_covers_a_model_folder(tmp_path):
    _tree(tmp_path, ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                     "sft_report.json", "chat_template.jinja"])
    prepare_folder(tmp_path, SFT_LAYOUT, mode="overwrite")
    assert list(tmp_path.iterdir()) == []


def _cfg(tmp_path: Path, **overrides) -> RunConfig:
    return load_config(SMOKE, overrides={"out_dir": str(tmp_path), **overrides})


def test_resume_may_change_only_the_listed_settings(tmp_path):
    stored = yaml.safe_load(dump_yaml(_cfg(tmp_path)))
    harmless = _cfg(tmp_path / "elsewhere", total_steps=9, eval_every=2, eval_tasks=8, save_every=3, keep_checkpoints=4,
                    device="cpu", resume=True, eval_at_start=True, eval_temperature=0.0, **{"log.jsonl": False,
                                                                                             "log.sample_every": 0,
                                                                                             "sft.epochs": 3})
    assert changed_settings(stored, harmless) == {}
    changed = _cfg(tmp_path, seed=3, **{"algo.method": "grpo", "optim.lr": 1e-3, "env.task_types": ["pick_and_place"]})
    diff = changed_settings(stored, changed)
    assert set(diff) == {"seed", "algo.method", "optim.lr", "env.task_types"}
    assert diff["algo.method"] == ("sdar", "grpo") and diff["env.task_types"] == ([], ["pick_and_place"])
    assert all(not k.startswith(("log.", "total_steps")) for k in diff)
    assert "total_steps" in RESUME_MAY_CHANGE and "log" in RESUME_MAY_CHANGE


def test_a_config_from_before_a_setting_existed_resumes(tmp_path):
    cfg = _cfg(tmp_path)
    stored = yaml.safe_load(dump_yaml(cfg))
    del stored["optim"]["strategy"]  # written before the setting existed: it gets its default
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    check_resume(tmp_path, dataclasses.replace(cfg, resume=True))
    stored["optim"]["renamed_knob"] = 1  # a setting removed since: it shows as a difference
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(RunFolderError, match="optim.renamed_knob: 1 -> '\\(absent\\)'"):
        check_resume(tmp_path, cfg)


def _metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cli_overwrite_and_resume_and_demo_twice(tmp_path, capsys):
    run = tmp_path / "run"
    demo = ["demo", "--config", str(SMOKE), "--out-dir", str(run)]  # the smoke preset: 2 steps
    assert cli.main(demo) == 0
    assert cli.main(demo) == 0  # a second demo replaces the first instead of appending to it
    assert _metric_steps(run) == [0, 1] and (run / "report.txt").is_file()
    spec = yaml.safe_load((run / "loss_spec.yaml").read_text())
    cfg = load_config(run / "config.yaml")
    assert spec["method"] == "sdar" and spec["lr"] == cfg.optim.lr
    assert spec["loss"] == dataclasses.asdict(resolve_spec(cfg))

    train = ["train", "--config", str(SMOKE), "--out-dir", str(run), "--log.sample-every", "0"]
    assert cli.main([*train, "--resume", "--total-steps", "3", "--save-every", "0"]) == 0
    assert _metric_steps(run) == [0, 1, 2]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000001", "step_000002"]
    assert yaml.safe_load((run / "config.yaml").read_text())["total_steps"] == 3

    assert cli.main([*train, "--total-steps", "1", "--overwrite"]) == 0
    assert _metric_steps(run) == [0]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000000"]
    assert not (run / "report.txt").exists() and not (run / "report").exists()
    capsys.readouterr()
