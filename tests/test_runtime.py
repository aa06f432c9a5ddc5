"""Run wiring: loss-spec resolution, micro-batch layout choice, task sampling, per-step statistics."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch

from sdar.config import load_config
from sdar.records import PromptContext, Trajectory, Turn
from sdar.learner.packing import choose_layout
from sdar.runtime import build, resolve_spec
from sdar.stats import gap_by_turn, rollout_metrics, row_scores

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"


def test_spec_takes_method_defaults_and_explicit_overrides(tmp_path):
    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path)})
    spec = resolve_spec(cfg)
    assert (spec.aux, spec.aux_coef, spec.gate_beta, spec.kl_coef, spec.entropy_coef) == ("sdar", 0.01, 5.0, 0.01, 0.001)
    cfg = load_config(SMOKE, overrides={"algo.gate_beta": 2.0, "algo.kl_coef": 0.0, "out_dir": str(tmp_path)})
    spec = resolve_spec(cfg)
    assert spec.gate_beta == 2.0 and spec.kl_coef == 0.0 and not spec.needs_reference
    spec = resolve_spec(load_config(SMOKE, overrides={"algo.method": "grpo_opsd", "out_dir": str(tmp_path)}))
    assert spec.gate_beta == 0.0 and spec.aux == "sdar"


def test_layout_auto_packs_only_under_flash_attention():
    model = types.SimpleNamespace(config=types.SimpleNamespace(_attn_implementation="sdpa"))
    assert choose_layout("auto", model) == "bucketed"
    model.config._attn_implementation = "flash_attention_2"
    assert choose_layout("auto", model) == "packed"
    assert choose_layout("bucketed", model) == "bucketed"


def test_episode_requests_share_seed_and_group_and_walk_the_data_cursor(tmp_path):
    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "rollout.tasks_per_step": 3,
                                        "rollout.group_size": 4, "teacher.source": "skills"})
    rt = build(cfg)
    reqs = rt.collector.planner.step(0).requests
    assert len(reqs) == 12
    for g in range(3):
        group = reqs[4 * g: 4 * g + 4]
        assert len({r.seed for r in group}) == 1 and len({r.group_id for r in group}) == 1
        assert len({r.task.task_id for r in group}) == 1
        assert "skills" in group[0].privileged and group[0].privileged["skills"].strip()
    assert len({r.episode_id for r in reqs}) == 12
    again = rt.collector.planner.step(0).requests
    assert [(r.task, r.seed, r.episode_id) for r in again] == [(r.task, r.seed, r.episode_id) for r in reqs]
    # one epoch over the train split visits every task exactly once
    n = len(rt.collector.planner.train_tasks)
    seen = [r.task.task_id for s in range(n // 3) for r in rt.collector.planner.step(s).requests[::4]]
    assert len(seen) == len(set(seen)) == (n // 3) * 3
    assert rt.collector.planner.step(1).requests[0].seed != reqs[0].seed
    rt.close()


def _turn(i: int, valid: bool, reward: float = 0.0) -> Turn:
    ctx = PromptContext(env_name="toy", goal="g", step=i, observation=f"o{i}")
    return Turn(index=i, context=ctx, prompt_ids=(1,), response_ids=(2, 3), response_logprobs=(-1.0, -1.0),
                response_text="x", action="a", valid=valid, finish_reason="stop", reward=reward,
                observation="o", done=False)


def _traj(turns, won=False, group=0, episode=0, task_type="t") -> Trajectory:
    return Trajectory(task_id="t", task_type=task_type, group_id=group, episode_id=episode, seed=0,
                      turns=tuple(turns), won=won)


def test_row_scores_by_hand():
    # episode A: return 10, turns valid/invalid -> 10, 9.9 ; episode B: return 0, one invalid turn -> -0.1
    a = _traj([_turn(0, True), _turn(1, False, reward=10.0)], won=True)
    b = _traj([_turn(0, False)], episode=1)
    torch.testing.assert_close(row_scores([a, b], 0.1), torch.tensor([10.0, 9.9, -0.1]))


def test_rollout_metrics_by_hand():
    a = _traj([_turn(0, True), _turn(1, False, reward=10.0)], won=True, task_type="x")
    b = _traj([_turn(0, False)], episode=1, task_type="y")
    m = rollout_metrics([a, b], 0.1)
    # rewards: 10 - 0.1 = 9.9 and -0.1 -> mean 4.9; 3 turns, 2 invalid
    assert m["rollout/reward"] == pytest.approx(4.9) and m["rollout/success"] == 0.5
    assert m["rollout/episode_len"] == 1.5 and m["rollout/invalid_ratio"] == pytest.approx(2 / 3)
    assert m["rollout/success/x"] == 1.0 and m["rollout/success/y"] == 0.0


def test_gap_by_turn_by_hand():
    teacher = torch.tensor([[-1.0, -2.0], [-0.5, 0.0], [-3.0, -3.0]])
    student = torch.tensor([[-2.0, -2.0], [-1.0, -9.0], [-1.0, -1.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    turn_ids = torch.tensor([0, 0, 12])
    m = gap_by_turn(teacher, student, mask, turn_ids)
    # gaps on counted tokens: 1, 0, 0.5 (turn 0) and -2, -2 (turn 12 -> last bucket)
    assert m["sdar/gap_pre_mean"] == pytest.approx((1 + 0 + 0.5 - 2 - 2) / 5)
    assert m["sdar/gap_by_turn/0"] == pytest.approx(0.5)
    assert m["sdar/gap_by_turn/10plus"] == pytest.approx(-2.0)
    assert m["sdar/gap_pre_positive_ratio"] == pytest.approx(2 / 5)


def test_evaluation_sees_privileged_context_only_when_asked(tmp_path):
    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "algo.method": "skill_grpo",
                                        "teacher.source": "skills"})
    rt = build(cfg)
    assert rt.collector.train_settings.student_privileged_source == "skills"  # Skill-GRPO trains with skills
    assert rt.collector.eval_settings.student_privileged_source is None  # ... and is evaluated without them
    rt.close()
    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "algo.method": "grpo", "eval_with_skills": True})
    rt = build(cfg)
    assert rt.collector.train_settings.student_privileged_source is None
    assert rt.collector.eval_settings.student_privileged_source == "skills"
    assert all(r.privileged.get("skills") for r in rt.collector.planner.panel().requests)
    rt.close()


def test_evaluation_does_not_pull_the_ucb_bandit(tmp_path):
    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "algo.method": "sdar", "teacher.source": "skills",
                                        "teacher.retrieval": "ucb"})
    rt = build(cfg)
    before = rt.retriever.state_dict()
    assert all(r.privileged.get("skills") for r in rt.collector.planner.panel().requests)
    assert rt.retriever.state_dict() == before
    rt.collector.planner.requests_for(rt.collector.planner.eval_tasks[:1], first_group=0, group_size=2, seed_base=0)  # training queries do count
    assert rt.retriever.state_dict() != before
    rt.close()


def test_score_and_em_metrics_come_from_the_last_step():
    a = Trajectory(task_id="a", task_type="x", group_id=0, episode_id=0, seed=0, turns=(_turn(0, True),),
                   won=True, final_extra={"score": 1.0})
    b = Trajectory(task_id="b", task_type="x", group_id=0, episode_id=1, seed=0, turns=(_turn(0, True),),
                   won=False, final_extra={"score": 0.5})
    m = rollout_metrics([a, b], 0.1)
    assert m["rollout/score"] == pytest.approx(75.0) and m["rollout/success"] == 0.5
    assert "rollout/em" not in m


def test_panel_tasks_take_task_types_round_robin():
    from sdar.envs.base import TaskSpec, panel_tasks

    tasks = [TaskSpec(task_id=f"{t}{i}", task_type=t) for t, i in (("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2))]
    assert [t.task_id for t in panel_tasks(tasks, 3)] == ["a1", "b1", "a2"]
    assert [t.task_id for t in panel_tasks(tasks, 10)] == ["a1", "b1", "a2", "b2", "a3"]
    assert panel_tasks(tasks, 0) == [] and panel_tasks([], 4) == []


def _plan_turn(index: int, plan: str, admissible: tuple[str, ...]) -> Turn:
    ctx = PromptContext(env_name="toy", goal="put an apple in the fridge.", step=index, observation=f"obs {index}",
                        admissible_actions=admissible)
    return Turn(index=index, context=ctx, prompt_ids=(1,), response_ids=(2,), response_logprobs=(-1.0,),
                response_text="x", action="look", valid=True, finish_reason="stop", reward=0.0, observation="o",
                done=False, privileged={"expert_plan": plan})


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_teacher_sees_each_turns_own_plan_and_hint_noise_corrupts_it(tmp_path, noise):
    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "teacher.source": "expert_plan",
                                        "teacher.hint_noise": noise})
    rt = build(cfg)
    admissible = ("go to cabinet 2", "go to drawer 1", "look")
    first = _plan_turn(0, "1. go to cabinet 2\n2. open cabinet 2", admissible)
    second = _plan_turn(1, "1. open cabinet 2", ("open cabinet 2", "look"))
    traj = Trajectory(task_id="t", task_type="t", group_id=0, episode_id=5, seed=0, turns=(first, second),
                      won=False, privileged={"expert_plan": "1. go to cabinet 2\n2. open cabinet 2"})
    texts = [rt.tokenizer.decode(list(ids)) for ids in rt.teacher.rows([traj]).prompts]
    if noise == 0.0:  # each turn's own plan, re-made from that state
        assert "1. go to cabinet 2\n2. open cabinet 2" in texts[0] and "1. open cabinet 2\n" in texts[1]
    else:  # every hint's next step is another admissible action
        assert "1. go to cabinet 2" not in texts[0] and "2. open cabinet 2" in texts[0]
        assert "1. look\n" in texts[1]
    rt.close()


def test_hint_noise_is_validated(tmp_path):
    from sdar.config import ConfigError

    with pytest.raises(ConfigError, match="hint_noise"):
        load_config(SMOKE, overrides={"out_dir": str(tmp_path), "teacher.hint_noise": 1.5})
    with pytest.raises(ConfigError, match="expert_plan"):
        load_config(SMOKE, overrides={"out_dir": str(tmp_path), "teacher.source": "skills", "teacher.hint_noise": 0.3})


def test_env_task_types_restrict_both_splits(tmp_path):
    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "env.task_types": ["pick_and_place"]})
    rt = build(cfg)
    assert {t.task_type for t in rt.collector.planner.train_tasks} == {t.task_type for t in rt.collector.planner.eval_tasks} == {"pick_and_place"}
    assert len(rt.collector.planner.eval_tasks) >= 64
    rt.close()


def test_rloo_turn_rows_take_the_other_episodes_as_baseline(tmp_path):
    from sdar.rows import step_advantages

    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "algo.advantage": "rloo"})
    # one group: A (2 turns, return 10, second turn invalid), B (1 turn, return 0), C (3 turns, return 4)
    a = _traj([_turn(0, True), _turn(1, False, reward=10.0)], episode=0)
    b = _traj([_turn(0, True)], episode=1)
    c = _traj([_turn(0, True), _turn(1, True), _turn(2, True, reward=4.0)], episode=2)
    scores = row_scores([a, b, c], 0.1)  # [10, 9.9, 0, 4, 4, 4]
    # episode scores (mean of rows): A 9.95, B 0, C 4 -> baselines A 2, B 6.975, C 4.975
    want = torch.tensor([8.0, 7.9, -6.975, -0.975, -0.975, -0.975])
    torch.testing.assert_close(step_advantages([a, b, c], scores, estimator=cfg.algo.advantage,
                                                adv_stats=cfg.algo.adv_stats, invalid_penalty=0.1), want)


@pytest.mark.parametrize("advantage", ["grpo", "rloo"])
def test_conversation_rows_carry_the_episode_score_with_every_penalty(tmp_path, advantage):
    from sdar.tiny import byte_tokenizer
    from sdar.rows import build_batch, view_advantages

    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "rollout.view": "conversation",
                                        "algo.advantage": advantage})
    # A wins but has invalid turns 1 and 2 -> 10 - 0.2 = 9.8; B wins in one valid turn -> 10
    a = _traj([_turn(0, True), _turn(1, False), _turn(2, False), _turn(3, True, reward=10.0)], won=True)
    b = _traj([_turn(0, True, reward=10.0)], won=True, episode=1)
    adv = view_advantages([a, b], view="conversation", estimator=advantage, adv_stats=cfg.algo.adv_stats,
                          invalid_penalty=cfg.env.invalid_penalty)
    # grpo over the group's two episodes: (x - 9.9) / std([9.8, 10]) = -/+ 0.70711; rloo: x - the other one
    want = [-0.70711, 0.70711] if advantage == "grpo" else [-0.2, 0.2]
    torch.testing.assert_close(adv, torch.tensor(want), atol=1e-4, rtol=0)
    batch = build_batch([a, b], adv, view="conversation", tokenizer=byte_tokenizer())
    for row, value in enumerate(want):  # every sampled token of the episode carries its advantage
        assert torch.allclose(batch.advantages[row][batch.loss_mask[row]], torch.tensor(value), atol=1e-4)


def test_collect_settings_carry_the_invalid_rule(tmp_path):
    rt = build(load_config(SMOKE, overrides={"out_dir": str(tmp_path)}))
    assert rt.collector.train_settings.invalid_rule == "format" and rt.collector.eval_settings.invalid_rule == "format"
    rt.close()
    rt = build(load_config(SMOKE, overrides={"out_dir": str(tmp_path), "env.invalid_rule": "admissible"}))
    assert rt.collector.train_settings.invalid_rule == "admissible" and rt.collector.eval_settings.invalid_rule == "admissible"
    rt.close()


def keyword_only_library(folder: Path) -> Path:
    """A skill library whose task_to_skill knows none of the toy task types: only the goal's keywords find a skill."""
    folder.mkdir(parents=True)
    (folder / "general_skills.md").write_text("1. Read the goal first.\n")
    (folder / "heating.md").write_text("1. HEAT THE OBJECT IN THE MICROWAVE BEFORE PLACING IT.\n")
    (folder / "skill_mapping.json").write_text(json.dumps({
        "general": ["general_skills.md"], "skill_files": {"heating": "heating.md"},
        "task_to_skill": {"some_other_task": "heating"}, "task_keywords": {"heating": ["hot"]},
    }))
    return folder


class _LookGenerator:
    """Answers every prompt with a well-formed 'look'."""

    def __init__(self, tok) -> None:
        self.ids = tuple(tok("<think>x</think><action>look</action>", add_special_tokens=False)["input_ids"])

    def generate(self, prompts, params):
        from sdar.rollout.generator import Sample

        return [Sample(self.ids, tuple(-1.0 for _ in self.ids), "stop") for _ in prompts]


def test_keyword_retrieval_reads_the_goal_the_environment_reports(tmp_path):
    from sdar.rollout.collect import collect_episodes

    cfg = load_config(SMOKE, overrides={
        "out_dir": str(tmp_path / "run"), "teacher.source": "skills", "env.max_turns": 1,
        "teacher.skills_dir": str(keyword_only_library(tmp_path / "skills")),
        "env.task_types": ["pick_heat_then_place"],  # goals read "put a hot ... in/on the ..."
    })
    rt = build(cfg)
    plan = rt.collector.planner.step(0)
    requests = plan.requests
    trajs = collect_episodes(requests, rt.make_env, _LookGenerator(rt.tokenizer), rt.tokenizer,
                             rt.collector.train_settings)
    assert all(" hot " in t.turns[0].context.goal for t in trajs)
    assert all("## Skills: heating" in t.privileged["skills"] for t in trajs)
    assert all("HEAT THE OBJECT" in rt.tokenizer.decode(list(ids)) for ids in rt.teacher.rows(trajs).prompts)
    # one retrieval per task group, in request order, for the bandit update and the skill metrics
    retrievals = plan.settled()
    assert len(retrievals) == len(requests) and all(r.skill_names == ("heating",) for r in retrievals)
    assert retrievals[0] is retrievals[1]  # the two episodes of a group share their task's retrieval
    rt.close()


def test_teacher_history_dropped_counts_rows_whose_teacher_saw_less_history(tmp_path):
    from sdar.prompts.render import encode_prompt, render_messages

    cfg = load_config(SMOKE, overrides={"out_dir": str(tmp_path), "teacher.source": "expert_plan"})
    rt = build(cfg)
    plan = "1. open the fridge 1\n2. take the apple 1 from the fridge 1\n3. " + "look around carefully " * 10
    goal = "put an apple in the fridge."
    pairs = (("you see a fridge 1 and a drawer 1 " * 3, "go to fridge 1"), ("the fridge 1 is closed " * 3, "look"))
    first = PromptContext(env_name="toy", goal=goal, step=0, observation="start", admissible_actions=("look",))
    later = PromptContext(env_name="toy", goal=goal, step=2, observation="obs 2", admissible_actions=("look",),
                          history=pairs)
    turns = tuple(Turn(index=k, context=ctx, prompt_ids=(1,), response_ids=(2,), response_logprobs=(-1.0,),
                       response_text="x", action="look", valid=True, finish_reason="stop", reward=0.0,
                       observation="o", done=False, privileged={"expert_plan": plan})
                  for k, ctx in enumerate((first, later)))
    traj = Trajectory(task_id="t", task_type="t", group_id=0, episode_id=0, seed=0, turns=turns, won=False)
    assert rt.teacher.rows([traj]).history_dropped == [False, False]  # the smoke budget holds everything
    # a budget with room for the plan and one history pair, not two: the later row's teacher sees less history
    one_pair = dataclasses.replace(later, history=pairs[1:])
    budget = len(encode_prompt(rt.tokenizer, render_messages(one_pair, privileged=plan)))
    rows = dataclasses.replace(rt.teacher, max_tokens=budget).rows([traj])
    assert rows.history_dropped == [False, True] and rows.history_dropped_share == 0.5
    assert all(len(ids) <= budget for ids in rows.prompts)
    rt.close()
