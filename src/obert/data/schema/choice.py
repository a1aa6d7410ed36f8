"""The row of a multiple-choice set, per format (``obert.data.mc`` describes them):
CommonsenseQA (official or hub layout), WinoGrande, and the generic form.

Each format is a TypedDict of its fields' types, checked by pydantic, and a function for what
types cannot say (the answer among the choices, WinoGrande's one blank). Every row of a split
then has the first row's number of choices (≥ 2), no empty choice, and in train and dev an
answer. A fault is one line: the file, the line (or row), the field, how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import datasets
from pydantic import TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict

from obert.data.schema.base import MISSING, STRICT, RowError, Text, explain, fail, kind
from obert.data.tasks import TaskSpec

HINTS = {
    "commonsense_qa": "a CommonsenseQA row has question.stem, question.choices [{label, text}] "
                      "and answerKey (a choice's label), or the hub's question, choices "
                      "{label, text} and answerKey",
    "winogrande": "a WinoGrande row has a sentence with one '_', option1 and option2 (text) "
                  "and answer \"1\" or \"2\"",
    "multiple_choice": "a multiple-choice row has an optional context, a question, choices (a "
                       "list, or columns choice0..choiceN) and a label (the right choice's "
                       "index, letter or text)",
}
ANSWER_FIELDS = {"commonsense_qa": "answerKey", "winogrande": "answer", "multiple_choice": "label"}
UNANSWERED_SPLITS = ("test",)  # the others need the right choice of every row


@with_config(STRICT)
class CsqaChoice(TypedDict):
    label: str
    text: str


@with_config(STRICT)
class CsqaQuestion(TypedDict):
    stem: str
    choices: list[CsqaChoice]


@with_config(STRICT)
class CsqaRow(TypedDict):
    """The official JSON lines."""

    question: CsqaQuestion
    answerKey: NotRequired[str | None]


@with_config(STRICT)
class CsqaHubChoices(TypedDict):
    label: list[str]
    text: list[str]


@with_config(STRICT)
class CsqaHubRow(TypedDict):
    """The hub's parquet layout (tau/commonsense_qa)."""

    question: str
    choices: CsqaHubChoices
    answerKey: NotRequired[str | None]


@with_config(STRICT)
class WinograndeRow(TypedDict):
    sentence: str
    option1: Text
    option2: Text
    answer: NotRequired[Any]  # "1"/"2" (or 1/2); "" or absent in a test split


@with_config(STRICT)
class GenericRow(TypedDict):
    context: NotRequired[str | None]
    question: str
    choices: list[str]
    label: NotRequired[Any]


_ADAPTERS = {t: TypeAdapter(t) for t in (CsqaRow, CsqaHubRow, WinograndeRow, GenericRow)}


def _letters(labels: list[str], key: Any, what: str) -> int:
    """The index of the answer key ``key`` among the choices' ``labels`` (-1 if unanswered)."""
    if key in (None, ""):
        return -1
    if key not in labels:
        raise RowError(f"{what} {key!r} is not one of the choices' labels {', '.join(labels)}")
    return labels.index(key)


def csqa_row(rec: dict) -> tuple[str, list[str], int]:
    """An official (``question.stem``) or hub-layout (``question`` text) CommonsenseQA row."""
    if isinstance(rec.get("question"), dict):
        row = _ADAPTERS[CsqaRow].validate_python(rec)
        items = row["question"]["choices"]
        labels, texts = [c["label"] for c in items], [c["text"] for c in items]
        stem = row["question"]["stem"]
    else:
        row = _ADAPTERS[CsqaHubRow].validate_python(rec)
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        if len(labels) != len(texts):
            raise RowError(f"choices has {len(labels)} labels but {len(texts)} texts")
        stem = row["question"]
    return stem, texts, _letters(labels, row.get("answerKey"), "answerKey")


def winogrande_row(rec: dict) -> tuple[str, list[str], int]:
    """The sentence cut at its one blank: the stem before it, each option + the rest after it."""
    row = _ADAPTERS[WinograndeRow].validate_python(rec)
    sentence = row["sentence"]
    blanks = sentence.count("_")
    if blanks != 1:
        raise RowError(f"the sentence has {blanks} blanks ('_'), not exactly one: "
                       f"{sentence[:60]!r}")
    cut = sentence.index("_")
    stem, rest = sentence[:cut].rstrip(), sentence[cut + 1:]
    answer = row.get("answer")
    if answer in (None, ""):
        label = -1
    elif str(answer) in ("1", "2") and not isinstance(answer, bool | float):
        label = int(answer) - 1
    else:
        raise RowError(f"answer {answer!r} is not 1 or 2")
    return stem, [row["option1"] + rest, row["option2"] + rest], label


def generic_row(rec: dict) -> tuple[str, list[str], int]:
    """Optional ``context`` + ``question``; ``choices`` list or ``choice0..N``; ``label``."""
    items = rec.get("choices")
    if items is None:
        keys = sorted((k for k in rec if k.startswith("choice") and k[6:].isdigit()),
                      key=lambda k: int(k[6:]))
        if not keys:
            raise RowError("it has no choices", "give a list 'choices' or columns choice0, "
                           "choice1, ...")
        if [int(k[6:]) for k in keys] != list(range(len(keys))):
            raise RowError(f"its choice columns {', '.join(keys)} are not choice0..choiceN")
        items = [rec[k] for k in keys]
    if not isinstance(items, list):
        raise RowError(f"choices is {kind(items)}, not a list")
    texts = [c.get("text", MISSING) if isinstance(c, dict) else c for c in items]
    row = _ADAPTERS[GenericRow].validate_python({**rec, "choices": texts})
    context = row.get("context") or ""
    stem = " ".join(p for p in (context.strip(), row["question"].strip()) if p)
    return stem, row["choices"], _generic_label(row.get("label"), row["choices"], items)


def _generic_label(value: Any, texts: list[str], items: list) -> int:
    n = len(texts)
    if value is None or value == "" or value == -1:
        return -1
    if isinstance(value, bool):
        raise RowError(f"label {value!r} is not a choice")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        index = int(value)
    elif isinstance(value, str) and len(value) == 1 and value.isalpha():
        labels = [c.get("label") for c in items if isinstance(c, dict)]
        index = labels.index(value) if value in labels else ord(value.upper()) - ord("A")
    elif isinstance(value, str) and value in texts:
        index = texts.index(value)
    else:
        raise RowError(f"label {value!r} is neither a choice's index, its letter nor its text")
    if not 0 <= index < n:
        raise RowError(f"label {value!r} is outside the {n} choices (0..{n - 1}, or "
                       f"A..{chr(64 + n)})")
    return index


ROW_READERS: dict[str, Callable[[dict], tuple[str, list[str], int]]] = {
    "commonsense_qa": csqa_row, "winogrande": winogrande_row, "multiple_choice": generic_row,
}


def mc_dataset(records: Iterable[tuple[str, Any]], task: TaskSpec, where: str,
               split: str | None = None) -> datasets.Dataset:
    """Check every (``at``, record) and return the rows: ``stem``, ``choices``, ``label`` (-1
    unanswered) and ``line``. One choice count for all rows (the first row's), no empty
    choice, a label among the choices, and an answer in every row of a ``split`` other than
    test (``None``: not asked)."""
    read, hint = ROW_READERS[task.name], HINTS[task.name]
    cols: dict[str, list] = {"stem": [], "choices": [], "label": [], "line": []}
    count = None
    for at, rec in records:
        try:
            if not isinstance(rec, dict):
                raise RowError(f"it is {kind(rec)}, not an object with named fields")
            stem, choices, label = read(rec)
            if len(choices) < 2:
                raise RowError(f"it has {len(choices)} choice(s)", "multiple choice needs ≥ 2")
            if count is None:
                count = len(choices)
            elif len(choices) != count:
                raise RowError(f"it has {len(choices)} choices where the first row has {count}",
                               "every row needs the same number")
            empty = [i for i, c in enumerate(choices) if not c.strip()]
            if empty:
                raise RowError(f"choice {empty[0]} is empty")
            if label == -1 and split is not None and split not in UNANSWERED_SPLITS:
                raise RowError(f"{ANSWER_FIELDS[task.name]} is missing (a row without an "
                               "answer)", f"every {split} row needs its right choice")
        except ValidationError as e:
            fail(where, at, explain(e)[1], hint)
        except RowError as e:
            fail(where, at, str(e), e.fix or hint)
        cols["stem"].append(stem)
        cols["choices"].append(choices)
        cols["label"].append(label)
        cols["line"].append(int(at.split()[1]))  # "line N", "row N" or "item N"
    features = datasets.Features({"stem": datasets.Value("string"),
                                  "choices": datasets.Sequence(datasets.Value("string")),
                                  "label": datasets.Value("int64"),
                                  "line": datasets.Value("int64")})
    return datasets.Dataset.from_dict(cols, features=features)
