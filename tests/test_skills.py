"""Skill library loading, its error messages, and the four skill retrieval strategies."""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdar.skills import (
    FullRetriever,
    KeywordRetriever,
    RandomRetriever,
    Retrieval,
    SkillLibrary,
    SkillLibraryError,
    UCBRetriever,
    builtin_skill_dir,
    format_skill_text,
    load_skill_library,
    make_retriever,
    retrieval_metrics,
)
from sdar.skills.retrieval import keyword_hits, match_goal

ROOT = Path(__file__).resolve().parents[1]

ALFWORLD_TYPES = {
    "pick_and_place_simple": "pick_and_place",
    "pick_two_obj_and_place": "pick_and_place",
    "look_at_obj_in_light": "look_at_obj_in_light",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
}
# both goal phrasings ALFWorld uses for each task type
ALFWORLD_GOALS = [
    ("put some spraybottle on toilet", "pick_and_place"),
    ("put a pen in drawer", "pick_and_place"),
    ("put two cellphone in sofa", "pick_and_place"),
    ("find two cellphone and put them in sofa", "pick_and_place"),
    ("look at alarmclock under the desklamp", "look_at_obj_in_light"),
    ("examine the book with the floorlamp", "look_at_obj_in_light"),
    ("put a clean lettuce in diningtable", "clean"),
    ("clean some lettuce and put it in diningtable", "clean"),
    ("put a hot apple in fridge", "heat"),
    ("heat some apple and put it in fridge", "heat"),
    ("put a cool mug in shelf", "cool"),
    ("cool some mug and put it in shelf", "cool"),
]


def write_library(folder: Path, mapping: object, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    text = mapping if isinstance(mapping, str) else json.dumps(mapping)
    (folder / "skill_mapping.json").write_text(text)
    return folder


def good_mapping() -> dict:
    return {
        "general": ["general_skills.md"],
        "skill_files": {"a": "a.md", "b": "b.md", "c": "c.md"},
        "task_to_skill": {"type_a": "a", "type_b": "b", "type_c": "c"},
        "task_keywords": {"a": ["alpha"], "b": ["beta", "bravo"], "c": ["gamma"]},
    }


GOOD_FILES = {"general_skills.md": "G text\n", "a.md": "A text", "b.md": "B text", "c.md": "\n  C text  \n"}


@pytest.fixture
def lib3(tmp_path: Path) -> SkillLibrary:
    return load_skill_library(write_library(tmp_path / "lib", good_mapping(), GOOD_FILES))


@pytest.fixture(scope="module")
def alfworld() -> SkillLibrary:
    return load_skill_library(builtin_skill_dir("alfworld"))


@pytest.fixture(scope="module")
def toy() -> SkillLibrary:
    return load_skill_library(builtin_skill_dir("toy"))


# ----- loader on the built-in folders ---------------------------------------------------------------------------
def test_builtin_alfworld_maps_all_six_task_types(alfworld: SkillLibrary):
    assert dict(alfworld.task_to_skill) == ALFWORLD_TYPES
    assert list(alfworld.files) == ["pick_and_place", "look_at_obj_in_light", "clean", "heat", "cool"]
    assert [g.name for g in alfworld.general] == ["general_skills"]
    assert set(alfworld.task_keywords) == set(alfworld.files)


def test_builtin_toy_covers_every_toy_task_type(toy: SkillLibrary):
    from sdar.envs.toy import TASK_TYPES

    assert set(toy.task_to_skill) == set(TASK_TYPES)
    assert len(toy.general) == 1
    assert set(toy.files) == set(toy.task_to_skill.values())


@pytest.mark.parametrize("env", ["toy", "alfworld"])
def test_builtin_skill_files_are_numbered_strategies(env: str):
    lib = load_skill_library(builtin_skill_dir(env))
    general_count = len(lib.general[0].text.splitlines())
    assert (8 if env == "alfworld" else 6) <= general_count <= 12
    for skill in (*lib.general, *lib.files.values()):
        lines = skill.text.splitlines()
        assert len(lines) >= 2, skill.path
        for i, line in enumerate(lines, 1):
            assert re.match(rf"{i}\. [A-Z][^:]+: .+ Apply this ", line), f"{skill.path} line {i}: {line!r}"
    for words in lib.task_keywords.values():
        assert all(w == w.lower().strip() and w for w in words)


def test_builtin_skill_dir_unknown_env_lists_available():
    with pytest.raises(SkillLibraryError, match=r"no built-in skills for environment 'nope'.*'alfworld'.*'toy'"):
        builtin_skill_dir("nope")


def test_loaded_records_keep_stripped_text_and_path(lib3: SkillLibrary, tmp_path: Path):
    assert lib3.files["c"].text == "C text"
    assert lib3.files["c"].path == tmp_path / "lib" / "c.md"
    assert lib3.general[0].text == "G text"
    assert lib3.task_keywords["b"] == ("beta", "bravo")


# ----- loader errors ---------------------------------------------------------------------------------------------
def _drop(key: str):
    def edit(m: dict) -> None:
        del m[key]
    return edit


def _set(path: tuple[str, ...], value: object):
    def edit(m: dict) -> None:
        target = m
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
    return edit


MALFORMED = [
    # (id, edit of the mapping, extra file edits, file named in the message, key named in the message)
    ("missing skill_files", _drop("skill_files"), {}, "skill_mapping.json", "'skill_files'"),
    ("missing task_to_skill", _drop("task_to_skill"), {}, "skill_mapping.json", "'task_to_skill'"),
    ("missing task_keywords", _drop("task_keywords"), {}, "skill_mapping.json", "'task_keywords'"),
    ("skill_files not object", _set(("skill_files",), ["a.md"]), {}, "skill_mapping.json", "'skill_files'"),
    ("file missing", _set(("skill_files", "a"), "nothere.md"), {}, "skill_mapping.json", "'skill_files'"),
    ("file in sub-folder", _set(("skill_files", "a"), "../a.md"), {}, "skill_mapping.json", "'skill_files'"),
    ("empty skill file", None, {"b.md": "  \n\n"}, "b.md", "'skill_files'"),
    ("empty general file", None, {"general_skills.md": ""}, "general_skills.md", "'general'"),
    ("general missing", _set(("general",), ["gone.md"]), {}, "skill_mapping.json", "'general'"),
    ("general wrong type", _set(("general",), 3), {}, "skill_mapping.json", "'general'"),
    ("task to unknown skill", _set(("task_to_skill", "type_a"), "zzz"), {}, "skill_mapping.json", "'task_to_skill'"),
    ("keywords unknown skill", _set(("task_keywords", "zzz"), ["x"]), {}, "skill_mapping.json", "'task_keywords'"),
    ("keywords not a list", _set(("task_keywords", "a"), "alpha"), {}, "skill_mapping.json", "'task_keywords'"),
    ("empty keyword", _set(("task_keywords", "a"), ["alpha", " "]), {}, "skill_mapping.json", "'task_keywords'"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_mapping_message_names_file_and_key(tmp_path: Path, case):
    _, edit, file_edits, file_named, key_named = case
    mapping = good_mapping()
    if edit is not None:
        edit(mapping)
    folder = write_library(tmp_path / "lib", mapping, {**GOOD_FILES, **file_edits})
    with pytest.raises(SkillLibraryError) as err:
        load_skill_library(folder)
    msg = str(err.value)
    assert file_named in msg and key_named in msg, msg
    assert isinstance(err.value, ValueError)


def test_missing_folder(tmp_path: Path):
    with pytest.raises(SkillLibraryError, match=r"nowhere: the skill folder does not exist\. Point"):
        load_skill_library(tmp_path / "nowhere")


def test_missing_mapping_file(tmp_path: Path):
    (tmp_path / "a.md").write_text("x")
    with pytest.raises(SkillLibraryError, match=r"skill_mapping\.json: the skill mapping file is missing\. Create"):
        load_skill_library(tmp_path)


def test_invalid_json_reports_position(tmp_path: Path):
    folder = write_library(tmp_path / "lib", '{"skill_files": {,}', GOOD_FILES)
    with pytest.raises(SkillLibraryError, match=r"skill_mapping\.json: invalid JSON at line 1 column 18"):
        load_skill_library(folder)


def test_top_level_must_be_object(tmp_path: Path):
    folder = write_library(tmp_path / "lib", "[1, 2]", GOOD_FILES)
    with pytest.raises(SkillLibraryError, match=r"skill_mapping\.json: the top level is a list"):
        load_skill_library(folder)


def test_general_defaults_to_general_skills_md_when_key_absent(tmp_path: Path):
    mapping = good_mapping()
    del mapping["general"]
    with_file = load_skill_library(write_library(tmp_path / "with", mapping, GOOD_FILES))
    assert [g.text for g in with_file.general] == ["G text"]
    files = {k: v for k, v in GOOD_FILES.items() if k != "general_skills.md"}
    without_file = load_skill_library(write_library(tmp_path / "without", mapping, files))
    assert without_file.general == ()
    mapping["general"] = []
    turned_off = load_skill_library(write_library(tmp_path / "off", mapping, GOOD_FILES))
    assert turned_off.general == ()


# ----- text format -------------------------------------------------------------------------------------------------
def test_text_format_headings_and_order(lib3: SkillLibrary):
    text = format_skill_text(lib3.general, [lib3.files["b"], lib3.files["a"]])
    assert text == "## General skills\nG text\n\n## Skills: b\nB text\n\n## Skills: a\nA text"
    assert format_skill_text((), ()) == ""


def test_text_format_several_general_files(tmp_path: Path):
    mapping = good_mapping()
    mapping["general"] = ["general_skills.md", "extra.md"]
    lib = load_skill_library(write_library(tmp_path / "lib", mapping, {**GOOD_FILES, "extra.md": "E"}))
    text = format_skill_text(lib.general, [lib.files["a"]])
    assert text == "## General skills: general_skills\nG text\n\n## General skills: extra\nE\n\n## Skills: a\nA text"


# ----- keyword retrieval -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task_type", sorted(ALFWORLD_TYPES))
def test_keyword_by_alfworld_task_type(alfworld: SkillLibrary, task_type: str):
    r = KeywordRetriever(alfworld).retrieve(task_type=task_type, goal="irrelevant words: put a hot cool lamp")
    want = ALFWORLD_TYPES[task_type]
    assert r == Retrieval(
        text=format_skill_text(alfworld.general, [alfworld.files[want]]),
        skill_names=(want,),
        strategy="keyword",
        task_type=task_type,
    )
    assert r.text.startswith("## General skills\n1. ")


@pytest.mark.parametrize("goal, want", ALFWORLD_GOALS)
def test_keyword_by_alfworld_goal_when_type_unknown(alfworld: SkillLibrary, goal: str, want: str):
    r = KeywordRetriever(alfworld).retrieve(task_type="", goal=goal)
    assert r.skill_names == (want,)
    assert r.text.startswith("## General skills\n") and f"## Skills: {want}\n" in r.text


def test_keyword_task_type_from_game_path(alfworld: SkillLibrary):
    path = "/data/train/pick_cool_then_place_in_recep-Mug-None-Shelf-1/trial_T2019/game.tw-pddl"
    assert alfworld.resolve_task_type(path) == "pick_cool_then_place_in_recep"
    assert KeywordRetriever(alfworld).retrieve(task_type=path, goal="").skill_names == ("cool",)


def test_keyword_toy_types_and_goals(toy: SkillLibrary):
    retriever = KeywordRetriever(toy)
    for task_type, skill in toy.task_to_skill.items():
        assert retriever.retrieve(task_type=task_type, goal="").skill_names == (skill,)
    goals = {
        "put a clean apple in the fridge.": "clean",
        "put a hot potato on the countertop.": "heat",
        "put a cool mug in the cabinet.": "cool",
        "put a book on the desk.": "pick_and_place",
        "go to the desk.": "go_to",
    }
    for goal, skill in goals.items():
        assert retriever.retrieve(task_type="unknown", goal=goal).skill_names == (skill,)


def test_keyword_no_match_gives_general_only(alfworld: SkillLibrary, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="sdar.skills.retrieval"):
        r = KeywordRetriever(alfworld).retrieve(task_type="mystery", goal="sing a song")
    assert r.skill_names == ()
    assert r.text == format_skill_text(alfworld.general, ())
    assert "'mystery' is not in task_to_skill" in caplog.text


def test_keyword_most_hits_wins_and_ties_go_to_mapping_order(lib3: SkillLibrary):
    # a: alpha (1 hit possible); b: beta, bravo (2); c: gamma
    assert match_goal(lib3, "alpha beta bravo") == "b"  # b has 2 hits, a 1
    assert match_goal(lib3, "gamma alpha") == "a"  # 1 hit each: a comes first in task_keywords
    assert match_goal(lib3, "Gamma ALPHA") == "a"
    assert match_goal(lib3, "alphabet") is None  # whole words only
    # a keyword repeated in the goal counts once: a=1, c=1 -> tie -> a (c would win if repeats counted)
    assert match_goal(lib3, "alpha gamma gamma") == "a"


def test_keyword_hits_whole_words_and_phrases():
    assert keyword_hits("hot", "put a hot apple in fridge")
    assert not keyword_hits("hot", "put a photo in drawer")
    assert keyword_hits("look at", "Look   at the bowl under the desklamp")
    assert not keyword_hits("lamp", "examine the cd with the desklamp")
    assert keyword_hits("desklamp", "examine the cd with the desklamp.")


def test_retrieval_is_logged(lib3: SkillLibrary, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.DEBUG, logger="sdar.skills.retrieval"):
        KeywordRetriever(lib3).retrieve(task_type="type_b", goal="")
    assert "strategy=keyword task_type='type_b' skills=['b']" in caplog.text


# ----- full and random -----------------------------------------------------------------------------------------
def test_full_contains_every_file_in_library_order(alfworld: SkillLibrary):
    r = FullRetriever(alfworld).retrieve(task_type="pick_heat_then_place_in_recep", goal="x")
    assert r.skill_names == tuple(alfworld.files)
    assert r.strategy == "full"
    for skill in (*alfworld.general, *alfworld.files.values()):
        assert skill.text in r.text
    positions = [r.text.index(f"## Skills: {name}\n") for name in alfworld.files]
    assert positions == sorted(positions)


def test_random_is_seeded_and_draws_one_file(lib3: SkillLibrary):
    def draws(seed: int) -> list[tuple[str, ...]]:
        retriever = RandomRetriever(lib3, seed=seed)
        return [retriever.retrieve(task_type="type_a", goal="").skill_names for _ in range(30)]

    first = draws(3)
    assert first == draws(3)
    assert all(len(names) == 1 for names in first)
    assert {names[0] for names in first} == {"a", "b", "c"}
    assert first != draws(4)
    r = RandomRetriever(lib3, seed=0).retrieve(task_type="t", goal="")
    assert r.text.startswith("## General skills\nG text\n\n## Skills: ") and r.strategy == "random"


# ----- UCB ---------------------------------------------------------------------------------------------------------
def test_ucb_tries_each_arm_once_then_follows_hand_computed_scores(lib3: SkillLibrary):
    ucb = UCBRetriever(lib3, c=1.0, seed=0)
    first = [ucb.retrieve(task_type="type_a", goal="") for _ in range(3)]
    assert sorted(r.skill_names[0] for r in first) == ["a", "b", "c"]  # counts grow at retrieval
    rewards = {"a": 1.0, "b": 0.0, "c": 0.5}
    for r in first:
        ucb.update(r, rewards[r.skill_names[0]])
    # N=3, n=1 each: bonus = sqrt(ln 3 / 1) = 1.048147; a = 2.048147, b = 1.048147, c = 1.548147
    bonus = math.sqrt(math.log(3))
    assert ucb.scores("type_a") == pytest.approx({"a": 1 + bonus, "b": bonus, "c": 0.5 + bonus})
    fourth = ucb.retrieve(task_type="type_a", goal="")
    assert fourth.skill_names == ("a",)
    ucb.update(fourth, 0.0)
    # N=4: a = 0.5 + sqrt(ln4/2) = 0.5 + 0.832555 = 1.332555; b = 0 + sqrt(ln4) = 1.177410; c = 0.5 + 1.177410
    assert ucb.scores("type_a") == pytest.approx({"a": 1.332555, "b": 1.177410, "c": 1.677410}, abs=1e-6)
    assert ucb.retrieve(task_type="type_a", goal="").skill_names == ("c",)


def test_ucb_best_is_the_top_mean_and_counts_nothing(lib3: SkillLibrary):
    ucb = UCBRetriever(lib3, c=1.0, seed=0)
    assert ucb.best(task_type="t", goal="").skill_names == ("a",)  # no reward yet: all means 0, first arm
    for r in [ucb.retrieve(task_type="t", goal="") for _ in range(3)]:
        ucb.update(r, {"a": 0.2, "b": 0.9, "c": 0.5}[r.skill_names[0]])
    before = ucb.state_dict()
    assert [ucb.best(task_type="t", goal="").skill_names for _ in range(3)] == [("b",)] * 3
    assert ucb.state_dict() == before  # no pull counted, generator untouched


def test_ucb_c0_is_greedy(lib3: SkillLibrary):
    ucb = UCBRetriever(lib3, c=0.0, seed=1)
    for r in [ucb.retrieve(task_type="t", goal="") for _ in range(3)]:
        ucb.update(r, {"a": 0.2, "b": 0.9, "c": 0.5}[r.skill_names[0]])
    picks = []
    for _ in range(5):
        r = ucb.retrieve(task_type="t", goal="")
        picks.append(r.skill_names[0])
        ucb.update(r, 0.9)  # b keeps mean 0.9
    assert picks == ["b"] * 5


def test_ucb_pending_arm_has_mean_zero(lib3: SkillLibrary):
    ucb = UCBRetriever(lib3, c=1.0, seed=0)
    rs = [ucb.retrieve(task_type="t", goal="") for _ in range(3)]
    ucb.update(rs[0], 1.0)  # the others have no reward yet
    # N=3: rewarded arm 1 + 1.048147, others 0 + 1.048147
    scores = ucb.scores("t")
    assert scores[rs[0].skill_names[0]] == pytest.approx(1 + math.sqrt(math.log(3)))
    assert scores[rs[1].skill_names[0]] == pytest.approx(math.sqrt(math.log(3)))


def test_ucb_bandits_are_per_task_type(lib3: SkillLibrary):
    ucb = UCBRetriever(lib3, c=1.0, seed=0)
    for _ in range(3):
        ucb.retrieve(task_type="type_a", goal="")
    assert ucb.scores("type_b") == {"a": math.inf, "b": math.inf, "c": math.inf}
    # a game path resolves to its task type and shares that bandit
    assert ucb.scores("games/type_a-Apple/trial_1") == ucb.scores("type_a")


def test_ucb_untried_order_is_seeded(lib3: SkillLibrary):
    def order(seed: int) -> list[str]:
        ucb = UCBRetriever(lib3, seed=seed)
        return [ucb.retrieve(task_type="t", goal="").skill_names[0] for _ in range(3)]

    assert order(5) == order(5)
    assert len({tuple(order(s)) for s in range(10)}) > 1


def test_ucb_rejects_bad_inputs(lib3: SkillLibrary):
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        UCBRetriever(lib3, c=-1.0)
    ucb = UCBRetriever(lib3)
    r = ucb.retrieve(task_type="t", goal="")
    with pytest.raises(ValueError, match="not finite"):
        ucb.update(r, float("nan"))
    with pytest.raises(ValueError, match="got a 'full' retrieval"):
        ucb.update(FullRetriever(lib3).retrieve(task_type="t", goal=""), 1.0)
    with pytest.raises(ValueError, match="never retrieved"):
        ucb.update(Retrieval(text="", skill_names=("a",), strategy="ucb", task_type="other"), 1.0)


def test_ucb_state_round_trip(lib3: SkillLibrary):
    ucb = UCBRetriever(lib3, c=0.7, seed=2)
    for i in range(7):
        r = ucb.retrieve(task_type=f"type_{'ab'[i % 2]}", goal="")
        ucb.update(r, float(i % 3) / 2)
    state = json.loads(json.dumps(ucb.state_dict()))  # plain, JSON-serialisable values
    clone = UCBRetriever(lib3, c=0.7, seed=99)
    clone.load_state_dict(state)
    assert clone.scores("type_a") == ucb.scores("type_a")
    for i in range(12):
        task_type = f"type_{'abc'[i % 3]}"
        a, b = ucb.retrieve(task_type=task_type, goal=""), clone.retrieve(task_type=task_type, goal="")
        assert a == b
        ucb.update(a, 1.0 if i % 2 else 0.0)
        clone.update(b, 1.0 if i % 2 else 0.0)
    assert clone.state_dict() == ucb.state_dict()


def test_ucb_state_from_other_library_is_rejected(lib3: SkillLibrary, alfworld: SkillLibrary):
    ucb = UCBRetriever(alfworld)
    ucb.retrieve(task_type="look_at_obj_in_light", goal="")
    with pytest.raises(ValueError, match="load the state with the skill library it was saved with"):
        UCBRetriever(lib3).load_state_dict(ucb.state_dict())


# ----- factory, metrics, import boundary ---------------------------------------------------------------------------
def test_make_retriever(lib3: SkillLibrary):
    assert isinstance(make_retriever("keyword", lib3), KeywordRetriever)
    assert isinstance(make_retriever("full", lib3), FullRetriever)
    assert isinstance(make_retriever("random", lib3, seed=3), RandomRetriever)
    ucb = make_retriever("ucb", lib3, ucb_c=0.25, seed=1)
    assert isinstance(ucb, UCBRetriever) and ucb.c == 0.25
    with pytest.raises(ValueError, match="unknown skill retrieval strategy 'bm25'"):
        make_retriever("bm25", lib3)  # type: ignore[arg-type]


def test_retrieval_metrics():
    rs = [
        Retrieval("", ("a",), "keyword", "t"),
        Retrieval("", ("a", "b"), "full", "t"),
        Retrieval("", (), "keyword", "t"),
        Retrieval("", ("b",), "keyword", "t"),
    ]
    # a in 2 of 4, b in 2 of 4, none in 1 of 4, mean count (1+2+0+1)/4 = 1.0
    assert retrieval_metrics(rs) == {
        "skills/selected/a": 0.5, "skills/selected/b": 0.5, "skills/none": 0.25, "skills/count": 1.0,
    }
    assert retrieval_metrics([]) == {}


def test_skills_package_does_not_import_torch():
    code = (
        "import sys, sdar.skills\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
