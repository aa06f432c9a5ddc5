"""The offline WebShop: catalogue, pages and navigation, episode rules, expert, contract, prompt, parser and skills."""

from __future__ import annotations

import pickle
import re
from collections import Counter

import pytest

from sdar.envs.base import EnvError, TaskSpec, TextEnv
from sdar.envs.checker import check_env
from sdar.envs.webshop import (
    CATEGORIES,
    SEARCH_PLACEHOLDER,
    WebShopEnv,
    WebShopFactory,
    WebShopTaskSource,
    expert_policy,
    generate_catalog,
    load_catalog,
    load_world,
    webshop_reward,
    write_catalog,
)
from sdar.envs.webshop.env import _best_choice
from sdar.envs.webshop.template import WEBSHOP_TEMPLATE, parse_webshop_action
from sdar.envs.registry import get_env_spec
from sdar.prompts.render import build_context, render_user_message
from sdar.records import EnvInfo
from sdar.skills.library import load_skill_library, builtin_skill_dir
from sdar.skills.retrieval import KeywordRetriever, match_goal

TASK = "eval-0003"


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.fixture()
def env(world):
    e = WebShopEnv(world)
    yield e
    e.close()


def run_expert(env: WebShopEnv, task_id: str) -> list:
    obs, info = env.reset(task_id=task_id, seed=0)
    results = []
    while not results or not (results[-1].terminated or results[-1].truncated):
        results.append(env.step(expert_policy(obs, info)))
        obs, info = results[-1].observation, results[-1].info
    return results


# ----- catalogue -------------------------------------------------------------------------------------------
def test_catalogue_size_categories_and_splits(world):
    cat = world.catalog
    assert len(cat.products) >= 1000
    counts = Counter(p.category for p in cat.products)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) >= 100
    assert len({p.asin for p in cat.products}) == len(cat.products)
    assert len(cat.goals["eval"]) == 128 and len(cat.goals["train"]) == 1000
    for split in ("train", "eval"):
        assert {g.category for g in cat.goals[split]} == set(CATEGORIES)
    eval_asins = {g.asin for g in cat.goals["eval"]}
    assert len(eval_asins) == 128 and not eval_asins & {g.asin for g in cat.goals["train"]}
    p = cat.products[0]
    assert p.attributes and p.options and p.features and p.reviews and p.description and p.price > 0


def test_every_goal_is_met_by_its_source_product(world):
    for goals in world.catalog.goals.values():
        for g in goals:
            product = world.products[world.by_asin[g.asin]]
            assert webshop_reward(product, g, _best_choice(product, g)).score == 1.0, g.goal_id
            assert g.instruction.endswith(f"and price lower than {g.price_upper:.2f} dollars")
            assert g.product_type in g.instruction and set(g.attributes) <= set(product.attributes)


def test_generation_is_deterministic_and_seeded():
    a, b = generate_catalog(3, products_per_type=2, num_train=6, num_eval=4), generate_catalog(
        3, products_per_type=2, num_train=6, num_eval=4)
    assert a == b
    c = generate_catalog(4, products_per_type=2, num_train=6, num_eval=4)
    assert [p.asin for p in c.products] != [p.asin for p in a.products]
    with pytest.raises(ValueError):
        generate_catalog(0, products_per_type=1, num_eval=10_000)


def test_write_and_load_round_trip_and_env_on_a_saved_catalogue(tmp_path):
    small = generate_catalog(5, products_per_type=2, num_train=6, num_eval=4)
    folder = write_catalog(tmp_path / "shop", small)
    assert load_catalog(folder) == small
    env = WebShopEnv(data_dir=folder)
    assert all(run_expert(env, t.task_id)[-1].info.won for t in WebShopTaskSource(str(folder)).tasks("eval"))
    with pytest.raises(FileNotFoundError, match="write_catalog"):
        load_catalog(tmp_path / "missing")


# ----- pages and navigation --------------------------------------------------------------------------------
def test_search_results_paging_and_item_pages(world):
    env = WebShopEnv(world, max_turns=50)  # this walk takes more than the default 15 steps
    obs, info = env.reset(task_id=TASK, seed=0)
    assert obs == "Search" and info.admissible_actions == (SEARCH_PLACEHOLDER,)
    res = env.step("search[arch support slide sandals]")
    parts = res.observation.split(" [SEP] ")
    assert parts[:3] == ["Back to Search", "Page 1 (Total results: 50)", "Next >"]
    assert len(parts) == 3 + 3 * 10 and parts[5].startswith("$")
    acts = res.info.admissible_actions
    assert acts[:2] == ("click[back to search]", "click[next >]") and len(acts) == 12
    assert "click[< prev]" not in acts and SEARCH_PLACEHOLDER not in acts
    page1 = acts[2:]

    res = env.step("click[Next >]")  # case does not matter
    assert "Page 2 (Total results: 50) [SEP] < Prev [SEP] Next >" in res.observation
    assert res.info.admissible_actions[2:] != page1
    for _ in range(3):
        res = env.step("click[next >]")
    assert "Page 5" in res.observation and "Next >" not in res.observation
    assert "click[next >]" not in res.info.admissible_actions
    for _ in range(4):
        res = env.step("click[< prev]")
    assert res.info.admissible_actions[2:] == page1

    asin = page1[0][len("click[") : -1]
    res = env.step(page1[0])
    product = world.products[world.by_asin[asin.upper()]]
    assert res.info.extra["page"] == "item" and res.info.extra["asin"] == product.asin
    assert product.title in res.observation and f"Price: ${product.price:.2f}" in res.observation
    assert res.observation.endswith("Description [SEP] Features [SEP] Reviews [SEP] Buy Now")
    values = [v for _, vs in product.options for v in vs]
    assert res.info.admissible_actions == (
        "click[back to search]", "click[< prev]", *(f"click[{v}]" for v in values),
        "click[description]", "click[features]", "click[reviews]", "click[buy now]")

    group, first = product.options[0][0], product.options[0][1][0]
    second = product.options[0][1][1]
    res = env.step(f"click[{first}]")
    assert f"Selected options: {group}: {first}" in res.observation
    res = env.step(f"click[{second}]")  # a new value replaces the old one of the same group
    assert f"Selected options: {group}: {second}" in res.observation and f"{group}: {first}" not in res.observation

    for page, expected in (("description", product.description), ("features", product.features[0]),
                           ("reviews", product.reviews[0][1])):
        res = env.step(f"click[{page}]")
        assert res.observation.startswith("Back to Search [SEP] < Prev [SEP] ") and expected in res.observation
        assert res.info.admissible_actions == ("click[back to search]", "click[< prev]")
        res = env.step("click[< prev]")
        assert res.info.extra["page"] == "item" and f"{group}: {second}" in res.observation  # selection kept
    assert env.state.page == "item"

    res = env.step("click[< prev]")
    assert res.info.extra["page"] == "results" and res.info.admissible_actions[2:] == page1
    res = env.step("click[back to search]")
    assert res.observation == "Search" and res.info.admissible_actions == (SEARCH_PLACEHOLDER,)
    assert not res.terminated and not res.truncated and res.reward == 0.0


@pytest.mark.parametrize("setup, action", [
    ([], "click[buy now]"),  # nothing to click on the search page
    ([], "search[<your query>]"),  # the placeholder is not a query
    ([], "search[   ]"),
    ([], "xyzzy plugh"),
    (["search[hoodie]"], "search[jeans]"),  # no search bar on a results page
    (["search[hoodie]"], "click[b0nothere00]"),
    (["search[hoodie]"], "click[< prev]"),  # page 1 has no previous page
])
def test_invalid_actions_change_nothing(env, setup, action):
    env.reset(task_id=TASK, seed=0)
    for a in setup:
        env.step(a)
    before_state, before = env.state, env.world.engine.admissible(env.state)
    res = env.step(action)
    assert res.observation.startswith("Invalid action:") and res.observation.endswith("Nothing happens.")
    assert env.state == before_state and res.info.admissible_actions == before
    assert res.reward == 0.0 and not res.terminated and not res.truncated and res.info.extra["turn"] == len(setup) + 1


def test_truncation_at_15_turns(env):
    env.reset(task_id=TASK, seed=0)
    results = [env.step("click[nothing]") for _ in range(15)]
    assert not any(r.truncated for r in results[:14])
    last = results[-1]
    assert last.truncated and not last.terminated and last.reward == 0.0 and not last.info.won
    assert last.info.admissible_actions == () and last.info.extra["score"] == 0.0
    with pytest.raises(EnvError, match="reset"):
        env.step("search[x]")
    short = WebShopEnv(env.world, max_turns=2)
    short.reset(task_id=TASK, seed=0)
    assert not short.step("search[hoodie]").truncated and short.step("click[next >]").truncated


def test_buying_ends_the_episode_with_the_webshop_score(env, world):
    env.reset(task_id="eval-0000", seed=0)
    goal = world.goal("eval-0000")
    env.step("search[zzz unrelated words hoodie]")
    env.step(env.world.engine.admissible(env.state)[2])  # first listed product, no options chosen
    product = world.products[env.state.product]
    res = env.step("click[buy now]")
    expected = webshop_reward(product, goal, {}).score
    assert res.terminated and not res.truncated and res.info.extra["score"] == pytest.approx(expected)
    assert expected < 1.0 and res.reward == 0.0 and not res.info.won
    assert res.observation.startswith("Thank you for shopping with us!") and f"{expected:.4f}" in res.observation
    assert env.last_breakdown is not None and env.last_breakdown.score == expected
    with pytest.raises(EnvError):
        env.step("click[buy now]")


def test_expert_wins_every_eval_and_train_goal(world):
    env = WebShopEnv(world, win_reward=1.5)
    lengths = Counter()
    for split in ("eval", "train"):
        for task in WebShopTaskSource().tasks(split):
            results = run_expert(env, task.task_id)
            last = results[-1]
            assert last.terminated and last.info.won and last.reward == 1.5, task.task_id
            assert last.info.extra["score"] == 1.0
            assert all(r.reward == 0.0 and not r.info.won for r in results[:-1])
            lengths[len(results)] += 1
    assert max(lengths) <= 15


def test_info_fields(env, world):
    obs, info = env.reset(task_id=TASK, seed=0)
    goal = world.goal(TASK)
    assert info.task_id == TASK and info.task_type == goal.category and info.goal == goal.instruction
    text = info.privileged["goal_attributes"]
    for piece in (goal.product_type, *goal.attributes, *(v for _, v in goal.options), f"{goal.price_upper:.2f}"):
        assert piece in text
    assert info.extra["score"] == 0.0 and info.extra["expert_action"].startswith("search[")
    assert env.reset(task_id=TASK, seed=7) == (obs, info)  # the seed does not change the episode


def test_life_cycle_errors(world):
    env = WebShopEnv(world)
    assert isinstance(env, TextEnv) and env.name == "webshop"
    with pytest.raises(EnvError, match="reset"):
        env.step("search[x]")
    with pytest.raises(EnvError, match="unknown WebShop task id"):
        env.reset(task_id="nope-1", seed=0)
    env.close()
    env.close()
    with pytest.raises(EnvError, match="closed"):
        env.reset(task_id=TASK, seed=0)
    with pytest.raises(ValueError):
        WebShopEnv(world, max_turns=0)


def test_check_env_with_expert_and_random_walks(world):
    source = WebShopTaskSource()
    tasks = source.tasks("eval")[:6] + source.tasks("train")[:3]
    factory = WebShopFactory()
    check_env(factory, tasks, policy=expert_policy, max_steps=15)
    check_env(factory, tasks[:3], max_steps=15)


def test_task_source_and_picklable_factory():
    source = WebShopTaskSource()
    evals = source.tasks("eval")
    assert len(evals) == 128 and evals[0] == TaskSpec("eval-0000", evals[0].task_type)
    assert {t.task_type for t in evals} == set(CATEGORIES)
    assert len(source.tasks("train")) == 1000
    with pytest.raises(ValueError, match="unknown split"):
        source.tasks("test")
    factory = pickle.loads(pickle.dumps(WebShopFactory(max_turns=9, win_reward=2.0)))
    env = factory()
    assert env.max_turns == 9 and env.win_reward == 2.0


# ----- prompt and parser -----------------------------------------------------------------------------------
def test_template_is_registered_and_renders():
    assert get_env_spec("webshop").template is WEBSHOP_TEMPLATE
    ctx = build_context("webshop", "i need socks", 0, "Search", (SEARCH_PLACEHOLDER,), (), 2)
    text = render_user_message(ctx)
    assert "Shopping request: i need socks" in text and "'search[<your query>]'" in text
    assert "<think>" in text and "<action>" in text


@pytest.mark.parametrize("response, admissible, action, valid", [
    ("<think>go</think><action>search[Red Hoodie]</action>", (SEARCH_PLACEHOLDER,), "search[red hoodie]", True),
    ("<think>go</think><action>search[<your query>]</action>", (SEARCH_PLACEHOLDER,), "search[<your query>]", False),
    ("<think>go</think><action>search[]</action>", (SEARCH_PLACEHOLDER,), "search[]", False),
    ("<think>go</think><action>click[next >]</action>", (SEARCH_PLACEHOLDER,), "click[next >]", False),
    ("<think>go</think><action>search[jeans]</action>", ("click[next >]",), "search[jeans]", False),
    ("<think>go</think><action>click[Next >]</action>", ("click[next >]",), "click[next >]", True),
    ("no tags", (SEARCH_PLACEHOLDER,), "", False),
])
def test_parse_webshop_action(response, admissible, action, valid):
    parsed = parse_webshop_action(response, admissible)
    assert (parsed.action, parsed.valid) == (action, valid)


# ----- skills ----------------------------------------------------------------------------------------------
def test_skills_load_and_follow_the_numbered_format():
    lib = load_skill_library(builtin_skill_dir("webshop"))
    assert set(lib.task_to_skill) == set(CATEGORIES)
    assert set(lib.files) == {"apparel", "footwear", "home_decor", "electronics", "accessories", "beauty_health",
                              "other"}
    assert len(lib.general) == 1 and 8 <= len(lib.general[0].text.splitlines()) <= 12
    for skill in (*lib.general, *lib.files.values()):
        for i, line in enumerate(skill.text.splitlines(), 1):
            assert re.match(rf"{i}\. [A-Z][^:]+: .+ Apply this ", line), f"{skill.path} line {i}"
    assert all(lib.task_keywords[name] for name in lib.files)


@pytest.mark.parametrize("goal, skill", [
    ("i need a long lasting eye shadow in pink, and price lower than 30.00 dollars", "beauty_health"),
    ("i am looking for men's running shoes with rubber sole, size 10", "footwear"),
    ("gluten free snack bars in peanut butter flavor", "other"),
    ("a machine washable hoodie in black, size large", "apparel"),
    ("noise cancelling wireless earbuds", "electronics"),
    ("blackout curtains for the living room", "home_decor"),
    ("an rfid blocking leather wallet", "accessories"),
])
def test_keyword_retrieval_maps_goal_text_to_categories(goal, skill):
    assert match_goal(load_skill_library(builtin_skill_dir("webshop")), goal) == skill


def test_keyword_retrieval_on_every_generated_goal(world):
    retriever = KeywordRetriever(load_skill_library(builtin_skill_dir("webshop")))
    lib = retriever.library
    for goals in world.catalog.goals.values():
        for g in goals:
            assert match_goal(lib, g.instruction) == lib.task_to_skill[g.category], g.instruction
    r = retriever.retrieve(task_type="grocery", goal="anything")
    assert r.skill_names == ("other",) and r.text.startswith("## General skills")


def test_expert_policy_needs_an_action():
    with pytest.raises(EnvError):
        expert_policy("", EnvInfo(task_id="t"))
