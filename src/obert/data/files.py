"""Input files as records, each with the place it came from (``line 3`` of a JSON-lines or CSV
file, ``item 3`` of a JSON list, ``row 3`` of a parquet file), so that every fault a schema
finds names it. Text must be UTF-8: a byte that is not names its line."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from obert.errors import ObertError

RECORD_EXTS = (".jsonl", ".json", ".csv", ".parquet")
Records = list[tuple[str, Any]]


def read_utf8(path: str | os.PathLike) -> str:
    """The text of ``path`` (a UTF-8 byte-order mark dropped)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ObertError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ObertError(f"{path}, line {line}: the file is not UTF-8 text (byte {e.start} is "
                         f"{data[e.start]:#04x}); save it as UTF-8") from None


def text_lines(text: str) -> list[str]:
    """Lines split at newlines only (JSON strings may hold U+2028 and other line breaks that
    ``str.splitlines`` would split at)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_records(path: str | os.PathLike) -> tuple[Records, list[str] | None]:
    """The records of a .jsonl, .json (JSON lines or a list), .csv or .parquet file, and its
    column names where the file has a header (CSV, parquet). CSV cells are text."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow's own errors on a damaged file
            raise ObertError(f"cannot read {path} as parquet ({type(e).__name__}: "
                             f"{_first_line(e)}): check the file") from None
        return [(f"row {i + 1}", r) for i, r in enumerate(table.to_pylist())], table.column_names
    text = read_utf8(path)
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            rows = [(f"line {reader.line_num}", r) for r in reader]
        except csv.Error as e:
            raise ObertError(f"{path}, line {reader.line_num}: not CSV ({e}); check the "
                             "file's quotes") from None
        return rows, list(reader.fieldnames or [])
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ObertError(f"{path}, line {e.lineno}: not JSON ({e.msg}); a .json file holds "
                             "JSON lines or one list of objects") from None
        return [(f"item {i + 1}", r) for i, r in enumerate(items)], None
    rows = []
    for i, line in enumerate(text_lines(text)):
        if line.strip():
            try:
                rows.append((f"line {i + 1}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ObertError(f"{path}, line {i + 1}: not JSON ({e.msg}); a {path.suffix} "
                                 "file has one JSON object per line") from None
    return rows, None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__
