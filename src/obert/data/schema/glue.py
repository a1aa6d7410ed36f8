"""The row of a GLUE task (any of its files: TSV, CSV, JSON lines, parquet, the hub's split).

A row holds the task's text columns, each a non-blank string (not null, a number, a list, or
absent), and a label: a whole number among the task's classes, or for STS-B a score from 0 to
5. Test splits (``test``, ``test_mm``) may leave the label out (it becomes -1). Cells of a
CSV/TSV file are text: a label cell is read as a number (or a GLUE TSV's label name) first.
Columns are checked whole (pydantic's core for the text), so SST-2's 67k rows take ~0.1 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import datasets
import pyarrow as pa
from pydantic import ConfigDict, TypeAdapter, ValidationError

from obert.data.schema.base import MISSING, Text, explain, fail, finite_number, kind
from obert.data.tasks import TaskSpec
from obert.errors import ObertError

UNLABELLED_SPLITS = ("test", "test_mm")  # GLUE's test files carry no labels
MAX_SCORE = 5.0  # STS-B: similarity from 0 (unrelated) to 5 (same meaning)
_TEXTS = TypeAdapter(list[Text], config=ConfigDict(strict=True))


def hint(task: TaskSpec) -> str:
    """How a row of ``task`` must look."""
    if task.is_regression:
        labels = f"from 0 to {MAX_SCORE:g} (a similarity score)"
    else:
        ids = [str(i) for i in range(task.num_labels)]
        labels = ", ".join(ids[:-1]) + f" or {ids[-1]}" + (
            f" ({', '.join(task.label_names)})" if task.label_names else "")
    return (f"each {task.name} row needs {' and '.join(task.text_keys)} as text and a label "
            f"{labels}")


def check_label(value: Any, task: TaskSpec, labelled: bool) -> float | int:
    """One row's label: a class id (int) or an STS-B score (float); -1 where ``labelled`` is
    False and the row has none. Raises ValueError saying what is wrong."""
    if value is None or value is MISSING or (not labelled and finite_number(value)
                                              and value == -1):
        if labelled:
            raise ValueError("is missing (a row without a label)")
        return -1
    if task.is_regression:
        if not finite_number(value):
            raise ValueError(f"{value!r} is not a finite number" if isinstance(value, float)
                             else f"is {kind(value)}, not a number")
        if not 0 <= value <= MAX_SCORE:
            raise ValueError(f"{value!r} is outside 0..{MAX_SCORE:g}")
        return float(value)
    if not finite_number(value) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"is {kind(value)}, not a whole number")
    if value == -1:
        raise ValueError("-1 means no label (a row without a label)")
    if int(value) not in range(task.num_labels):
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, range(task.num_labels)))}")
    return int(value)


def _cell_label(value: Any, names: dict[str, int]) -> Any:
    """A CSV/TSV label cell: '' is no label, a GLUE TSV name its id, else a number if it is one."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if text in names:
        return names[text]
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return value


def require_columns(found: Sequence[str], task: TaskSpec, where: str) -> None:
    """Refuse a file none of whose rows has one of the task's text columns."""
    missing = [c for c in task.text_keys if c not in found]
    if missing:
        raise ObertError(f"{where} lacks column(s) {', '.join(missing)} for task {task.name}: "
                         f"found {', '.join(found) or 'none'}")


def records_to_columns(records: list[tuple[str, Any]], task: TaskSpec, where: str,
                       header: Sequence[str] | None = None) -> dict[str, list]:
    """The task's columns of (``at``, record) pairs (``MISSING`` where a row lacks a field);
    ``header``: the file's column names, when it has them."""
    for at, rec in records:
        if not isinstance(rec, dict):
            fail(where, at, f"it is {kind(rec)}, not an object with named fields", hint(task))
    if records or header is not None:
        require_columns(list(header) if header is not None else list(dict.fromkeys(
            k for _, rec in records for k in rec)), task, where)
    return {k: [rec.get(k, MISSING) for _, rec in records] for k in (*task.text_keys, "label")}


def glue_dataset(columns: dict[str, list], at: Callable[[int], str], task: TaskSpec,
                 split: str, where: str, cells: bool = False) -> datasets.Dataset:
    """Check a GLUE split's ``columns`` (the text columns and ``label``, one value per row; a
    value of ``MISSING`` where a row lacks it) and return it as a Dataset: text, and ``label``
    an int (a float for STS-B; -1 where a test split has none). ``at(i)``: where row ``i`` is
    (``line 3``); ``cells``: the values are a CSV/TSV file's text."""
    columns = {k: list(v) for k, v in columns.items()}  # a Dataset's Column is no list
    for key in task.text_keys:
        try:
            _TEXTS.validate_python(columns[key])
        except ValidationError as e:
            loc, what = explain(e, skip=1, name=key)
            fail(where, at(loc[0]), what, hint(task))
    labelled = split not in UNLABELLED_SPLITS
    raw = columns.get("label") or [MISSING] * len(columns[task.text_keys[0]])
    if cells:
        raw = [_cell_label(v, task.tsv_label_map) for v in raw]
    labels = []
    for i, value in enumerate(raw):
        try:
            labels.append(check_label(value, task, labelled))
        except ValueError as e:
            fail(where, at(i), f"label {e}", hint(task))
    table = pa.table({**{k: pa.array(columns[k], pa.string()) for k in task.text_keys},
                      "label": pa.array(labels, pa.float64() if task.is_regression
                                        else pa.int64())})
    return datasets.Dataset(table)


def glue_records(records: Iterable[tuple[str, Any]], task: TaskSpec, split: str, where: str,
                 header: Sequence[str] | None = None, cells: bool = False) -> datasets.Dataset:
    """``glue_dataset`` of (``at``, record) pairs, as a JSON-lines, CSV or parquet file gives."""
    records = list(records)
    columns = records_to_columns(records, task, where, header)
    return glue_dataset(columns, lambda i: records[i][0], task, split, where, cells)
