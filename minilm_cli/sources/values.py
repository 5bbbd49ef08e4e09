"""One value at a time: does it fit its column's declared type, and if not, why not.

Readers turn every id and kept value into the schema's type here; a value that does not
fit becomes a bad row with a reason naming the column and both types (never a crash)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TYPE_NAMES = ("string", "int64", "float64", "bool", "json")
JSON_META = {b"minilm.type": b"json"}  # a string field holding JSON text


def arrow_type(name: str) -> pa.DataType:
    return {
        "string": pa.string(),
        "json": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }[name]


def type_name(field: pa.Field) -> str:
    """The declared type of a field: one of TYPE_NAMES, or Arrow's own name (Parquet)."""
    if field.metadata and field.metadata.get(b"minilm.type") == b"json":
        return "json"
    names = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64", pa.bool_(): "bool"}
    return names.get(field.type, str(field.type))


def kind(value: Any) -> str:
    """What a JSON value is, in words a data engineer reads in a reject reason."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def clean_str(value: str, encoding_errors: str) -> tuple[str | None, str | None]:
    """(value, None) when it is valid Unicode; else U+FFFD in place of the bad code points
    under ``replace``, or (None, reason). Invalid UTF-8 bytes arrive as surrogate escapes."""
    if value.isascii():
        return value, None
    try:
        value.encode("utf-8")
        return value, None
    except UnicodeEncodeError:
        pass
    escaped = any("\udc80" <= c <= "\udcff" for c in value)
    if encoding_errors == "replace":
        data = value.encode("utf-8", "surrogateescape" if escaped else "surrogatepass")
        return data.decode("utf-8", "replace"), None
    if escaped:
        return None, "invalid UTF-8"
    return None, "lone surrogate (not valid Unicode)"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else kind(value)
    return text if len(text) <= 40 else text[:37] + "..."


def misfit(column: str, value: Any, declared: str) -> str:
    return f"column '{column}': {_short(value)} is {_article(kind(value))}, the column is {declared}"


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def json_value(column: str, value: Any, declared: str, encoding_errors: str) -> tuple[Any, str | None]:
    """A parsed JSON value as the declared type, or (None, why it does not fit)."""
    if value is None:
        return None, None
    if declared == "json":
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
        except (RecursionError, ValueError):
            return None, f"column '{column}': value nested too deeply"
        return _checked_str(column, text, encoding_errors)
    if declared == "string":
        if isinstance(value, str):
            return _checked_str(column, value, encoding_errors)
    elif declared == "bool":
        if isinstance(value, bool):
            return value, None
    elif isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            return None, f"column '{column}': integer {value} does not fit in int64"
        if declared == "int64":
            return value, None
        if declared == "float64" and int(float(value)) == value:
            return float(value), None
        if declared == "float64":
            return None, f"column '{column}': integer {value} cannot be held exactly by float64"
    elif isinstance(value, float) and declared == "float64":
        return value, None
    return None, misfit(column, value, declared)


def _checked_str(column: str, text: str, encoding_errors: str) -> tuple[str | None, str | None]:
    text_or_none, reason = clean_str(text, encoding_errors)
    return text_or_none, (f"column '{column}': {reason}" if reason else None)


def text_value(column: str, value: str | None, declared: str, encoding_errors: str) -> tuple[Any, str | None]:
    """A CSV/TSV field (text) as the declared type. Text stays text unless declared."""
    if value is None:
        return None, None
    value_or_none, reason = _checked_str(column, value, encoding_errors)
    if reason or value_or_none is None or declared == "string":
        return value_or_none, reason
    text = value_or_none.strip()
    if text == "":
        return None, None
    try:
        if declared == "int64":
            number = int(text)
            if not INT64_MIN <= number <= INT64_MAX:
                return None, f"column '{column}': integer {text} does not fit in int64"
            return number, None
        if declared == "float64":
            return float(text), None
        if declared == "json":
            json.loads(text)
            return value_or_none, None
    except (ValueError, RecursionError):
        return None, f"column '{column}': {_short(text)} is not {_article(declared)}"
    flag = text.lower()
    if flag in ("true", "1", "yes"):
        return True, None
    if flag in ("false", "0", "no"):
        return False, None
    return None, f"column '{column}': {_short(text)} is not a bool"


def schema_difference(have: pa.Schema, want: pa.Schema) -> str:
    """In our words (never pyarrow's), how a block's columns differ from the job's schema."""
    if have.names != want.names:
        return f"the columns are {', '.join(have.names) or '(none)'}, the job's are {', '.join(want.names)}"
    for a, b in zip(have, want):
        if a.type != b.type:
            return f"column '{a.name}' is {a.type} here, {b.type} in the job's schema"
    return "the columns' types differ from the job's schema"


def to_array(values: list[Any], field: pa.Field) -> pa.Array:
    return pa.array(values, field.type)
