"""The SQuAD v1.1 schema: a JSON file of articles, paragraphs, questions and answers, or the
hub's rows (``rajpurkar/squad``).

Every question has an ``id`` (text, unique across the file: predictions are matched to gold
answers by id), a ``question`` and its paragraph's ``context`` (non-blank text), and at least
one answer ``{text, answer_start}``: non-blank text found at ``answer_start`` (a whole number ≥
0, not "13") in the context. A fault names the file, the line of the question (SQuAD files are
often one line long, so also the article, paragraph and question numbers) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import datasets
from pydantic import Field, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict

from obert.data.schema.base import STRICT, RowError, Text, explain, fail, short
from obert.errors import ObertError

HINT = ("SQuAD v1.1 is {data: [{title, paragraphs: [{context, qas: [{id, question, answers: "
        "[{text, answer_start}]}]}]}]}: text everywhere but answer_start, a whole number ≥ 0")


@with_config(STRICT)
class SquadAnswer(TypedDict):
    text: Text
    answer_start: Annotated[int, Field(ge=0)]


@with_config(STRICT)
class SquadQuestion(TypedDict):
    id: Text
    question: Text
    answers: list[SquadAnswer]


@with_config(STRICT)
class SquadParagraph(TypedDict):
    context: Text
    qas: list[SquadQuestion]


@with_config(STRICT)
class SquadArticle(TypedDict):
    title: NotRequired[str | None]
    paragraphs: list[SquadParagraph]


@with_config(STRICT)
class SquadFile(TypedDict):
    data: list[SquadArticle]


@with_config(STRICT)
class SquadRow(SquadQuestion):
    """One question of the hub's layout, its answers as a list of {text, answer_start}."""

    title: NotRequired[str | None]
    context: Text


_FILE = TypeAdapter(SquadFile)
_ROWS = TypeAdapter(list[SquadRow])


def squad_json(raw: Any, text: str, where: str) -> datasets.Dataset:
    """The questions of a parsed SQuAD JSON file (``text``: the file, to find lines in)."""
    if not isinstance(raw, dict) or "data" not in raw:
        raise ObertError(f"{where} is not a SQuAD-format JSON file: it needs a top-level "
                         "'data' list of articles")
    try:
        doc = _FILE.validate_python(raw)
    except ValidationError as e:
        loc = tuple(e.errors(include_url=False)[0]["loc"])
        depth = next((i for i in range(len(loc), 0, -1) if isinstance(loc[i - 1], int)
                      and i in (2, 4, 6)), 0)  # data[i], paragraphs[j], qas[k]
        at = _where_in_json(raw, text, loc[1:depth:2])
        fail(where, at, explain(e, skip=depth)[1], HINT)
    rows, places = [], []
    for i, article in enumerate(doc["data"]):
        for j, para in enumerate(article["paragraphs"]):
            for k, qa in enumerate(para["qas"]):
                rows.append({"id": qa["id"], "title": article.get("title") or "",
                             "context": para["context"], "question": qa["question"],
                             "answers": qa["answers"]})
                places.append((i, j, k))

    def at(n: int) -> str:  # the nth question with this id is the nth occurrence of it
        qid = rows[n]["id"]
        return _where_in_json(raw, text, places[n], nth=sum(
            r["id"] == qid for r in rows[: n + 1]))

    return _checked(rows, at, where)


def squad_rows(records: list[dict], where: str) -> datasets.Dataset:
    """The questions of the hub's layout: id, title, context, question and answers
    {text: [...], answer_start: [...]}; ``row N`` names a row."""
    flat = []
    for n, rec in enumerate(records):
        answers = rec.get("answers")
        if isinstance(answers, dict):
            texts, starts = answers.get("text") or [], answers.get("answer_start") or []
            if len(texts) != len(starts):
                fail(where, f"row {n + 1}", f"answers has {len(texts)} texts but "
                     f"{len(starts)} answer_starts", HINT)
            answers = [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=True)]
        flat.append({**rec, "answers": answers})
    try:
        valid = _ROWS.validate_python(flat)
    except ValidationError as e:
        loc, what = explain(e, skip=1)
        fail(where, f"row {loc[0] + 1}", what, HINT)
    rows = [{**r, "title": r.get("title") or ""} for r in valid]
    return _checked(rows, lambda n: f"row {n + 1}", where)


def _checked(rows: list[dict], at: Callable[[int], str], where: str) -> datasets.Dataset:
    """Every answer where it says it is, every id once; the rows as a Dataset."""
    seen: dict[str, int] = {}
    for n, row in enumerate(rows):
        try:
            _check_answers(row["context"], row["answers"])
            if row["id"] in seen:
                raise RowError(f"id {row['id']!r} is the id of an earlier question too "
                               f"({at(seen[row['id']])})", "every question needs its own id: "
                               "predictions are matched to gold answers by id")
        except RowError as e:
            fail(where, at(n), str(e), e.fix or HINT)
        seen[row["id"]] = n
    return datasets.Dataset.from_dict({
        "id": [r["id"] for r in rows], "title": [r["title"] for r in rows],
        "context": [r["context"] for r in rows], "question": [r["question"] for r in rows],
        "answers": [{"text": [a["text"] for a in r["answers"]],
                     "answer_start": [a["answer_start"] for a in r["answers"]]} for r in rows]})


def _check_answers(context: str, answers: list[dict]) -> None:
    if not answers:
        raise RowError("answers is empty", "SQuAD v1.1 needs at least one answer per question "
                       "(unanswerable questions are SQuAD v2, which obert does not read)")
    fix = ("answer_start is the offset of the answer's first character in the context: fix "
           "it or the answer's text")
    for a, ans in enumerate(answers):
        start, text = ans["answer_start"], ans["text"]
        if start >= len(context):
            raise RowError(f"answers[{a}].answer_start {start} is past the end of the context "
                           f"({len(context)} characters)", fix)
        found = context[start: start + len(text)]
        if found != text:
            raise RowError(f"answers[{a}].text {short(text)} is not at answer_start {start}: "
                           f"the context there reads {short(found)}", fix)


def _where_in_json(raw: Any, text: str, place: tuple, nth: int = 1) -> str:
    """``line N, article i, paragraph j, question k (id '...')`` of a place (indices) in a
    SQuAD file. The line: a question's id, a paragraph's "context" key or an article's
    "paragraphs" key; else the first question below the place (or above it); left out when
    none can be found."""
    names = ("article", "paragraph", "question")
    parts = [f"{name} {i + 1}" for name, i in zip(names, place, strict=False)]
    line = _line_of_key(raw, text, place)
    for depth in range(len(place), 0, -1) if line is None else ():  # else the nearest above
        node = _node(raw, place[:depth])
        if depth == 3 == len(place) and isinstance(node, dict) and isinstance(
                node.get("id"), str):
            parts[-1] += f" (id {short(node['id'])})"
        line = next((n for n in (_line_of(text, m, nth) for m in _first_question(node)) if n),
                    None)
        if line:
            break
    if not place:  # the file's top: the line of its "data" key
        line = _line_of(text, "data") or 1
    return ", ".join(([f"line {line}"] if line else []) + parts)


def _line_of_key(raw: Any, text: str, place: tuple) -> int | None:
    """The line of a paragraph's ``"context"`` key, or an article's ``"paragraphs"`` (else
    ``"title"``) key: the nth such key in the file (every place before it passed the schema,
    so each has its ``context`` and ``paragraphs``)."""
    node = _node(raw, place)
    if not isinstance(node, dict) or len(place) not in (1, 2):
        return None
    articles = raw["data"][: place[0]]
    if len(place) == 2:
        nth = sum(len(a["paragraphs"]) for a in articles) + place[1] + 1
        return _line_of(text, "context", nth) if "context" in node else None
    if "paragraphs" in node:
        return _line_of(text, "paragraphs", len(articles) + 1)
    if "title" in node:
        return _line_of(text, "title", sum("title" in a for a in articles) + 1)
    return None


def _node(raw: Any, place: tuple) -> Any:
    """The article, paragraph or question at ``place`` (indices), or None."""
    try:
        for key, index in zip(("data", "paragraphs", "qas"), place, strict=False):
            raw = raw[key][index]
    except (KeyError, IndexError, TypeError):
        return None
    return raw


def _first_question(node: Any) -> list[str]:
    """The id and the text of the first question in ``node`` (file order), else the title of
    the article it is or is in: strings to find the place's line by."""
    if isinstance(node, list):
        return next((m for m in map(_first_question, node) if m), [])
    if not isinstance(node, dict):
        return []
    marks = [node[k] for k in ("id", "question") if isinstance(node.get(k), str)]
    for key in ("data", "paragraphs", "qas"):
        if not marks and isinstance(node.get(key), list):
            marks = _first_question(node[key])
    return marks or ([node["title"]] if isinstance(node.get("title"), str) else [])


def _line_of(text: str, value: str, nth: int = 1) -> int | None:
    """The line of the ``nth`` occurrence of ``value``, written as a JSON string, in ``text``."""
    for needle in dict.fromkeys((json.dumps(value), json.dumps(value, ensure_ascii=False))):
        pos = -1
        for _ in range(nth):
            pos = text.find(needle, pos + 1)
            if pos < 0:
                break
        if pos >= 0:
            return text.count("\n", 0, pos) + 1
    return None
