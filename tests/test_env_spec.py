"""Tests for the environment specs and their registry: every shipped spec passes ``check_env_spec``, a broken spec
is reported with a clear message, lookups suggest the closest name, the config's copy of the per-environment rules
matches the specs, and the prompt layer stays independent of the environments."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from sdar import config
from sdar.envs.base import EnvUnavailable
from sdar.envs.checker import check_env_registry, check_env_spec
from sdar.envs.registry import (
    ENV_NAMES,
    ENV_SPECS,
    WIN_REWARDS,
    default_win_reward,
    get_env_spec,
    get_parser,
    make_env_factory,
    prompt_template,
)
from sdar.envs.spec import EnvSpec
from sdar.prompts.parse import ParsedAction, parse_action
from sdar.prompts.render import GENERIC_TEMPLATE, build_context, render_user_message

ROOT = Path(__file__).resolve().parents[1]
TOY = get_env_spec("toy")


def test_the_registry_lists_every_environment_once_and_passes_the_spec_checks() -> None:
    assert ENV_NAMES == ("toy", "alfworld", "webshop", "search")
    check_env_registry(ENV_SPECS)
    for spec in ENV_SPECS:
        assert get_env_spec(spec.name) is spec
        check_env_spec(spec, key=spec.name)


@pytest.mark.parametrize("name", ["toy", "webshop", "search"])
def test_specs_build_their_environment_and_parse_the_experts_first_action(name: str) -> None:
    check_env_spec(get_env_spec(name), live=True)


def test_alfworld_spec_on_generated_games(tmp_path: Path) -> None:
    from sdar.envs.alfworld import generate_games

    generate_games(tmp_path, n=1, seed=5, split="train", task_types=("look_at_obj_in_light",))
    check_env_spec(get_env_spec("alfworld"), live=True, data_dir=str(tmp_path))


def test_unknown_name_suggests_the_closest_one() -> None:
    with pytest.raises(EnvUnavailable, match=r"unknown environment 'tyo'; did you mean 'toy'\? known: toy, alfworld"):
        get_env_spec("tyo")
    with pytest.raises(EnvUnavailable, match="did you mean 'webshop'"):
        make_env_factory("webshp")
    with pytest.raises(EnvUnavailable, match=r"unknown environment 'zzz'; known:"):
        get_env_spec("zzz")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"default_win_reward": 0.0}, "default_win_reward must be a finite number > 0"),
        ({"default_win_reward": float("nan")}, "default_win_reward must be a finite number > 0"),
        ({"privileged_sources": ()}, "privileged_sources must be a non-empty tuple"),
        ({"privileged_sources": ("skills", "none")}, "lists 'none'"),
        ({"name": "Toy Game"}, "non-empty lower-case word"),
        ({"default_expert": "oracle"}, "default_expert 'oracle' is not one of the experts"),
        ({"reply_format": "<action>x</action>"}, "must contain the {action} placeholder"),
        ({"parser": lambda text, admissible: ParsedAction("look", True, "ok")}, "accepted a reply without any tag"),
        ({"template": dataclasses.replace(TOY.template, task="Goal: {objective}")}, "template does not render"),
        ({"compact_template": dataclasses.replace(TOY.template, privileged="Plan follows.")},
         "compact_template drops"),
        ({"eval_columns": dataclasses.replace(TOY.eval_columns, metrics="score")}, "needs an episode_scores"),
    ],
)
def test_a_broken_spec_fails_with_a_clear_message(change: dict[str, object], message: str) -> None:
    broken = dataclasses.replace(TOY, **change)
    with pytest.raises(AssertionError, match="check_env_spec") as err:
        check_env_spec(broken)
    assert message in str(err.value)


def test_registry_key_must_be_the_name_and_names_must_be_distinct() -> None:
    with pytest.raises(AssertionError, match="registered as 'household' but named 'toy'"):
        check_env_spec(TOY, key="household")
    with pytest.raises(AssertionError, match=r"\['toy'\] are registered more than once"):
        check_env_registry((TOY, dataclasses.replace(TOY, default_win_reward=5.0)))
    with pytest.raises(AssertionError, match="expected an EnvSpec"):
        check_env_spec("toy")  # type: ignore[arg-type]


def test_live_check_catches_a_parser_that_disagrees_with_the_expert() -> None:
    def shouting(text: str, admissible: object) -> ParsedAction:
        parsed = parse_action(text, None)
        return dataclasses.replace(parsed, action=parsed.action + " now") if parsed.valid else parsed

    with pytest.raises(AssertionError, match="parser does not give back the expert's first action"):
        check_env_spec(dataclasses.replace(TOY, parser=shouting), live=True)
    with pytest.raises(AssertionError, match="TextEnv.name must equal the spec's name"):
        check_env_spec(dataclasses.replace(TOY, name="toy2"), live=True)


def test_config_validation_reads_the_specs(monkeypatch) -> None:
    """The configuration keeps no copy of the per-environment facts: a spec registered in the registry alone is a
    valid env.name, with its own privileged sources and template styles."""
    from sdar.envs import registry

    extra = dataclasses.replace(TOY, name="toy_variant", privileged_sources=("skills", "my_hint"),
                                compact_template=None)
    monkeypatch.setattr(registry, "_BY_NAME", {**registry._BY_NAME, "toy_variant": extra})
    monkeypatch.setattr(registry, "ENV_NAMES", (*registry.ENV_NAMES, "toy_variant"))
    cfg = config.load_config(overrides={"env.name": "toy_variant", "teacher.source": "my_hint"})
    assert cfg.env.name == "toy_variant"
    with pytest.raises(config.ConfigError, match=r"teacher.source='expert_plan' does not exist for env 'toy_variant'"):
        config.load_config(overrides={"env.name": "toy_variant", "teacher.source": "expert_plan"})
    with pytest.raises(config.ConfigError, match="env.prompt_style=compact exists for toy and alfworld only"):
        config.load_config(overrides={"env.name": "toy_variant", "teacher.source": "my_hint",
                                      "env.prompt_style": "compact"})
    with pytest.raises(config.ConfigError, match=r"env.name='nowhere' is not available in this version"):
        config.load_config(overrides={"env.name": "nowhere"})


def test_thin_wrappers_read_the_specs() -> None:
    assert WIN_REWARDS == {"toy": 10.0, "alfworld": 10.0, "webshop": 10.0, "search": 1.0}
    assert default_win_reward("search") == 1.0 and default_win_reward("not_registered") == 10.0
    assert get_parser("search") is get_env_spec("search").parser and get_parser("elsewhere") is parse_action
    assert prompt_template("webshop") is get_env_spec("webshop").template
    assert prompt_template("toy", "compact") is TOY.compact_template
    assert prompt_template("not_registered") is GENERIC_TEMPLATE
    with pytest.raises(ValueError, match=r"compact exists for \['alfworld', 'toy'\]"):
        prompt_template("search", "compact")
    with pytest.raises(ValueError, match="retriever_url is for the search environment only, not 'toy'"):
        make_env_factory("toy", retriever_url="http://127.0.0.1:1/retrieve")


@pytest.mark.parametrize("spec", ENV_SPECS, ids=lambda s: s.name)
def test_explicit_template_renders_like_the_context_lookup(spec: EnvSpec) -> None:
    for style, template in (("", spec.template), ("compact", spec.compact_template)):
        if template is None:
            continue
        ctx = build_context(spec.name, "find the mug", 2, "obs", ("look",), (("a", "look"), ("b", "look")), 2, style)
        assert render_user_message(ctx, privileged="note", template=template) == render_user_message(
            ctx, privileged="note")


def test_prompts_never_import_the_environments() -> None:
    for path in sorted((ROOT / "sdar" / "prompts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n == "sdar.envs" or n.startswith("sdar.envs.")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}; sdar.prompts must not depend on sdar.envs"


def test_spec_modules_keep_optional_backends_unimported() -> None:
    import subprocess
    import sys

    code = ("import sys, sdar.envs.registry\n"
            "bad = [m for m in ('alfworld', 'textworld', 'faiss', 'sentence_transformers', 'bm25s', 'torch') "
            "if m in sys.modules]\nassert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
