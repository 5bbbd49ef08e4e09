"""CSV (RFC 4180: quoted fields may hold commas, doubled quotes and newlines; a stray quote
inside a quoted field is kept as text, as pyarrow, pandas and Excel read it) and TSV (quoted
the same way, as pyarrow, pandas, Polars and DuckDB write and read it; under
``--tsv-quoting none`` a tab separates fields, a line ends a record and quotes are text).

Every value is text, exactly as written: nothing is inferred. Bytes that are not UTF-8 are
carried as surrogate escapes and become a bad row (or U+FFFD under --encoding-errors
replace) in whichever column holds them. Only forward reads: pipes and FIFOs stream.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa

from ..errors import InputError, shown
from .blocks import BlockBuilder
from .rows import Columns, InputFile, RawRows, one_line
from .values import text_value

csv.field_size_limit(2**31 - 1)  # a 10 MB text cell is a long text, not a malformed row


class _Tap:
    """The lines of a text stream, remembering those read since the last ``take``."""

    def __init__(self, lines: Any) -> None:
        self.lines = iter(lines)
        self.seen: list[str] = []

    def __iter__(self) -> _Tap:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.seen.append(line)
        return line

    def skip(self) -> None:
        self.seen.clear()

    def take(self) -> str:
        text = "".join(self.seen).rstrip("\r\n")
        self.seen.clear()
        return printable(text)


def printable(text: str) -> str:
    """Text fit for a reject record: undecodable bytes and lone surrogates as escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def text_stream(stream: IO[bytes], encoding_errors: str, sig: bool = True) -> io.TextIOWrapper:
    """``sig``: the stream starts the file, where a UTF-8 byte order mark is no text."""
    errors = "replace" if encoding_errors == "replace" else "surrogateescape"
    encoding = "utf-8-sig" if sig else "utf-8"
    return io.TextIOWrapper(stream, encoding=encoding, errors=errors, newline="")  # type: ignore[arg-type]


def _records(f: InputFile, tap: _Tap) -> Iterator[list[str] | Exception]:
    """Each record's fields ([] for a blank line), or the parse error in its place (the line
    is then a reject). sources/boundaries.py finds the same record starts in bytes."""
    if not f.quoted:  # TSV under --tsv-quoting none: a tab separates, a line ends a record
        for line in tap:
            line = line.rstrip("\r\n")
            yield line.split("\t") if line else []
        return
    reader = csv.reader(_with_probe(tap), delimiter="\t" if f.format == "tsv" else ",")
    while True:
        try:
            for record in reader:
                if record == [_PROBE_RECORD]:  # the file ended outside quotes: the probe alone
                    return
                if record and _PROBE in record[-1]:  # the file ended inside a quoted field
                    hint = "; --tsv-quoting none reads quotes as text" if f.format == "tsv" else ""
                    yield csv.Error(_UNCLOSED + hint)
                    return
                yield record
            return
        except csv.Error as exc:  # the reader goes on with the next line
            yield exc


# csv's non-strict reader takes a quote that is never closed as a field running to the end of
# the file, silently: the records after it would vanish into one cell (a TSV cell that is a
# lone quote, written by a tool that does not quote). So one more line follows the file: a
# quote and a character no decoded input holds (surrogateescape gives only \udc80-\udcff).
# Read as a record of its own, the file ended outside quotes; found inside the last field, a
# quoted field was still open.
_PROBE = "\ud800"
_PROBE_RECORD = _PROBE + "\n"
_UNCLOSED = "a quoted field is never closed: it runs to the end of the file"


def _with_probe(lines: Iterator[str]) -> Iterator[str]:
    last = ""
    for last in lines:
        yield last
    if last and not last.endswith(("\n", "\r")):
        yield "\n"
    yield '"' + _PROBE + "\n"


def read_header(f: InputFile, stream: IO[bytes]) -> list[str]:
    """The first record of a CSV/TSV stream: its column names."""
    text = text_stream(stream, "replace")
    try:
        for record in _records(f, _Tap(text)):
            if isinstance(record, Exception):
                raise InputError(f"{f.path}: cannot read the header: {one_line(record)}")
            if record:
                return record
        return []
    finally:
        text.detach()  # the caller owns (and closes) the byte stream


def check_header(f: InputFile, header: list[str], columns: Columns) -> dict[str, int]:
    """Column name -> index; a repeated name or a missing wanted column stops the job."""
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in index:
            raise InputError(f"{f.path}: column '{shown(name)}' appears twice in the header")
        index[name] = i
    roles = [(columns.text, "text")] + ([(columns.id, "id")] if columns.id else [])
    for name, role in roles + [(k, "kept") for k in columns.keep]:
        if name not in index:
            listed = shown(", ".join(header), 120) if header else "(none)"
            raise InputError(f"{role} column '{name}' not found in {f.path}; columns are: {listed}")
    return index


def read_delimited(
    f: InputFile,
    stream: IO[bytes],
    columns: Columns,
    schema: pa.Schema,
    block_rows: int,
    encoding_errors: str,
    first_row: int = 0,
    header: list[str] | None = None,
) -> Iterator[RawRows]:
    """RawRows of at most ``block_rows`` records. ``header`` is given for a byte range that
    does not start the file: it starts on a record (sources/boundaries.py), and its rows are
    numbered from ``first_row``."""
    text = text_stream(stream, encoding_errors, sig=header is None)
    try:
        yield from _read_records(f, text, columns, schema, block_rows, encoding_errors, first_row, header)
    finally:
        text.detach()  # the caller owns (and closes) the byte stream: stdin stays open


def _read_records(
    f: InputFile,
    text: io.TextIOWrapper,
    columns: Columns,
    schema: pa.Schema,
    block_rows: int,
    encoding_errors: str,
    first_row: int,
    header: list[str] | None,
) -> Iterator[RawRows]:
    tap = _Tap(text)
    records = _records(f, tap)
    if header is None:
        first = next(records, [])
        if isinstance(first, Exception):
            raise InputError(f"{f.path}: cannot read the header: {one_line(first)}")
        header = [printable(name) for name in first]
        tap.skip()
    index = check_header(f, header, columns)
    id_at = index[columns.id] if columns.id else -1

    def extract(records: list[list[str]], name: str) -> list[Any]:
        at = index[name]
        if at == id_at:  # an empty id field is a null id: a bad row
            return [None if r[at] == "" else r[at] for r in records]
        return [r[at] for r in records]

    block = BlockBuilder(f, columns, schema, encoding_errors, text_value, extract, keep_raw=False)
    text_at, width, row = index[columns.text], len(header), first_row
    for record in records:
        if not record:
            tap.skip()
            continue  # a blank line is no record
        row += 1
        if isinstance(record, Exception):
            block.reject(row, f"malformed {f.format.upper()}: {one_line(record)}", tap.take())
        elif len(record) != width:
            block.reject(row, f"expected {width} columns, got {len(record)}", tap.take())
        else:
            tap.skip()
            block.add(record[text_at], row, None, record)
        if len(block) >= block_rows:
            yield block.take()
    if block.pending:
        yield block.take()
