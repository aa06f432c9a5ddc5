"""Tests for the lock-step multi-turn collector with a scripted generator over the built-in household game."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import pytest
import torch

from sdar.envs import EnvCrashed, TaskSpec, ToyTextEnv, build_task
from sdar.rollout.collect import (
    INVALID_FEEDBACK,
    NO_ACTION_TEXT,
    CollectSettings,
    EpisodeRequest,
    TurnProgress,
    collect_episodes,
    turn_seed,
)
from sdar.rollout.generator import Sample, SamplingParams
from sdar.tiny import byte_tokenizer, tiny_model

GO_TO = TaskSpec("go_to-train-0-0001", "go_to")  # 1-step plan
PLACE = TaskSpec("pick_and_place-train-0-0000", "pick_and_place")
CLEAN = TaskSpec("pick_clean_then_place-train-0-0001", "pick_clean_then_place")  # 8-step plan


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def respond(action: str) -> str:
    return f"<think>I will {action}.</think><action>{action}</action>"


class ScriptedGenerator:
    """Answers ``script(call_index, row, decoded_prompt)``; appends the end-of-turn id; records every call."""

    def __init__(self, tok, script: Callable[[int, int, str], str]) -> None:
        self.tok, self.script = tok, script
        self.calls: list[tuple[list[list[int]], SamplingParams]] = []
        self.samples: list[list[Sample]] = []

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        call = len(self.calls)
        self.calls.append(([list(p) for p in prompts], params))
        out = []
        for row, prompt in enumerate(prompts):
            text = self.script(call, row, self.tok.decode(list(prompt)))
            ids = tuple(self.tok(text, add_special_tokens=False)["input_ids"]) + (self.tok.eos_token_id,)
            out.append(Sample(ids, tuple(-0.001 * (k + 1 + row) for k in range(len(ids))), "stop"))
        self.samples.append(out)
        return out

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass


class Factory:
    """Builds toy envs that can fail on chosen resets / steps, and remembers them (to check closing)."""

    def __init__(self, *, reset_failures: dict[str, int] | None = None, step_failures: dict[str, int] | None = None):
        self.reset_failures = dict(reset_failures or {})
        self.step_failures = dict(step_failures or {})
        self.envs: list[FlakyEnv] = []

    def __call__(self) -> FlakyEnv:
        self.envs.append(FlakyEnv(self))
        return self.envs[-1]


class FlakyEnv:
    name = "toy"

    def __init__(self, factory: Factory) -> None:
        self.factory, self.inner = factory, ToyTextEnv()
        self.task_id, self.steps, self.closes = "", 0, 0

    def reset(self, *, task_id: str, seed: int):
        if self.factory.reset_failures.get(task_id, 0) > 0:
            self.factory.reset_failures[task_id] -= 1
            raise EnvCrashed("backend down")
        self.task_id = task_id
        return self.inner.reset(task_id=task_id, seed=seed)

    def step(self, action: str):
        self.steps += 1
        if self.factory.step_failures.get(self.task_id) == self.steps:
            raise EnvCrashed("backend crashed")
        return self.inner.step(action)

    def close(self) -> None:
        self.closes += 1
        self.inner.close()


def expert_plans(tasks: Sequence[TaskSpec], seed: int = 0) -> dict[str, tuple[str, ...]]:
    """Goal text -> the expert's full action sequence."""
    plans = {}
    for task in tasks:
        env = ToyTextEnv()
        _, info = env.reset(task_id=task.task_id, seed=seed)
        plans[info.goal] = env.expert_plan()
    assert len(plans) == len(tasks), "the tasks of a scripted test need distinct goals"
    return plans


def expert_script(plans: dict[str, tuple[str, ...]]) -> Callable[[int, int, str], str]:
    def script(call: int, row: int, prompt: str) -> str:
        goal = next(g for g in plans if f"Your goal: {g}" in prompt)
        return respond(plans[goal][call])  # lock-step: call index == turn index of every active episode

    return script


def settings(**kw) -> CollectSettings:
    return CollectSettings(**{"max_turns": 12, "sampling": SamplingParams(max_new_tokens=64), **kw})


def requests(tasks: Sequence[TaskSpec], privileged: dict[str, str] | None = None) -> list[EpisodeRequest]:
    return [EpisodeRequest(t, seed=0, group_id=10 + i // 2, episode_id=i, privileged=privileged or {})
            for i, t in enumerate(tasks)]


def test_expert_episodes_win_in_lock_step_with_one_generate_call_per_turn(tok) -> None:
    tasks = [CLEAN, GO_TO, PLACE]
    plans = expert_plans(tasks)
    lengths = [len(p) for p in plans.values()]
    gen = ScriptedGenerator(tok, expert_script(plans))
    factory = Factory()
    trajs = collect_episodes(requests(tasks, {"skills": "S"}), factory, gen, tok, settings())

    # one call per turn, holding exactly the still-running episodes
    assert [len(prompts) for prompts, _ in gen.calls] == [sum(n > t for n in lengths) for t in range(max(lengths))]
    assert [t.task_id for t in trajs] == [t.task_id for t in tasks]
    assert [(t.group_id, t.episode_id, t.seed) for t in trajs] == [(10, 0, 0), (10, 1, 0), (11, 2, 0)]
    for traj, plan in zip(trajs, plans.values()):
        assert traj.won and not traj.failed and traj.num_invalid == 0
        assert [turn.action for turn in traj.turns] == list(plan)
        assert [turn.index for turn in traj.turns] == list(range(len(plan)))
        assert [turn.reward for turn in traj.turns] == [0.0] * (len(plan) - 1) + [10.0]
        assert [turn.done for turn in traj.turns] == [False] * (len(plan) - 1) + [True]
        assert traj.episode_return == 10.0
        assert traj.privileged["skills"] == "S"
        assert traj.privileged["expert_plan"].splitlines()[-1].endswith(plan[-1])
    assert trajs[0].task_type == "pick_clean_then_place"
    # prompts and responses are exactly what went into / came out of the generator, row by row
    for call, ((prompts, _), samples) in enumerate(zip(gen.calls, gen.samples)):
        active = [traj for traj in trajs if len(traj.turns) > call]
        for row, traj in enumerate(active):
            turn = traj.turns[call]
            assert list(turn.prompt_ids) == prompts[row]
            assert turn.response_ids == samples[row].token_ids and turn.response_ids[-1] == tok.eos_token_id
            assert turn.response_logprobs == samples[row].logprobs
            assert turn.response_text == respond(turn.action)  # the end-of-turn id is dropped in the text only
    assert all(env.closes >= 1 for env in factory.envs)


def test_history_window_and_step_count(tok) -> None:
    receptacles = [r for r in build_task(PLACE.task_id).receptacles if r.startswith(("drawer", "shelf", "cab"))][:2]
    gen = ScriptedGenerator(tok, lambda call, row, prompt: respond(f"go to {receptacles[call % 2]}"))
    (traj,) = collect_episodes(requests([PLACE]), ToyTextEnv, gen, tok, settings(max_turns=4, history_length=2))
    assert len(traj.turns) == 4 and all(t.valid for t in traj.turns)
    seen = [traj.turns[0].context.observation] + [t.observation for t in traj.turns[:-1]]
    pairs = [(seen[i], traj.turns[i].action) for i in range(4)]
    for i, turn in enumerate(traj.turns):
        assert turn.context.step == i and turn.context.observation == seen[i]
        assert turn.context.history == tuple(pairs[max(0, i - 2) : i])
    last_prompt = tok.decode(list(traj.turns[3].prompt_ids))
    assert "You have taken 3 step(s)" in last_prompt and "Step 2 observation" in last_prompt
    assert "Step 1 observation" not in last_prompt and "This is step 4." in last_prompt


def test_invalid_responses_do_not_reach_the_env_and_the_episode_continues(tok) -> None:
    script = ["no tags at all", "<think>x</think><action>Fly Away</action>", respond("look")]
    gen = ScriptedGenerator(tok, lambda call, row, prompt: script[call])
    factory = Factory()
    (traj,) = collect_episodes(requests([PLACE]), factory, gen, tok, settings(max_turns=3, invalid_rule="admissible"))
    t0, t1, t2 = traj.turns
    assert (t0.valid, t0.action, t0.observation, t0.reward, t0.done) == (False, "", INVALID_FEEDBACK, 0.0, False)
    assert (t1.valid, t1.action, t1.observation) == (False, "fly away", INVALID_FEEDBACK)
    assert t2.valid and t2.action == "look" and t2.done
    assert factory.envs[0].steps == 1  # only the valid turn stepped the environment
    assert t1.context.admissible_actions == t0.context.admissible_actions
    assert t2.context.history == ((t0.context.observation, NO_ACTION_TEXT), (INVALID_FEEDBACK, "fly away"))
    assert traj.num_invalid == 2 and not traj.won


@pytest.mark.parametrize("rule", ["format", "admissible"])
def test_well_formed_inadmissible_action_under_each_invalid_rule(tok, rule) -> None:
    script = ["<think>x</think><action>Fly Away</action>", "<think>x</think><action>fly</action", respond("look")]
    gen = ScriptedGenerator(tok, lambda call, row, prompt: script[call])
    factory = Factory()
    (traj,) = collect_episodes(requests([PLACE]), factory, gen, tok, settings(max_turns=3, invalid_rule=rule))
    inadmissible, malformed, ok = traj.turns
    assert "fly away" not in inadmissible.context.admissible_actions
    if rule == "format":  # as the reference: the tags are fine, so the action goes to the environment
        assert inadmissible.valid and inadmissible.action == "fly away"
        assert inadmissible.observation == "Nothing happens." and factory.envs[0].steps == 2
        assert traj.num_invalid == 1  # only the malformed turn is penalised
    else:  # the action is checked against the admissible list first and never sent
        assert not inadmissible.valid and inadmissible.action == "fly away"
        assert inadmissible.observation == INVALID_FEEDBACK and factory.envs[0].steps == 1
        assert traj.num_invalid == 2
    assert not malformed.valid and malformed.observation == INVALID_FEEDBACK  # malformed: invalid under both rules
    assert ok.valid and ok.action == "look"
    assert CollectSettings().invalid_rule == "format"  # the reference's rule is the default


def test_env_crash_mid_episode_fails_only_that_episode(tok) -> None:
    tasks = [CLEAN, PLACE]
    gen = ScriptedGenerator(tok, expert_script(expert_plans(tasks)))
    factory = Factory(step_failures={CLEAN.task_id: 2})
    crashed, ok = collect_episodes(requests(tasks), factory, gen, tok, settings())
    assert crashed.failed and not crashed.won and len(crashed.turns) == 1  # the turn whose step crashed is dropped
    assert ok.won and not ok.failed
    assert all(env.closes >= 1 for env in factory.envs)


def test_reset_is_retried_once_then_the_episode_is_marked_failed(tok) -> None:
    tasks = [GO_TO, PLACE]
    gen = ScriptedGenerator(tok, expert_script(expert_plans(tasks)))
    factory = Factory(reset_failures={GO_TO.task_id: 1, PLACE.task_id: 2})
    retried, failed = collect_episodes(requests(tasks, {"skills": "S"}), factory, gen, tok, settings())
    assert retried.won and not retried.failed
    assert failed.failed and not failed.won and failed.turns == () and failed.privileged == {"skills": "S"}
    assert failed.task_type == "pick_and_place"
    assert len(factory.envs) == 4 and all(env.closes >= 1 for env in factory.envs)


def test_factory_exception_counts_as_failed_reset(tok) -> None:
    def make() -> ToyTextEnv:
        raise OSError("cannot start")

    gen = ScriptedGenerator(tok, lambda call, row, prompt: respond("look"))
    (traj,) = collect_episodes(requests([GO_TO]), make, gen, tok, settings())
    assert traj.failed and traj.turns == () and gen.calls == []


def test_max_turns_truncates(tok) -> None:
    gen = ScriptedGenerator(tok, lambda call, row, prompt: respond("look"))
    (traj,) = collect_episodes(requests([PLACE]), ToyTextEnv, gen, tok, settings(max_turns=3))
    assert len(traj.turns) == 3 and len(gen.calls) == 3
    assert [t.done for t in traj.turns] == [False, False, True]
    assert not traj.won and not traj.failed and traj.episode_return == 0.0


def test_env_truncation_ends_the_episode(tok) -> None:
    gen = ScriptedGenerator(tok, lambda call, row, prompt: respond("look"))
    (traj,) = collect_episodes(requests([PLACE]), lambda: ToyTextEnv(max_turns=2), gen, tok, settings(max_turns=9))
    assert len(traj.turns) == 2 and traj.turns[-1].done


def test_sampling_seed_is_derived_per_turn(tok) -> None:
    gen = ScriptedGenerator(tok, lambda call, row, prompt: respond("look"))
    sampling = SamplingParams(max_new_tokens=64, temperature=0.7, seed=123)
    collect_episodes(requests([PLACE, GO_TO]), ToyTextEnv, gen, tok, settings(max_turns=3, sampling=sampling))
    seeds = [params.seed for _, params in gen.calls]
    assert seeds == [turn_seed(123, t) for t in range(3)] and len(set(seeds)) == 3
    keys = [params.row_keys for _, params in gen.calls]  # the active episodes' ids, in row order
    assert keys[0] == (0, 1) and all(k is not None and set(k) <= {0, 1} for k in keys)
    assert all(p.temperature == 0.7 and p.max_new_tokens == 64 for _, p in gen.calls)
    assert turn_seed(123, 0) == turn_seed(123, 0) != turn_seed(124, 0)
    gen2 = ScriptedGenerator(tok, lambda call, row, prompt: respond("look"))
    collect_episodes(requests([PLACE]), ToyTextEnv, gen2, tok, settings(max_turns=2))
    assert [params.seed for _, params in gen2.calls] == [None, None]


def test_student_privileged_source(tok) -> None:
    gen = ScriptedGenerator(tok, lambda call, row, prompt: respond("look"))
    collect_episodes(requests([PLACE], {"skills": "OPEN BEFORE PUT"}), ToyTextEnv, gen, tok, settings(max_turns=2))
    assert all("[Task notes]" not in tok.decode(p) for prompts, _ in gen.calls for p in prompts)

    gen = ScriptedGenerator(tok, lambda call, row, prompt: respond("look"))
    s = settings(max_turns=2, student_privileged_source="skills")
    collect_episodes(requests([PLACE], {"skills": "OPEN BEFORE PUT"}), ToyTextEnv, gen, tok, s)
    assert all("[Task notes]\nOPEN BEFORE PUT\n" in tok.decode(p) for prompts, _ in gen.calls for p in prompts)

    # a source the request lacks comes from the env's per-turn privileged info (the plan after the last step)
    plan = expert_plans([GO_TO])["go to the coffeetable."]
    gen = ScriptedGenerator(tok, lambda call, row, prompt: respond("look"))
    s = settings(max_turns=1, student_privileged_source="expert_plan")
    collect_episodes(requests([GO_TO]), ToyTextEnv, gen, tok, s)
    assert f"[Task notes]\n1. {plan[0]}\n" in tok.decode(gen.calls[0][0][0])


def test_system_prompt_and_prompt_budget(tok) -> None:
    gen = ScriptedGenerator(tok, lambda call, row, prompt: respond("look"))
    collect_episodes(requests([GO_TO]), ToyTextEnv, gen, tok, settings(max_turns=1, system_prompt="SYS"))
    assert tok.decode(gen.calls[0][0][0]).startswith("<|im_start|>system\nSYS<|im_end|>")
    with pytest.raises(ValueError, match="max_tokens is 50"):
        collect_episodes(requests([GO_TO]), ToyTextEnv, gen, tok, settings(max_prompt_tokens=50))


def test_generator_returning_too_few_samples_is_an_error(tok) -> None:
    class Short(ScriptedGenerator):
        def generate(self, prompts, params):
            return super().generate(prompts, params)[:-1]

    gen = Short(tok, lambda call, row, prompt: respond("look"))
    with pytest.raises(RuntimeError, match="1 samples for 2 prompts"):
        collect_episodes(requests([GO_TO, PLACE]), ToyTextEnv, gen, tok, settings())


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="max_turns"):
        CollectSettings(max_turns=0)
    with pytest.raises(ValueError, match="history_length"):
        CollectSettings(history_length=-1)
    with pytest.raises(ValueError, match="invalid_penalty"):
        CollectSettings(invalid_penalty=-0.1)
    with pytest.raises(ValueError, match="invalid_rule"):
        CollectSettings(invalid_rule="strict")


class GreedyGenerator:
    """Minimal greedy decoding with a real (tiny, random) causal LM, no KV cache."""

    def __init__(self, model, eos_id: int) -> None:
        self.model, self.eos_id = model, eos_id

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        out = []
        for prompt in prompts:
            ids, new, logprobs = list(prompt), [], []
            for _ in range(params.max_new_tokens):
                logits = self.model(torch.tensor([ids])).logits[0, -1]  # [V]
                nxt = int(logits.argmax())
                logprobs.append(float(torch.log_softmax(logits, -1)[nxt]))
                new.append(nxt)
                ids.append(nxt)
                if nxt == self.eos_id:
                    break
            out.append(Sample(tuple(new), tuple(logprobs), "stop" if new[-1] == self.eos_id else "length"))
        return out

    def load_weights(self, named_tensors) -> None:
        pass


def test_real_tiny_model_rollout(tok) -> None:
    # one short episode keeps this fast: ~500-token prompts, 3 new tokens per turn, 2 turns
    gen = GreedyGenerator(tiny_model(len(tok)), tok.eos_token_id)
    s = settings(max_turns=2, history_length=0, sampling=SamplingParams(max_new_tokens=3, temperature=0.0))
    (traj,) = collect_episodes(requests([GO_TO]), ToyTextEnv, gen, tok, s)
    assert len(traj.turns) == 2 and not traj.failed
    for turn in traj.turns:
        assert 1 <= len(turn.response_ids) <= 3 and len(turn.response_logprobs) == len(turn.response_ids)
        assert all(lp <= 0.0 for lp in turn.response_logprobs)
        assert not turn.valid and turn.observation == INVALID_FEEDBACK  # a random model cannot format an action


def test_progress_callback_gets_one_monotone_record_per_turn(tok) -> None:
    tasks = [CLEAN, GO_TO, PLACE]
    plans = expert_plans(tasks)
    gen = ScriptedGenerator(tok, expert_script(plans))
    factory = Factory(reset_failures={GO_TO.task_id: 2})  # one episode fails at reset: finished from the start
    records: list[TurnProgress] = []
    trajs = collect_episodes(requests(tasks), factory, gen, tok, settings(), progress=records.append)

    assert [r.turn for r in records] == list(range(len(gen.calls)))  # one record per turn, after it
    assert all(r.max_turns == 12 and r.total == 3 and r.active + r.finished == 3 for r in records)
    # GO_TO never started; CLEAN and PLACE run until their plans end
    lengths = [len(plan) for task, plan in zip(tasks, plans.values()) if task is not GO_TO]
    assert [r.active for r in records] == [sum(n > t + 1 for n in lengths) for t in range(max(lengths))]
    assert 1 in [r.active for r in records] and records[-1].active == 0
    assert [r.finished for r in records] == sorted(r.finished for r in records)
    generated = [sum(len(s.token_ids) for s in samples) for samples in gen.samples]
    assert [r.tokens for r in records] == [sum(generated[: k + 1]) for k in range(len(generated))]
    assert [r.seconds for r in records] == sorted(r.seconds for r in records) and records[0].seconds >= 0
    assert trajs[1].failed and trajs[0].won and trajs[2].won
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[0].active = 5  # type: ignore[misc]


def test_one_generator_session_holds_the_whole_rollout(tok) -> None:
    import contextlib

    class SessionGenerator(ScriptedGenerator):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            self.opened, self.inside, self.outside_calls = 0, False, 0

        @contextlib.contextmanager
        def session(self):
            self.opened += 1
            self.inside = True
            try:
                yield
            finally:
                self.inside = False

        def generate(self, prompts, params):
            self.outside_calls += not self.inside
            return super().generate(prompts, params)

    tasks = [CLEAN, PLACE]
    gen = SessionGenerator(tok, expert_script(expert_plans(tasks)))
    collect_episodes(requests(tasks), Factory(), gen, tok, settings())
    assert len(gen.calls) > 1 and gen.opened == 1 and gen.outside_calls == 0 and not gen.inside
