"""The row of a JSON-lines corpus for masked-language modelling: an object whose ``text`` is a
string (other fields are ignored; a blank text is skipped, as a blank line of a .txt is)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from obert.data.schema.base import STRICT, explain, fail

HINT = 'each line of a .jsonl corpus is an object like {"text": "..."}'


@with_config(STRICT)
class TextRow(TypedDict):
    text: str


_ROWS = TypeAdapter(list[TextRow])


def corpus_texts(records: Iterable[tuple[str, Any]], where: str) -> list[str]:
    """The non-blank ``text`` of every (``at``, record)."""
    records = list(records)
    try:
        rows = _ROWS.validate_python([rec for _, rec in records])
    except ValidationError as e:
        loc, what = explain(e, skip=1)
        fail(where, records[loc[0]][0], what, HINT)
    return [r["text"] for r in rows if r["text"].strip()]
