"""``read_file``: one input (or one split of it) as RawRows that fit the job's schema."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from ..errors import InputError
from .boundaries import record_starts
from .delimited import read_delimited, read_header
from .jsonl import read_jsonl
from .parquet import read_parquet
from .rows import Columns, InputFile, RawRows, Split, input_errors
from .schema import resolve_schema
from .streams import ByteRange, open_binary, stdin_format
from .txt import no_columns_in_text, read_txt


def read_file(
    f: InputFile,
    columns: Columns,
    block_rows: int,
    encoding_errors: str = "strict",
    split: Split | None = None,
    schema: pa.Schema | None = None,
) -> Iterator[RawRows]:
    """Stream one input (or one split of it) as RawRows of at most ``block_rows`` records.

    ``schema`` is the job's (``resolve_schema``); without one, this file's own is resolved."""
    if f.is_stdin and f.format == "auto":
        f = InputFile("-", stdin_format())
    if f.format == "txt":
        no_columns_in_text(f, columns)
    if f.is_stdin and f.format == "parquet":
        raise InputError("Parquet cannot be read from stdin (it is not a stream); pass the file")
    with input_errors(f):
        if schema is None:
            schema = resolve_schema([f], columns)
        if f.format == "parquet":
            yield from read_parquet(f, columns, schema, block_rows, encoding_errors, split)
        elif split is not None and split.kind == "bytes":
            yield from _read_byte_range(f, columns, schema, block_rows, encoding_errors, split)
        else:
            yield from _read_stream(f, columns, schema, block_rows, encoding_errors)


def _read_stream(
    f: InputFile, columns: Columns, schema: pa.Schema, block_rows: int, encoding_errors: str
) -> Iterator[RawRows]:
    stream = open_binary(f, prefetch=True)
    try:
        if f.format in ("csv", "tsv"):
            yield from read_delimited(f, stream, columns, schema, block_rows, encoding_errors)
        elif f.format == "jsonl":
            yield from read_jsonl(f, stream, columns, schema, block_rows, encoding_errors)
        else:
            yield from read_txt(f, stream, block_rows)
    finally:
        if not f.is_stdin:
            stream.close()


def _read_byte_range(
    f: InputFile, columns: Columns, schema: pa.Schema, block_rows: int, encoding_errors: str, split: Split
) -> Iterator[RawRows]:
    if f.format in ("csv", "tsv"):
        yield from _read_record_range(f, columns, schema, block_rows, encoding_errors, split)
        return
    stream = ByteRange(f.path, split.start, split.end)  # one line is one record
    try:
        first_line = stream.lines_before()
        if f.format == "jsonl":
            yield from read_jsonl(f, stream, columns, schema, block_rows, encoding_errors, first_line)  # type: ignore[arg-type]
        else:
            yield from read_txt(f, stream, block_rows, first_line)  # type: ignore[arg-type]
    finally:
        stream.close()


def _read_record_range(
    f: InputFile, columns: Columns, schema: pa.Schema, block_rows: int, encoding_errors: str, split: Split
) -> Iterator[RawRows]:
    """The CSV/TSV records whose first byte lies in the split: a quoted cell may hold a newline,
    so the record starts are found by scanning from the file's start, as every part does."""
    delimiter = "\t" if f.format == "tsv" else ","
    size = split.extent or (f.size or 0)
    first, after = record_starts(f.path, [split.start, split.end], delimiter, f.quoted, size)
    if first.offset >= after.offset:
        return  # no record starts in this range: a long one that started before it holds it
    header = None
    if first.offset > 0:
        with open_binary(f) as whole:
            header = read_header(f, whole)
    stream = ByteRange(f.path, first.offset, after.offset, lines=False)
    try:
        yield from read_delimited(
            f,
            stream,  # type: ignore[arg-type]
            columns,
            schema,
            block_rows,
            encoding_errors,
            first_row=max(first.rows_before - 1, 0),  # the header is no row
            header=header,
        )
    finally:
        stream.close()
