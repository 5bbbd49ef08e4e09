"""One schema for the whole job, fixed before the first row is read.

The schema names the Arrow type of the id column (``--id-column``) and of every kept column,
id first, then the kept columns in the order given. Every reader conforms its blocks to it,
so every shard of every part of a job has the same columns and types:

* CSV/TSV: every column is ``string``, the text as written (nothing is inferred).
* Parquet: the first file's types, unchanged (dictionary, large types, timestamps, decimals,
  nested). A later file must hold the same types, or ones that widen safely to them
  (string-like to string-like, a narrower integer or float); otherwise the job stops.
* JSON lines: sampled from the first ``SAMPLE_RECORDS`` records of the first input(s). A
  column takes the type of its first non-null value: string, int64, float64 or bool; an
  int64 column becomes float64 when a float appears in the sample; objects and arrays make a
  ``json`` column (the value as compact JSON text); a column that is null throughout the
  sample is string. A later value that does not fit is a bad row naming the column and both
  types.
* ``--column-type NAME=TYPE`` (string, int64, float64, bool, json) overrides all of these.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from ..errors import InputError, shown
from .jsonl import parse_json_object
from .parquet import open_parquet, string_like
from .rows import Columns, InputFile, input_errors
from .streams import iter_lines, open_binary, peek_stdin, stdin_format
from .values import JSON_META, TYPE_NAMES, arrow_type, kind, type_name

SAMPLE_RECORDS = 1000
SAMPLE_BYTES = 8 << 20


def parse_column_types(specs: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``["score=float64", "tags=json"]`` -> ``{"score": "float64", "tags": "json"}``."""
    types: dict[str, str] = {}
    for spec in specs or []:
        name, sep, kind_name = spec.rpartition("=")
        kind_name = kind_name.strip().lower()
        if not sep or not name:
            raise InputError(f"--column-type {spec!r}: expected NAME=TYPE, e.g. score=float64")
        if kind_name not in TYPE_NAMES:
            raise InputError(f"--column-type {spec!r}: TYPE must be one of {', '.join(TYPE_NAMES)}")
        if types.get(name, kind_name) != kind_name:
            raise InputError(f"--column-type {name} is given twice, as {types[name]} and {kind_name}")
        types[name] = kind_name
    return types


def resolve_schema(
    files: list[InputFile], columns: Columns, column_types: dict[str, str] | None = None
) -> pa.Schema:
    """The Arrow schema of the id and kept columns, for every reader and shard of the job."""
    column_types = dict(column_types or {})
    _check_names(columns, column_types)
    names = columns.typed
    if not names or not files:
        return pa.schema([])
    first = files[0]
    fmt = _format_of(first)
    with input_errors(first):
        if fmt == "parquet":
            fields = _parquet_fields(first, columns, column_types)
        elif fmt == "jsonl":
            fields = _jsonl_fields(files, columns, column_types)
        else:  # csv, tsv (txt has no columns: its reader says so)
            fields = [_declared(n, column_types.get(n, "string")) for n in names]
    schema = pa.schema(fields)
    for f in files[1:]:
        if f.format == "parquet":
            with input_errors(f):
                check_parquet_file(f, schema)
    return schema


def schema_to_json(schema: pa.Schema) -> list[dict[str, Any]]:
    """The schema as the manifest records it: [{"name", "type", "nullable"}]."""
    return [{"name": f.name, "type": type_name(f), "nullable": f.nullable} for f in schema]


def _check_names(columns: Columns, column_types: dict[str, str]) -> None:
    seen: set[str] = set()
    for name in columns.keep:
        if name in seen:
            raise InputError(f"--keep-columns: {name} is listed twice")
        seen.add(name)
    for name in column_types:
        if name not in columns.typed:
            raise InputError(f"--column-type {name}: not an --id-column or --keep-columns column")


def _declared(name: str, kind_name: str) -> pa.Field:
    return pa.field(name, arrow_type(kind_name), metadata=JSON_META if kind_name == "json" else None)


def _format_of(f: InputFile) -> str:
    if f.is_stdin and f.format == "auto":
        return stdin_format()
    return f.format


# ---------------------------------------------------------------------------- Parquet


def _parquet_fields(f: InputFile, columns: Columns, column_types: dict[str, str]) -> list[pa.Field]:
    with open_parquet(f) as pf:
        arrow = pf.schema_arrow
    fields = []
    for name in columns.typed:
        if name in column_types:
            fields.append(_declared(name, column_types[name]))
        elif name in arrow.names:
            fields.append(arrow.field(name))
        else:
            role = "id" if name == columns.id else "kept"
            listed = shown(", ".join(arrow.names), 120)
            raise InputError(f"{role} column '{name}' not found in {f.path}; columns are: {listed}")
    return fields


def check_parquet_file(f: InputFile, schema: pa.Schema) -> None:
    """A later Parquet input must match the job's schema, or widen safely to it."""
    with open_parquet(f) as pf:
        arrow = pf.schema_arrow
    for field in schema:
        if field.name not in arrow.names:
            continue  # the reader names the missing column
        have = arrow.field(field.name).type
        if not castable(have, field.type):
            raise InputError(
                f"{f.path}: column '{field.name}' is {have}, but the job's schema (from the first "
                f"input) says {field.type}; convert the file or set --column-type"
            )


def castable(have: pa.DataType, want: pa.DataType) -> bool:
    """Can every value of ``have`` become a ``want`` without loss?"""
    if have == want or pa.types.is_null(have):
        return True
    if pa.types.is_dictionary(have):
        return castable(have.value_type, want)
    if pa.types.is_dictionary(want):
        return castable(have, want.value_type)
    if string_like(have) and string_like(want):
        return True
    if pa.types.is_integer(have) and pa.types.is_integer(want):
        same = pa.types.is_signed_integer(have) == pa.types.is_signed_integer(want)
        wider = pa.types.is_signed_integer(want) and have.bit_width < want.bit_width
        return (same and have.bit_width <= want.bit_width) or wider
    if pa.types.is_floating(want) and (pa.types.is_floating(have) or pa.types.is_integer(have)):
        return have.bit_width < want.bit_width or (pa.types.is_floating(have) and have == want)
    return False


# ---------------------------------------------------------------------------- JSON lines


def _jsonl_fields(files: list[InputFile], columns: Columns, column_types: dict[str, str]) -> list[pa.Field]:
    kinds: dict[str, list[str]] = {}  # per column, the kinds of its non-null values, in order met
    keys: dict[str, None] = {}
    for obj in itertools.islice(_sample(files), SAMPLE_RECORDS):
        for key, value in obj.items():
            keys.setdefault(key)
            seen = kinds.setdefault(key, [])
            if value is not None and kind(value) not in seen:
                seen.append(kind(value))
    fields = []
    for name in columns.typed:
        if name in column_types:
            fields.append(_declared(name, column_types[name]))
            continue
        if name not in keys:
            role = "id" if name == columns.id else "kept"
            listed = shown(", ".join(keys), 120) or "(none)"
            raise InputError(
                f"{role} column '{name}' not found in the first records of {files[0].path}; "
                f"keys seen: {listed}"
            )
        fields.append(_declared(name, _json_rule(kinds[name])))
    return fields


def _json_rule(seen: list[str]) -> str:
    if not seen:
        return "string"
    first = seen[0]
    if first == "integer":
        return "float64" if "float" in seen else "int64"
    return {"float": "float64", "bool": "bool", "string": "string"}.get(first, "json")


def _sample(files: list[InputFile]) -> Iterator[dict]:
    """The parsed objects at the start of the leading JSON lines inputs (bad lines skipped)."""
    budget = SAMPLE_BYTES
    for f in files:
        if _format_of(f) != "jsonl" or budget <= 0:
            return
        for line in _sample_lines(f):
            budget -= len(line) + 1
            if budget < 0:
                return
            obj, _ = parse_json_object(line, "replace")
            if obj is not None:
                yield obj


def _sample_lines(f: InputFile) -> Iterator[bytes]:
    if f.is_stdin:
        head = peek_stdin(SAMPLE_BYTES)
        lines = head.splitlines()
        if lines and not head.endswith((b"\n", b"\r")):
            lines.pop()  # cut short by the peek: not a whole record
        yield from lines
        return
    stream = open_binary(f)
    try:
        yield from iter_lines(stream)
    finally:
        stream.close()
