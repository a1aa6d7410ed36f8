"""What every schema shares: the faults of one row, said in one line.

A row's fault is ``{where}, {at}: {field} {what is wrong}; {how to fix}``: ``where`` the file
(or the hub split), ``at`` its line (``line 3``; ``row 3`` of a parquet file or a hub split;
``item 3`` of a JSON list), ``field`` a dotted path into the row. Pydantic's ``ValidationError``
and the schemas' own ``RowError`` both become that line (``explain``, ``fail``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, NoReturn

from pydantic import ConfigDict, StringConstraints, ValidationError

from obert.errors import ObertError

# Schemas see the values a file holds: "13" is text, not a number; 1.0 is not text. (The
# schemas are TypedDicts: pydantic checks them in its core without building objects, so
# SQuAD's dev file takes ~30 ms.)
STRICT = ConfigDict(strict=True, extra="ignore")


class _Missing:
    """A field a row does not have (JSON null is ``None``; this is no key at all)."""

    def __repr__(self) -> str:
        return "missing"


MISSING: Any = _Missing()


class RowError(ValueError):
    """What is wrong with one row; ``fix`` replaces the format's usual advice."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        super().__init__(what)
        self.fix = fix


# Text a model reads: a string with something in it (not null, a number, a list or "");
# checked in pydantic's core, so a column of 67k sentences takes milliseconds.
Text = Annotated[str, StringConstraints(pattern=r"\S")]


def short(value: Any, width: int = 40) -> str:
    """``repr(value)``, cut to ``width`` characters (one line: repr escapes newlines)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def kind(value: Any) -> str:
    """A value as a user who wrote a JSON/CSV file would name it: 'text ('13')', 'a number
    (5)', 'a list ([1, 2])', 'missing'."""
    if value is None or value is MISSING:
        return "missing"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"text ({short(value)})"
    if isinstance(value, int | float):
        return f"a number ({short(value)})"
    if isinstance(value, list | tuple):
        return f"a list ({short(value)})"
    if isinstance(value, dict):
        return f"an object ({short(value)})"
    return f"a {type(value).__name__} ({short(value)})"


_EXPECTED = {"string_type": "text", "int_type": "a whole number", "float_type": "a number",
             "list_type": "a list", "dict_type": "an object", "model_type": "an object",
             "model_attributes_type": "an object", "bool_type": "true or false",
             "int_from_float": "a whole number"}


def field_path(loc: tuple) -> str:
    """``("question", "choices", 2, "text")`` -> ``question.choices[2].text``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def explain(error: ValidationError, skip: int = 0, name: str = "") -> tuple[tuple, str]:
    """The first fault of ``error``: its location and ``field what-is-wrong``; the field is
    the location less its first ``skip`` parts (e.g. a list index), prefixed by ``name``."""
    first = error.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    field = field_path((name, *loc[skip:]) if name else loc[skip:])
    value, typ = first.get("input"), first["type"]
    if typ == "value_error":  # the schemas' own words
        what = str(first["ctx"]["error"])
    elif typ == "missing" or value is None or value is MISSING:
        what = "is missing"
    elif typ == "string_pattern_mismatch":  # Text's pattern: nothing but white space
        what = "is empty" if value == "" else f"is blank ({short(value)})"
    elif typ == "greater_than_equal":
        what = f"{short(value)} must be ≥ {first['ctx']['ge']}"
    elif typ in _EXPECTED:
        what = f"is {kind(value)}, not {_EXPECTED[typ]}"
    else:
        what = first["msg"]
    if not field:
        return loc, what if typ == "value_error" else f"it {what}"
    return loc, f"{field} {what}"


def fail(where: str, at: str, what: str, fix: str) -> NoReturn:
    """Raise the one-line fault of a row."""
    raise ObertError(f"{where}, {at}: {what}; {fix}")


def finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
