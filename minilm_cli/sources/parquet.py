"""Parquet: row groups streamed with ``iter_batches``, types passed through unchanged.

The text column may be any string-like type (string, large_string, string_view, a
dictionary of strings), binary, or all-null; invalid UTF-8 in it, or in a string-like id or
kept column, is a bad row (or U+FFFD under --encoding-errors replace), not a refused file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..storage import storage_for
from .rows import Columns, InputFile, RawRows, Split
from .values import clean_str


@contextlib.contextmanager
def open_parquet(f: InputFile) -> Iterator[pq.ParquetFile]:
    raw = storage_for(f.path).open_read(f.path)
    try:
        yield pq.ParquetFile(raw)
    finally:
        raw.close()


def string_like(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return string_like(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def binary_like(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return binary_like(t.value_type)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def as_bytes(array: Any) -> list[bytes | None]:
    """A string-like or binary column's values as bytes, without decoding (no UTF-8 check)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_null(array.type):
        return [None] * len(array)
    t = array.type
    if pa.types.is_string(t):
        array = array.view(pa.binary())
    elif pa.types.is_large_string(t):
        array = array.view(pa.large_binary())
    elif pa.types.is_string_view(t):
        array = array.view(pa.binary_view())
    return array.to_pylist()


def read_parquet(
    f: InputFile,
    columns: Columns,
    schema: pa.Schema,
    block_rows: int,
    encoding_errors: str,
    split: Split | None,
) -> Iterator[RawRows]:
    with open_parquet(f) as pf:
        _check(f, pf.schema_arrow, columns)
        groups = list(range(pf.num_row_groups))
        if split is not None and split.kind == "row_groups":
            groups = groups[split.start : split.end]
        row = sum(pf.metadata.row_group(g).num_rows for g in range(groups[0])) if groups else 0
        for batch in pf.iter_batches(batch_size=block_rows, columns=columns.wanted, row_groups=groups):
            yield _rows(f, batch, columns, schema, encoding_errors, row)
            row += batch.num_rows


def _check(f: InputFile, arrow: pa.Schema, columns: Columns) -> None:
    roles = [(columns.text, "text")] + ([(columns.id, "id")] if columns.id else [])
    for name, role in roles + [(k, "kept") for k in columns.keep]:
        if name not in arrow.names:
            shown = ", ".join(arrow.names) if arrow.names else "(none)"
            raise InputError(f"{role} column '{name}' not found in {f.path}; columns are: {shown}")
    t = arrow.field(columns.text).type
    if not (string_like(t) or binary_like(t) or pa.types.is_null(t)):
        raise InputError(f"{f.path}: text column '{columns.text}' is {t}, not a string")


def _rows(
    f: InputFile, batch: pa.RecordBatch, columns: Columns, schema: pa.Schema, errors: str, row: int
) -> RawRows:
    n = batch.num_rows
    row_errors: list[str | None] = [None] * n
    typed = {}
    for name in columns.typed:
        typed[name] = _conform(f, name, batch.column(name), schema.field(name).type, errors, row_errors)
    keep = columns.keep_table(typed)
    return RawRows(
        f,
        as_bytes(batch.column(columns.text)),
        list(range(row + 1, row + n + 1)),
        ids=typed[columns.id] if columns.id else None,
        keep=keep,
        row_errors=row_errors if any(row_errors) else None,
    )


def _conform(
    f: InputFile, name: str, array: pa.Array, want: pa.DataType, errors: str, row_errors: list
) -> pa.Array:
    """The column as the schema's type; invalid UTF-8 in a string column is a per-row error."""
    if string_like(array.type):
        try:
            array.validate(full=True)
        except pa.ArrowInvalid:
            array = _repair_strings(name, array, errors, row_errors)
    if array.type == want:
        return array
    try:
        return array.cast(want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # in our words: pyarrow's cast message names its internals, not the user's column
        raise InputError(
            f"{f.path}: column '{name}' is {array.type} here and cannot be read as {want} (the job's "
            "type, from the first input); convert the file or set --column-type"
        ) from None


def _repair_strings(name: str, array: pa.Array, errors: str, row_errors: list) -> pa.Array:
    values = []
    for i, data in enumerate(as_bytes(array)):
        if data is None:
            values.append(None)
            continue
        text, reason = clean_str(data.decode("utf-8", "surrogateescape"), errors)
        if reason and row_errors[i] is None:
            row_errors[i] = f"column '{name}': {reason}"
        values.append(text)
    return pa.array(values, pa.string())
