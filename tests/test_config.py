"""Typed configs: strict YAML loading, type checks, validation messages, presets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sdar.config import (
    ConfigError,
    RunConfig,
    from_dict,
    load_config,
    nest_dotted,
    validate,
)

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))  # RL and SFT presets alike


def test_presets_exist():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_preset_loads_and_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_defaults_are_the_paper_settings():
    cfg = RunConfig()
    assert cfg.algo.method == "sdar"
    assert (cfg.rollout.tasks_per_step, cfg.rollout.group_size) == (16, 8)
    assert cfg.total_steps == 150 and cfg.env.history_length == 2 and cfg.env.invalid_penalty == 0.1
    assert cfg.rollout.temperature == 1.0 and cfg.rollout.top_k == 0 and cfg.rollout.top_p == 1.0
    assert cfg.eval_temperature == 0.4


def test_win_reward_defaults_to_the_environment_and_invalid_rule_to_the_reference():
    from sdar.envs.registry import default_win_reward

    cfg = RunConfig()
    assert cfg.env.win_reward is None and cfg.env.invalid_rule == "format"
    assert [default_win_reward(n) for n in ("toy", "alfworld", "webshop", "search")] == [10.0, 10.0, 10.0, 1.0]
    with pytest.raises(ConfigError, match="env.invalid_rule"):
        from_dict(RunConfig, {"env": {"invalid_rule": "strict"}})
    assert from_dict(RunConfig, {"env": {"invalid_rule": "admissible", "win_reward": 2}}).env.win_reward == 2.0
    search = load_config(PAPER / "search.yaml")  # the paper's EM reward in {0, 1}, as before
    assert search.env.win_reward in (None, 1.0) and default_win_reward("search") == 1.0


@pytest.mark.parametrize("env", ["alfworld", "webshop", "search"])
def test_paper_teacher_budget_holds_the_student_prompt_and_the_longest_skill_text(env: str):
    from sdar.envs.registry import prompt_template
    from sdar.skills.library import builtin_skill_dir, load_skill_library
    from sdar.skills.retrieval import format_skill_text

    cfg = load_config(PAPER / f"{env}.yaml")
    library = load_skill_library(builtin_skill_dir(env))
    longest = max(len(format_skill_text(library.general, [f]).encode()) for f in library.files.values())
    block = len(prompt_template(env).privileged.format(text="").encode()) + 2  # its frame and the blank line
    # a byte-level BPE token (Qwen's) holds at least one byte, so the bytes bound the tokens of the added text
    assert cfg.teacher.max_prompt_tokens >= cfg.rollout.max_prompt_tokens + longest + block


def test_configs_are_frozen():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.algo.method = "grpo"  # type: ignore[misc]


def test_unknown_key_names_the_key_and_the_closest_valid_one():
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"algo": {"gate_betta": 3.0}})
    assert "algo.gate_betta" in str(e.value) and "did you mean 'gate_beta'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"rollout": {"group_sise": 4}})
    assert "rollout.group_sise" in str(e.value) and "'group_size'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"totl_steps": 4})
    assert "'total_steps'" in str(e.value)


def test_unknown_key_in_a_yaml_file(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(p)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"seed": "one"}, "seed: expected an integer"),
        ({"seed": True}, "seed: expected an integer"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"algo": {"method": "ppo"}}, "algo.method: 'ppo' is not one of"),
        ({"log": {"jsonl": "yes"}}, "log.jsonl: expected true or false"),
        ({"algo": "sdar"}, "algo: expected a mapping"),
    ],
)
def test_type_errors_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, data)
    assert fragment in str(e.value)


def test_ints_are_accepted_for_floats_and_none_for_optionals():
    cfg = from_dict(RunConfig, {"optim": {"lr": 1}, "algo": {"gate_beta": None, "aux_coef": 0}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.algo.gate_beta is None and cfg.algo.aux_coef == 0.0


def test_overrides_apply_on_top_of_a_preset(tmp_path: Path):
    p = tmp_path / "p.yaml"
    p.write_text("rollout:\n  group_size: 4\nalgo:\n  method: grpo\n")
    cfg = load_config(p, overrides={"rollout.tasks_per_step": 3, "seed": 7})
    assert (cfg.rollout.group_size, cfg.rollout.tasks_per_step, cfg.seed, cfg.algo.method) == (4, 3, 7, "grpo")


def test_nest_dotted():
    assert nest_dotted({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}


def _invalid(**sections) -> str:
    cfg = from_dict(RunConfig, sections)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    return str(e.value)


def test_distillation_without_privileged_context_is_rejected_with_the_fix():
    msg = _invalid(algo={"method": "sdar"}, teacher={"source": "none"})
    assert "teacher.source" in msg and "algo.method=grpo" in msg
    for method in ("opsd", "grpo_opsd", "skill_sd", "rlsd"):
        assert "privileged teacher" in _invalid(algo={"method": method}, teacher={"source": "none"})


def test_grpo_without_teacher_is_fine():
    validate(from_dict(RunConfig, {"algo": {"method": "grpo"}, "teacher": {"source": "none"}}))


def test_source_must_exist_for_the_environment():
    msg = _invalid(teacher={"source": "gold_answer"})
    assert "gold_answer" in msg and "expert_plan" in msg


def test_group_of_one_is_rejected():
    assert "group_size >= 2" in _invalid(rollout={"group_size": 1})


def test_vllm_backend_is_accepted_alone_and_with_fsdp():
    validate(from_dict(RunConfig, {"rollout": {"backend": "vllm"}}))  # no error
    validate(from_dict(RunConfig, {"rollout": {"backend": "vllm"}, "optim": {"strategy": "fsdp"}}))  # one engine a rank


def test_teacher_budget_must_hold_the_student_prompt():
    msg = _invalid(rollout={"max_prompt_tokens": 2048}, teacher={"max_prompt_tokens": 1024})
    assert "teacher.max_prompt_tokens" in msg and "raise it" in msg


def test_several_problems_are_reported_together():
    msg = _invalid(total_steps=0, optim={"ppo_epochs": 0}, rollout={"temperature": 0.0})
    assert "total_steps" in msg and "optim.ppo_epochs" in msg and "rollout.temperature" in msg


@pytest.mark.parametrize(
    "sections, fragment",
    [
        ({"algo": {"dual_clip": 1.0}}, "algo.dual_clip must be > 1"),
        ({"algo": {"aux_coef": -0.1}}, "algo.aux_coef must be >= 0"),
        ({"algo": {"gate_beta": -1.0}}, "algo.gate_beta"),
        ({"algo": {"method": "opsd", "pg_coef": 1.0}}, "distillation term alone"),
        ({"algo": {"method": "skill_grpo"}, "teacher": {"source": "expert_plan"}}, "teacher.source=skills"),
        ({"optim": {"lr": -1.0}}, "optim.lr must be > 0"),
        ({"optim": {"warmup_ratio": 1.0}}, "optim.warmup_ratio"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"rollout": {"view": "conversation"}, "algo": {"advantage": "gigpo"}}, "rollout.view=per_turn"),
    ],
)
def test_bad_values(sections, fragment):
    assert fragment in _invalid(**sections)


def test_missing_config_file_names_the_presets_folder(tmp_path: Path):
    with pytest.raises(ConfigError, match="configs/"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "sft").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_sft_presets_are_run_configs_with_an_sft_section(path: Path):
    import yaml

    cfg = load_config(path)
    assert "sft" in yaml.safe_load(path.read_text()) and cfg.sft.epochs >= 1 and cfg.sft.out_dir != "runs/sft"


def test_a_section_key_at_the_top_level_is_shown_under_its_section(tmp_path: Path):
    preset = tmp_path / "p.yaml"
    preset.write_text("max_turns: 8\n")
    with pytest.raises(ConfigError, match="did you mean 'env.max_turns'"):
        load_config(preset)
    preset.write_text("optim:\n  lrr: 1\n")  # inside a section: the closest key of that section
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_config(preset)
