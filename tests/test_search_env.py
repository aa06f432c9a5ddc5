"""Search-QA action parsing, the environment's episode rules, retry behaviour, the contract and the prompt template."""

from __future__ import annotations

import pytest

from sdar.envs.base import EnvError
from sdar.envs.checker import check_env
from sdar.envs.search.actions import format_action, make_search_parser, parse_search_action, split_action
from sdar.envs.search.data import QAItem
from sdar.envs.search.env import (
    INVALID_SEARCH_FEEDBACK,
    SEARCH_FAILED_FEEDBACK,
    SearchQAEnv,
    expert_policy,
    gold_answers,
)
from sdar.envs.search.retrievers import BM25Retriever, Passage
from sdar.envs.search.template import SEARCH_TEMPLATE
from sdar.envs.registry import get_env_spec, get_parser
from sdar.prompts.render import build_context, render_user_message

# ----- parser ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<think>x</think><search>a</search><answer>b</answer>", "both_tags"),
        ("<think>I could <answer>guess</answer></think><search>q</search>", "both_tags"),
        ("<think>just thinking</think> Paris", "missing_action_tag"),
        ("", "missing_action_tag"),
        ("<search>a</search><search>b</search>", "duplicate_search_tag"),
        ("<answer>a</answer> and again <answer>b</answer>", "duplicate_answer_tag"),
        ("<search>a</search></search>", "duplicate_search_tag"),
        ("<search>unclosed query", "malformed_tags"),
        ("</answer>Paris<answer>", "malformed_tags"),
        ("<search>   </search>", "empty_action"),
        ("<answer></answer>", "empty_action"),
    ],
)
def test_invalid_responses(text: str, reason: str) -> None:
    parsed = parse_search_action(text, None)
    assert (parsed.valid, parsed.reason, parsed.action) == (False, reason, "")


def test_valid_search_and_answer_give_the_canonical_tag_form() -> None:
    s = parse_search_action("<think>need the year</think>\n<search>  Aubrey   Beardsley\nbirth </search> trailing")
    assert (s.valid, s.reason, s.action) == (True, "ok", "<search>Aubrey Beardsley birth</search>")
    a = parse_search_action("<answer> Paris </answer>", ["ignored"])  # no think needed by default; list ignored
    assert (a.valid, a.action) == (True, "<answer>Paris</answer>")


def test_require_think_option() -> None:
    strict = make_search_parser(require_think=True)
    assert strict("<think>t</think><answer>Paris</answer>", None).valid
    assert strict("<answer>Paris</answer>", None).reason == "missing_think_tag"
    assert strict("<think>a</think><think>b</think><answer>Paris</answer>", None).reason == "duplicate_think_tag"
    assert strict("<answer>Paris</answer><think>t</think>", None).reason == "malformed_tags"


def test_collector_routing_uses_the_search_parser() -> None:
    assert get_parser("search") is parse_search_action


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("<search>capital of Laos</search>", ("search", "capital of Laos")),
        ("<think>t</think><answer>Vientiane</answer>", ("answer", "Vientiane")),
        ("search: capital   of Laos", ("search", "capital of Laos")),
        ("Answer:Vientiane", ("answer", "Vientiane")),
        ("answer:   ", None),
        ("go to desk 1", None),
        ("<search>a</search><answer>b</answer>", None),
    ],
)
def test_split_action(action: str, expected: tuple[str, str] | None) -> None:
    assert split_action(action) == expected


def test_format_action_round_trips() -> None:
    assert format_action("answer", " New  York ") == "<answer>New York</answer>"
    assert split_action(format_action("search", "x y")) == ("search", "x y")


# ----- environment -------------------------------------------------------------------------------------------

PASSAGES = [
    Passage("d0", "Laos", "Country in Southeast Asia. Laos is a landlocked country; its capital is Vientiane."),
    Passage("d1", "Vientiane", "Capital of Laos. Vientiane is the capital and largest city of Laos."),
    Passage("d2", "Mekong", "River in Southeast Asia flowing through Laos and Cambodia."),
    Passage("d3", "Iron", "Chemical element. Iron is a chemical element with symbol Fe and atomic number 26."),
]
QUESTIONS = [
    QAItem("q-capital", "What is the capital of Laos?", ("Vientiane",), "wiki_attribute", "train"),
    QAItem("q-iron", "Which chemical element has atomic number 26?", ("Iron", "Fe"), "wiki_reverse", "eval"),
]


class CountingRetriever:
    """Wraps a retriever and counts calls."""

    def __init__(self, inner: BM25Retriever) -> None:
        self.inner, self.calls = inner, 0

    def retrieve(self, queries: list[str], k: int) -> list[list[Passage]]:
        self.calls += 1
        return self.inner.retrieve(queries, k)


class FlakyRetriever:
    """Fails ``failures`` times, then answers with one fixed passage."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def retrieve(self, queries: list[str], k: int) -> list[list[Passage]]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("retrieval backend down")
        return [[PASSAGES[1]] for _ in queries]


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever(PASSAGES)


def make_env(retriever, **kw) -> SearchQAEnv:
    return SearchQAEnv(retriever, QUESTIONS, **kw)


def test_episode_search_then_correct_answer(bm25: BM25Retriever) -> None:
    env = make_env(bm25)
    assert env.name == "search"
    obs, info = env.reset(task_id="q-capital", seed=3)
    assert obs == "What is the capital of Laos?" and info.goal == obs
    assert info.task_type == "wiki_attribute" and info.admissible_actions == ()
    assert info.privileged == {"gold_answer": "Vientiane"}
    assert info.extra["em"] == 0.0 and info.extra["turn"] == 0

    r = env.step("<search>capital of Laos</search>")
    # three passages mention Laos; the two naming its capital rank first
    assert r.observation.startswith("\n<information>Doc 1(Title: ") and r.observation.endswith("</information>\n")
    assert r.observation.count("Doc ") == 3 and "Doc 4" not in r.observation
    assert "(Title: Vientiane)" in r.observation and "(Title: Iron)" not in r.observation
    assert (r.reward, r.terminated, r.truncated, r.info.won) == (0.0, False, False, False)
    assert r.info.extra["searches"] == 1

    r = env.step("<answer>vientiane.</answer>")
    assert (r.reward, r.terminated, r.truncated, r.info.won) == (1.0, True, False, True)
    assert r.info.extra["em"] == 1.0 and r.info.extra["f1"] == 1.0 and r.info.extra["answer"] == "vientiane."
    with pytest.raises(EnvError):
        env.step("<answer>again</answer>")


def test_wrong_answer_ends_with_zero_reward_and_partial_f1(bm25: BM25Retriever) -> None:
    env = make_env(bm25, win_reward=2.0)
    env.reset(task_id="q-capital", seed=0)
    r = env.step("answer: Vientiane city")
    # tokens [vientiane, city] vs [vientiane]: P = 1/2, R = 1 -> F1 = 2/3
    assert (r.reward, r.terminated, r.info.won, r.info.extra["em"]) == (0.0, True, False, 0.0)
    assert r.info.extra["f1"] == pytest.approx(2 / 3)
    env.reset(task_id="q-capital", seed=0)
    assert env.step("answer: Vientiane").reward == 2.0


def test_any_gold_answer_counts_and_privileged_lists_them(bm25: BM25Retriever) -> None:
    env = make_env(bm25)
    _, info = env.reset(task_id="q-iron", seed=0)
    assert gold_answers(info) == ("Iron", "Fe")
    assert env.step("<answer>Fe</answer>").info.won


def test_invalid_turn_gives_feedback_without_retrieval(bm25: BM25Retriever) -> None:
    counting = CountingRetriever(bm25)
    env = make_env(counting)
    env.reset(task_id="q-capital", seed=0)
    r = env.step("<search>a</search><answer>b</answer>")
    assert r.observation == INVALID_SEARCH_FEEDBACK and counting.calls == 0
    assert (r.reward, r.terminated, r.truncated) == (0.0, False, False)
    assert r.info.extra["valid"] is False and r.info.extra["turn"] == 1
    r = env.step("<search>Laos</search>")
    assert counting.calls == 1 and r.info.extra["valid"] is True


def test_turn_limit_truncates(bm25: BM25Retriever) -> None:
    env = make_env(bm25, max_turns=2)
    env.reset(task_id="q-capital", seed=0)
    assert not env.step("<search>Laos</search>").truncated
    r = env.step("not an action")  # invalid turns count too
    assert (r.terminated, r.truncated, r.info.won) == (False, True, False)
    with pytest.raises(EnvError):
        env.step("<answer>Vientiane</answer>")
    env.reset(task_id="q-capital", seed=0)  # a new episode on the same instance
    assert env.step("<answer>Vientiane</answer>").info.won


def test_retriever_failure_is_retried_with_exponential_backoff() -> None:
    sleeps: list[float] = []
    flaky = FlakyRetriever(failures=2)
    env = make_env(flaky, search_retries=2, search_backoff=0.01, sleep=sleeps.append)
    env.reset(task_id="q-capital", seed=0)
    r = env.step("<search>capital of Laos</search>")
    assert flaky.calls == 3 and sleeps == [0.01, 0.02]
    assert "(Title: Vientiane)" in r.observation and r.info.extra["search_failed"] is False


def test_retriever_failure_after_all_retries_gives_an_error_observation() -> None:
    sleeps: list[float] = []
    broken = FlakyRetriever(failures=10**6)
    env = make_env(broken, search_retries=3, search_backoff=0.001, sleep=sleeps.append)
    env.reset(task_id="q-capital", seed=0)
    r = env.step("<search>capital of Laos</search>")
    assert r.observation == SEARCH_FAILED_FEEDBACK and broken.calls == 4
    assert sleeps == pytest.approx([0.001, 0.002, 0.004])
    assert (r.reward, r.terminated, r.truncated) == (0.0, False, False) and r.info.extra["search_failed"]
    assert env.step("<answer>Vientiane</answer>").info.won  # the episode goes on


def test_life_cycle_errors(bm25: BM25Retriever) -> None:
    env = make_env(bm25)
    with pytest.raises(EnvError):
        env.step("<search>x</search>")
    with pytest.raises(ValueError, match="unknown Search-QA task id"):
        env.reset(task_id="nope", seed=0)
    env.close()
    env.close()
    with pytest.raises(EnvError):
        env.reset(task_id="q-capital", seed=0)
    with pytest.raises(ValueError, match="unique"):
        SearchQAEnv(bm25, QUESTIONS + QUESTIONS[:1])


def test_check_env_passes_with_the_expert(bm25: BM25Retriever) -> None:
    from sdar.envs.search.data import SearchTaskSource

    tasks = SearchTaskSource(QUESTIONS).tasks("train") + SearchTaskSource(QUESTIONS).tasks("eval")
    check_env(lambda: make_env(bm25), tasks, policy=expert_policy, max_steps=4)
    env = make_env(bm25)
    obs, info = env.reset(task_id="q-iron", seed=0)
    first = expert_policy(obs, info)
    assert first == "<search>Which chemical element has atomic number 26?</search>"
    r = env.step(first)
    assert env.step(expert_policy(r.observation, r.info)).info.won


def test_check_env_without_policy_uses_the_probe_and_truncates(bm25: BM25Retriever) -> None:
    from sdar.envs.base import TaskSpec

    check_env(lambda: make_env(bm25, max_turns=3), [TaskSpec("q-capital", "wiki_attribute")], max_steps=3)


# ----- prompt template ---------------------------------------------------------------------------------------


def test_search_template_is_registered_and_renders_the_search_instructions() -> None:
    assert get_env_spec("search").template is SEARCH_TEMPLATE
    first = render_user_message(build_context("search", "What is the capital of Laos?", 0, "What is the capital "
                                              "of Laos?", (), (), 4))
    assert "Your question: What is the capital of Laos?" in first
    assert "<search> your query </search>" in first and "<answer>Beijing</answer>" in first
    assert "<think> </think>" in first and "Actions you can take now" not in first
    info = "\n<information>Doc 1(Title: Laos) ...</information>\n"
    later = render_user_message(build_context("search", "Q?", 1, info, (), [("Q?", "<search>Laos</search>")], 4))
    assert "Step 1 action: <search>Laos</search>" in later and "Latest result: " in later


def test_factory_shares_one_retriever_and_pickles_without_it() -> None:
    import pickle

    from sdar.envs.search.env import SearchEnvFactory

    factory = SearchEnvFactory(questions=tuple(QUESTIONS), passages=tuple(PASSAGES), max_turns=3)
    a, b = factory(), factory()
    assert a.retriever is b.retriever and isinstance(a.retriever, BM25Retriever) and a.max_turns == 3
    clone = pickle.loads(pickle.dumps(factory))
    assert clone._retriever is None  # rebuilt in the receiving process
    env = clone()
    env.reset(task_id="q-capital", seed=0)
    assert "(Title: Vientiane)" in env.step("<search>capital of Laos</search>").observation
