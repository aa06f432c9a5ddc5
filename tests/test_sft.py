"""Tests for the supervised warm start: expert demonstrations, targets, the target-only loss, training and saving."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Sequence

import pytest
import torch
import torch.nn.functional as F

from sdar.config import ConfigError, EnvConfig, ModelConfig, RunConfig, SFTConfig, load_config
from sdar.envs import TaskSpec, ToyTextEnv
from sdar.envs.registry import make_env_factory, make_task_source
from sdar.envs.toy import expert_action
from sdar.learner.packing import make_micro_batches
from sdar.models import load_model, load_tokenizer
from sdar.prompts.parse import parse_action
from sdar.records import EnvInfo
from sdar.rollout.collect import CollectSettings, EpisodeRequest, collect_episodes
from sdar.rollout.generator import Sample, SamplingParams
from sdar.rollout.hf import HFGenerator
from sdar.commands.sft import (
    REASONING_TEMPLATES,
    SFTExample,
    encode_examples,
    episode_seed,
    expert_for,
    expert_turns,
    measure,
    plan_expert,
    reasoning_line,
    run_sft,
    save_model,
    target_logprobs,
    target_nll,
    target_text,
    toy_expert,
    train_sft,
)
from sdar.commands.cli import cmd_sft as main
from sdar.tiny import byte_tokenizer

CLEAN = TaskSpec("pick_clean_then_place-train-0-0001", "pick_clean_then_place")  # 8-step plan
PLACE = TaskSpec("pick_and_place-train-0-0000", "pick_and_place")
GO_TO = TaskSpec("go_to-train-0-0001", "go_to")  # 1-step plan
TARGET_RE = re.compile(r"^<think>([^<]+)</think><action>([^<]+)</action>$")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are too small to gain from threads; one thread avoids contention on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """``autocast: auto`` may run the CPU bf16 probe: keep its cache file out of the user's sdar cache."""
    monkeypatch.setenv("SDAR_CACHE", str(tmp_path / "sdar-cache"))


def toy_factory() -> ToyTextEnv:
    return ToyTextEnv(max_turns=12)


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return load_model("tiny-random", dtype="float32")


# ------------------------------------------------------------------------------------------------------ experts
def test_plan_expert_takes_first_numbered_step() -> None:
    info = EnvInfo("t", privileged={"expert_plan": "1. go to desk 1\n2. take mug 1 from desk 1"})
    assert plan_expert(ToyTextEnv(), "obs", info) == "go to desk 1"
    info = EnvInfo("t", privileged={"expert_plan": "\n  3) open drawer 2\n"})
    assert plan_expert(ToyTextEnv(), "obs", info) == "open drawer 2"
    with pytest.raises(ValueError, match="expert_plan"):
        plan_expert(ToyTextEnv(), "obs", EnvInfo("t"))


def test_plan_expert_agrees_with_toy_solver_over_an_episode() -> None:
    env = ToyTextEnv()
    obs, info = env.reset(task_id=CLEAN.task_id, seed=3)
    steps = 0
    while True:
        action = plan_expert(env, obs, info)
        assert action == toy_expert(env, obs, info) == expert_action(env)
        result = env.step(action)
        steps += 1
        obs, info = result.observation, result.info
        if result.terminated:
            break
    assert info.won and steps == 8
    assert expert_for("toy") is toy_expert and expert_for("alfworld") is plan_expert


def test_expert_turns_records_winning_episodes_with_history_window() -> None:
    turns = expert_turns(toy_factory, [CLEAN, GO_TO], expert=plan_expert, history_length=2, max_turns=12, seed=5)
    clean = [t for t in turns if t.task_id == CLEAN.task_id]
    assert [t.index for t in clean] == list(range(8)) and len([t for t in turns if t.task_id == GO_TO.task_id]) == 1
    assert all(t.episode_seed == episode_seed(5, 0) for t in clean)
    for t in clean:
        assert t.context.step == t.index and len(t.context.history) == min(t.index, 2)
        assert t.action in t.context.admissible_actions
    # the history of turn k is the (observation, action) of turns k-2 and k-1
    assert clean[4].context.history == ((clean[2].context.observation, clean[2].action),
                                        (clean[3].context.observation, clean[3].action))


def test_expert_turns_drops_unsolved_and_inadmissible_episodes() -> None:
    # 8-step task cut at 3 turns: not won -> dropped unless keep_failed
    assert expert_turns(toy_factory, [CLEAN], expert=plan_expert, history_length=2, max_turns=3, seed=0) == []
    kept = expert_turns(toy_factory, [CLEAN], expert=plan_expert, history_length=2, max_turns=3, seed=0,
                        keep_failed=True)
    assert len(kept) == 3
    bad = expert_turns(toy_factory, [PLACE], expert=lambda env, o, i: "dance", history_length=2, max_turns=5, seed=0)
    assert bad == []


def test_search_expert_looks_in_listing_order_and_wins() -> None:
    tasks = make_task_source("toy").tasks("train")[:12]
    turns = expert_turns(toy_factory, tasks, expert=expert_for("toy", "search"), history_length=2, max_turns=15,
                         seed=1)
    episodes: dict[str, list] = {}
    for t in turns:
        episodes.setdefault(t.task_id, []).append(t)
    assert len(episodes) == 12  # every episode won within 15 turns
    for task_id, ep in episodes.items():
        listed = [a[len("go to "):] for a in ep[0].context.admissible_actions if a.startswith("go to ")]
        storage = [r for r in listed if r.split()[0] not in ("sinkbasin", "microwave")]
        first_take = next(i for i, t in enumerate(ep) if t.action.startswith("take "))
        source = ep[first_take].action.split(" from ")[1]
        visits = [t.action[len("go to "):] for t in ep[:first_take] if t.action.startswith("go to ")]
        # the search visits storage receptacles in the listed order and stops at the object's receptacle
        assert visits == storage[: storage.index(source) + 1], task_id
        for t in ep[:first_take]:
            if t.action.startswith("open "):
                assert t.context.observation.endswith(f"The {t.action[5:]} is closed.")
    with pytest.raises(ValueError, match="toy"):
        expert_for("alfworld", "search")


# ------------------------------------------------------------------------------------------------------ targets
def test_targets_parse_as_valid_and_vary_by_seed() -> None:
    turns = expert_turns(toy_factory, [CLEAN, PLACE], expert=plan_expert, history_length=2, max_turns=12, seed=0)
    used = set()
    for seed in (0, 1):
        for t in turns:
            text = target_text(t, seed=seed)
            m = TARGET_RE.match(text)
            assert m is not None, text
            thought, action = m.groups()
            assert thought.count(".") == 1 and thought.endswith(".") and action == t.action
            parsed = parse_action(text, t.context.admissible_actions)
            assert parsed.valid and parsed.action == t.action
            used.add(next(i for i in range(len(REASONING_TEMPLATES))
                          if thought == reasoning_line(t.context.goal, t.action, step=t.index, choice=i)))
    assert len(used) >= 3  # several templates in use
    assert target_text(turns[0], seed=0) == target_text(turns[0], seed=0)  # deterministic


def test_reasoning_line_uses_goal_without_period() -> None:
    line = reasoning_line("Put a clean apple in the fridge.", "go to fridge 1", step=0, choice=1)
    assert line == "My goal is to put a clean apple in the fridge, so I go to fridge 1 now."


# ----------------------------------------------------------------------------- prompts equal the collector's prompts
class ReplayGenerator:
    """Answers each prompt with the SFT target recorded for exactly that prompt (or garbage when unknown)."""

    def __init__(self, examples: Sequence[SFTExample]) -> None:
        self.answers = {e.prompt_ids: e.target_ids for e in examples}
        self.prompts: list[tuple[int, ...]] = []

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        out = []
        for p in prompts:
            self.prompts.append(tuple(p))
            ids = self.answers.get(tuple(p), (65, 66))
            out.append(Sample(tuple(ids), tuple(0.0 for _ in ids), "stop"))
        return out

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass


@pytest.mark.parametrize("max_prompt_tokens", [4096, 1100])  # 1100 bytes: some history is dropped
def test_expert_prompts_equal_collector_prompts(tok, max_prompt_tokens: int) -> None:
    tasks = [CLEAN, PLACE]
    turns = expert_turns(toy_factory, tasks, expert=plan_expert, history_length=2, max_turns=12, seed=7)
    examples = encode_examples(tok, turns, seed=7, max_prompt_tokens=max_prompt_tokens)
    gen = ReplayGenerator(examples)
    requests = [EpisodeRequest(t, seed=episode_seed(7, i), group_id=i, episode_id=i) for i, t in enumerate(tasks)]
    settings = CollectSettings(max_turns=12, history_length=2, max_prompt_tokens=max_prompt_tokens)
    trajs = collect_episodes(requests, toy_factory, gen, tok, settings)
    assert all(traj.won for traj in trajs)
    collected = [t for traj in trajs for t in traj.turns]
    assert all(t.valid for t in collected)
    by_prompt = {t.prompt_ids: t for t in collected}
    assert sorted(by_prompt) == sorted(e.prompt_ids for e in examples)  # same prompts, one-to-one
    for turn, ex in zip(turns, examples):
        ct = by_prompt[ex.prompt_ids]
        assert ct.action == turn.action and ct.response_ids == ex.target_ids
    if max_prompt_tokens == 1100:
        assert any(len(t.context.history) < min(t.index, 2) for t in collected)  # the budget really cut history
    assert all(e.target_ids[-1] == tok.eos_token_id for e in examples)


# ---------------------------------------------------------------------------------------------------- the loss
def test_loss_covers_only_target_tokens(tok) -> None:
    examples = [SFTExample((1, 2, 3, 4), (10, 11, tok.eos_token_id), ""), SFTExample((5, 6), (12,), "")]
    rows = [(e.prompt_ids, e.target_ids) for e in examples]
    (mb,) = make_micro_batches(rows, max_tokens=64, layout="packed")
    flat = mb.input_ids.reshape(-1)
    # scored positions predict exactly the target tokens, and no prompt token is ever a target
    assert sorted(mb.targets.tolist()) == sorted([10, 11, tok.eos_token_id, 12])
    assert torch.equal(flat[mb.pred_index + 1], mb.targets)
    model = tiny()
    lp = target_logprobs(model, mb)  # [4]
    # reference: each row alone, cross-entropy with labels -100 on the prompt
    nll_sum, count = 0.0, 0
    for prompt, target in rows:
        ids = torch.tensor([list(prompt) + list(target)])
        labels = torch.tensor([[-100] * len(prompt) + list(target)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        nll_sum += float(F.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum"))
        count += len(target)
    assert count == lp.numel() == 4
    assert float(-lp.detach().sum()) == pytest.approx(nll_sum, rel=1e-5)
    assert target_nll(model, examples) == pytest.approx(nll_sum / count, rel=1e-5)


# ----------------------------------------------------------------------------------------------------- training
def _examples(tok, tasks, seed=0, max_prompt_tokens=4096):
    turns = expert_turns(toy_factory, tasks, expert=plan_expert, history_length=2, max_turns=12, seed=seed)
    return encode_examples(tok, turns, seed=seed, max_prompt_tokens=max_prompt_tokens)


def test_training_reduces_target_nll(tok) -> None:
    examples = _examples(tok, [PLACE])[:3]
    model = tiny()
    before = target_nll(model, examples)
    # batch_tokens below two rows: every row is its own micro-batch, the gradients add up to the batch mean
    history = train_sft(model, examples, epochs=12, lr=2e-2, batch_rows=3, batch_tokens=1300, warmup_steps=1)
    after = target_nll(model, examples)
    assert len(history) == 12 and history[0]["loss"] == pytest.approx(before, rel=1e-4)
    assert before > 5.0 and after < 0.6 * before  # random init: about ln(259) = 5.6 nats per token
    assert history[-1]["lr"] < history[1]["lr"]  # cosine decay


def test_overfit_one_example_then_greedy_decodes_it_exactly(tok, monkeypatch) -> None:
    # one reset seed for demonstration and measurement, so the measured episode shows the memorised prompt
    monkeypatch.setattr("sdar.commands.sft.episode_seed", lambda seed, index, purpose="demo": 123)  # measurement
    monkeypatch.setattr("sdar.data.demos.episode_seed", lambda seed, index, purpose="demo": 123)  # demonstration
    (ex,) = _examples(tok, [GO_TO])
    model = tiny(1)
    n_new = len(ex.target_ids) + 5
    fresh = measure(model, tok, toy_factory, [GO_TO], max_turns=2, max_new_tokens=n_new)
    assert fresh["valid_action_rate"] == fresh["success_rate"] == fresh["format_rate"] == 0.0
    assert fresh["episodes"] == 1 and fresh["mean_turns"] == 2  # invalid turns run to the turn limit
    train_sft(model, [ex], epochs=150, lr=1e-2, batch_rows=1, batch_tokens=8192, schedule="constant")
    assert target_nll(model, [ex]) < 0.05
    gen = HFGenerator(model, tok)
    (sample,) = gen.generate([ex.prompt_ids], SamplingParams(max_new_tokens=n_new, temperature=0.0))
    assert sample.token_ids == ex.target_ids and sample.finish_reason == "stop"
    trained = measure(model, tok, toy_factory, [GO_TO], max_turns=2, max_new_tokens=n_new)
    assert trained["valid_action_rate"] == trained["success_rate"] == trained["format_rate"] == 1.0
    assert trained["mean_turns"] == 1


def test_train_layers_freezes_all_but_top_layers(tok) -> None:
    from sdar.commands.sft import freeze_lower_layers

    model = tiny()
    n = freeze_lower_layers(model, 1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("model.layers.1.", "model.norm.")) for name in trainable)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_before = model.model.layers[0].mlp.up_proj.weight.clone()
    top_before = model.model.layers[1].mlp.up_proj.weight.clone()
    train_sft(model, _examples(tok, [GO_TO]), epochs=2, lr=1e-2, batch_rows=1, batch_tokens=8192)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, frozen_before)
    assert not torch.equal(model.model.layers[1].mlp.up_proj.weight, top_before)
    assert freeze_lower_layers(model, 0) == sum(p.numel() for p in model.parameters())


def test_saved_folder_reloads_with_load_model(tok, tmp_path) -> None:
    model = tiny(2)
    folder = save_model(model, tok, tmp_path / "m")
    again = load_model(str(folder), dtype="float32")
    tok2 = load_tokenizer(str(folder))
    ids = torch.tensor([list(range(40, 60))])
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)
    text = "<think>go</think><action>look</action>"
    assert tok2(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert tok2.eos_token_id == tok.eos_token_id


# ---------------------------------------------------------------------------------------------------- the command
def test_config_rejects_bad_values(tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match=r"sft.epochs must be >= 1 \(got 0\)"):
        main(["--model.name", "tiny-random", "--sft.epochs", "0"])
    with pytest.raises(ConfigError, match="sft.train_layers must be >= 0"):
        main(["--sft.train-layers", "-1"])
    with pytest.raises(ConfigError, match="sft.lr must be a finite number"):
        main(["--model.name", "tiny-random", "--sft.lr", "inf"])
    preset = tmp_path / "p.yaml"
    preset.write_text("sft:\n  epoch: 2\n")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        main(["--config", str(preset)])
    preset.write_text("epochs: 2\n")  # the old flat layout: the message points at the section
    with pytest.raises(ConfigError, match="did you mean 'sft.epochs'"):
        main(["--config", str(preset)])


def test_main_runs_end_to_end_on_tiny_model(tmp_path, capsys) -> None:
    out = tmp_path / "sft"
    preset = tmp_path / "p.yaml"
    preset.write_text("model:\n  name: tiny-random\nenv:\n  max_turns: 8\nsft:\n  expert: plan\n  num_tasks: 2\n"
                      "  eval_tasks: 2\n")
    rc = main(["--config", str(preset), "--sft.epochs", "1", "--sft.lr", "1e-3", "--rollout.max-new-tokens", "4",
               "--sft.out-dir", str(out)])
    assert rc == 0
    report = json.loads((out / "sft_report.json").read_text())
    assert report["config"]["model"]["name"] == "tiny-random" and report["config"]["sft"]["epochs"] == 1
    assert report["config"]["env"]["max_turns"] == 8 and report["config"]["rollout"]["max_new_tokens"] == 4
    tasks = make_task_source("toy").tasks("train")[:2]
    expected = expert_turns(make_env_factory("toy", max_turns=8), tasks, expert=toy_expert, history_length=2,
                            max_turns=8, seed=0)
    assert report["train_turns"] == len(expected) > 0
    for key in ("before", "after"):
        assert set(report[key]) >= {"valid_action_rate", "success_rate", "format_rate"}
        assert report[key]["episodes"] == 2
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed and "valid-action rate" in printed
    assert load_model(str(out), dtype="float32").config.vocab_size == 259


# ------------------------------------------------------------------------------------ compute dtype and progress
def test_autocast_defaults_to_auto_in_the_config_and_the_presets() -> None:
    import yaml

    from sdar.config import from_dict

    assert SFTConfig().autocast == "auto" and RunConfig().sft.autocast == "auto"
    presets = Path(__file__).resolve().parents[1] / "configs" / "sft"
    for name in ("smollm2.yaml", "smollm2_alfworld.yaml"):
        assert from_dict(RunConfig, yaml.safe_load((presets / name).read_text())).sft.autocast == "auto"


@pytest.mark.parametrize(("setting", "fast", "dtype"), [("none", True, "float32"), ("auto", False, "float32"),
                                                        ("auto", True, "bfloat16")])
def test_run_sft_resolves_and_logs_the_compute_dtype(tmp_path, monkeypatch, caplog, setting, fast, dtype) -> None:
    from sdar import hardware
    from sdar.commands import sft
    from sdar.hardware import Bf16Probe

    monkeypatch.setattr(hardware, "cpu_bf16_probe", lambda: Bf16Probe(10.0, 5.0 if fast else 50.0, fast))
    seen = []
    real_train = sft.train_sft

    def spy(*args, **kwargs):
        seen.append(kwargs["autocast_dtype"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(sft, "train_sft", spy)
    cfg = dataclasses.replace(RunConfig(), model=ModelConfig(name="tiny-random"), env=EnvConfig(max_turns=8),
                              sft=SFTConfig(expert="plan", num_tasks=1, eval_tasks=0, autocast=setting,
                                            out_dir=str(tmp_path / "out")))
    with caplog.at_level(logging.INFO, logger="sdar.commands.sft"):
        run_sft(cfg)
    assert seen == [None if dtype == "float32" else torch.bfloat16]
    assert f"autocast {setting} -> compute dtype {dtype}" in caplog.text
    assert "avx512_bf16:" in caplog.text and "amx_bf16:" in caplog.text  # the CPU description


def test_train_sft_logs_step_of_total_with_eta(tok, caplog) -> None:
    examples = _examples(tok, [PLACE])[:2]
    with caplog.at_level(logging.INFO, logger="sdar.commands.sft"):
        train_sft(tiny(), examples, epochs=2, lr=1e-3, batch_rows=1, batch_tokens=4096)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sft step")]
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(re.search(r"ETA ~\S+$", line) for line in lines) and lines[-1].endswith("ETA ~0s")


def test_measure_reports_turn_progress(tok) -> None:
    from sdar.rollout.collect import TurnProgress

    records: list[TurnProgress] = []
    result = measure(tiny(), tok, toy_factory, [GO_TO, PLACE], max_turns=2, max_new_tokens=3,
                     progress=records.append)
    assert [r.turn for r in records] == [0, 1]  # a random model's invalid turns run to the limit
    assert [(r.active, r.finished, r.total) for r in records] == [(2, 0, 2), (0, 2, 2)]
    assert records[-1].tokens <= 2 * 2 * 3 and result["episodes"] == 2


def test_every_sft_preset_loads() -> None:
    """Every SFT preset (configs/sft/*.yaml and configs/*/sft*.yaml) is a valid run configuration."""
    root = Path(__file__).resolve().parents[1] / "configs"
    presets = sorted({*root.glob("sft/*.yaml"), *root.glob("*/sft*.yaml")})
    assert any(p.parent.name == "testbed" for p in presets)
    for path in presets:
        cfg = load_config(path)
        assert cfg.sft.num_tasks >= 1, path


def test_run_sft_reads_the_environment_data_folder_and_settings(tmp_path, monkeypatch) -> None:
    """env.data_dir (generated ALFWorld games, a saved catalogue), env.win_reward and env.retriever_url reach the
    environments and tasks the warm start plays, as in an RL run."""
    from sdar.envs import registry

    seen: dict[str, dict] = {}

    class Stop(Exception):
        pass

    def factory(name, **kwargs):
        seen["factory"] = {"name": name, **kwargs}
        return lambda: None

    def tasks(name, **kwargs):
        seen["tasks"] = {"name": name, **kwargs}
        raise Stop

    monkeypatch.setattr(registry, "make_env_factory", factory)
    monkeypatch.setattr(registry, "make_task_source", tasks)
    cfg = dataclasses.replace(RunConfig(), model=ModelConfig(name="tiny-random"),
                              env=EnvConfig(name="alfworld", max_turns=7, data_dir=str(tmp_path / "games"),
                                            win_reward=3.0, task_types=("look_at_obj_in_light",)),
                              sft=SFTConfig(expert="plan", num_tasks=1, eval_tasks=0, out_dir=str(tmp_path / "out")))
    with pytest.raises(Stop):
        run_sft(cfg)
    assert seen["factory"] == {"name": "alfworld", "max_turns": 7, "win_reward": 3.0,
                               "data_dir": str(tmp_path / "games"), "retriever_url": None}
    assert seen["tasks"] == {"name": "alfworld", "data_dir": str(tmp_path / "games"),
                             "task_types": ("look_at_obj_in_light",)}
