"""Input side: find the input files, stream their rows in bounded batches, and sort
each row into "embed this text" or "reject, and here is why".

Nothing here holds a whole file: CSV goes through pyarrow's streaming reader, Parquet
through ``iter_batches``, JSON lines and text are split block by block.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .errors import BadRowError, InputError

FORMATS = ("csv", "tsv", "jsonl", "parquet", "txt")
EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json-lines": "jsonl",
    ".parquet": "parquet",
    ".txt": "txt",
}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
READ_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class InputFile:
    """One input, with what a resumed run must find unchanged."""

    path: str  # "-" is stdin
    format: str
    compression: str | None = None
    size: int | None = None
    mtime_ns: int | None = None

    @property
    def is_stdin(self) -> bool:
        return self.path == "-"

    def fingerprint(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "compression": self.compression,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }


@dataclass(frozen=True)
class Columns:
    """Which input columns the job reads."""

    text: str = "text"
    id: str | None = None
    keep: tuple[str, ...] = ()

    @property
    def wanted(self) -> list[str]:
        names = [self.text] + ([self.id] if self.id else []) + list(self.keep)
        return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Split:
    """A part of one input that one worker reads: the whole file, a byte range of a text
    format (records belong to the range holding their first byte), or Parquet row groups."""

    file: InputFile
    kind: str = "whole"  # "whole", "bytes" or "row_groups"
    start: int = 0
    end: int = 0
    extent: int = 0  # the file's bytes, or its row groups: what the splits of a file must tile

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.file.path,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "extent": self.extent,
        }


@dataclass
class Reject:
    """A row that was not embedded, and enough to find and fix it."""

    source: str
    location_kind: str  # "line" or "row"
    location: int | None
    reason: str
    raw: str | None = None
    position: int = 0  # global record index it sits at: decides its shard, and resume skips

    def describe(self) -> str:
        where = f"{self.location_kind} {self.location}" if self.location is not None else "?"
        return f"{self.source}, {where}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            self.location_kind: self.location,
            "reason": self.reason,
            "raw": self.raw,
        }


@dataclass
class RawRows:
    """Up to one read block of records from one file, not yet checked."""

    file: InputFile
    texts: list[Any]
    locations: list[int]
    ids: pa.Array | None = None
    keep: pa.Table | None = None
    raw_lines: list[str] | None = None
    parse_rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


# ---------------------------------------------------------------------------- discovery


def split_extension(path: str) -> tuple[str | None, str | None]:
    """Return (format, compression) guessed from a file name, either may be None."""
    name = os.path.basename(path).lower()
    compression = None
    for ext, codec in COMPRESSIONS.items():
        if name.endswith(ext):
            compression, name = codec, name[: -len(ext)]
            break
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt, compression
    return None, compression


def resolve_inputs(patterns: list[str], input_format: str | None = None) -> list[InputFile]:
    """Expand files, globs and directories into a sorted, de-duplicated list of inputs."""
    if not patterns:
        raise InputError("no INPUT given: name files, globs, directories or - for stdin")
    if "-" in patterns and len(patterns) > 1:
        raise InputError("- (stdin) cannot be combined with other inputs")
    paths: list[str] = []
    for pattern in patterns:
        paths.extend(_expand(pattern, input_format))
    files = [_describe(p, input_format) for p in dict.fromkeys(paths)]
    return files


def _expand(pattern: str, input_format: str | None) -> list[str]:
    if pattern == "-":
        return ["-"]
    if os.path.isdir(pattern):
        found = sorted(
            os.path.join(root, name)
            for root, dirs, names in os.walk(pattern)
            for name in names
            if not name.startswith(".") and (input_format or split_extension(name)[0])
        )
        if not found:
            raise InputError(f"no supported input files in directory {pattern}")
        return found
    if glob.has_magic(pattern):
        found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not found:
            raise InputError(f"no files match {pattern}")
        return found
    if not os.path.exists(pattern):
        raise InputError(f"input not found: {pattern}")
    return [pattern]


def _describe(path: str, input_format: str | None) -> InputFile:
    if path == "-":
        return InputFile("-", input_format or "auto")
    fmt, compression = split_extension(path)
    fmt = input_format or fmt
    if fmt is None:
        raise InputError(f"cannot tell the format of {path}: use --input-format {'|'.join(FORMATS)}")
    if fmt == "parquet" and compression:
        raise InputError(f"{path}: Parquet is compressed inside the file; decompress it first")
    stat = os.stat(path)
    return InputFile(path, fmt, compression, stat.st_size, stat.st_mtime_ns)


# ---------------------------------------------------------------------------- reading


def read_file(
    f: InputFile,
    columns: Columns,
    block_rows: int,
    encoding_errors: str = "strict",
    split: Split | None = None,
) -> Iterator[RawRows]:
    """Stream one input (or one split of it) as RawRows of at most ``block_rows`` records
    (CSV: one parse block)."""
    if f.format == "txt":
        _no_columns_in_text(f, columns)
    try:
        if f.is_stdin:
            yield from _read_stdin(f, columns, block_rows, encoding_errors)
        elif f.format == "parquet":
            yield from _read_parquet(f, columns, block_rows, split)
        elif split is not None and split.kind == "bytes":
            yield from _read_byte_range(f, columns, block_rows, encoding_errors, split)
        elif f.format in ("csv", "tsv"):
            yield from _read_csv(f, f.path, columns)  # pyarrow decompresses by extension
        elif f.format == "jsonl":
            with _open_binary(f) as stream:
                yield from _read_jsonl(f, stream, columns, block_rows, encoding_errors)
        else:
            with _open_binary(f) as stream:
                yield from _read_txt(f, stream, block_rows)
    except FileNotFoundError:
        raise InputError(f"input not found: {f.path}") from None
    except PermissionError:
        raise InputError(f"permission denied reading {f.path}") from None
    except (EOFError, OSError, pa.ArrowInvalid, UnicodeDecodeError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # disk-level faults are runtime failures, not bad input
        raise InputError(f"{f.path}: cannot read as {f.format}: {_one_line(exc)}") from None


def _no_columns_in_text(f: InputFile, columns: Columns) -> None:
    asked = ([columns.id] if columns.id else []) + list(columns.keep)
    if asked:
        raise InputError(
            f"{f.path} is plain text, one text per line: it has no column '{asked[0]}' "
            "(--id-column and --keep-columns need csv, tsv, jsonl or parquet)"
        )


def _read_stdin(f: InputFile, columns: Columns, block_rows: int, encoding_errors: str) -> Iterator[RawRows]:
    stream = sys.stdin.buffer
    if not hasattr(stream, "peek"):
        stream = io.BufferedReader(stream)  # type: ignore[arg-type]
    fmt = f.format
    if fmt == "auto":
        head = stream.peek(4096)[:4096].lstrip()
        fmt = "jsonl" if head.startswith((b"{", b"\xef\xbb\xbf{")) else "txt"
    f = InputFile("-", fmt)
    if fmt == "txt":
        _no_columns_in_text(f, columns)
    if fmt == "parquet":
        raise InputError("Parquet cannot be read from stdin (it is not a stream); pass the file")
    if fmt in ("csv", "tsv"):
        yield from _read_csv(f, stream, columns)
    elif fmt == "jsonl":
        yield from _read_jsonl(f, stream, columns, block_rows, encoding_errors)
    else:
        yield from _read_txt(f, stream, block_rows)


def _open_binary(f: InputFile) -> IO[bytes]:
    if f.compression == "gzip":
        return gzip.open(f.path, "rb")
    if f.compression == "bz2":
        return bz2.open(f.path, "rb")
    if f.compression == "zstd":
        return pa.CompressedInputStream(pa.OSFile(f.path), "zstd")
    return open(f.path, "rb")


class ByteRange(io.RawIOBase):
    """The lines of a file whose first byte lies in [start, end), as a readable stream."""

    def __init__(self, path: str, start: int, end: int) -> None:
        self.fh = open(path, "rb")
        if start > 0:
            self.fh.seek(start - 1)
            self.fh.readline()  # on to the first line that starts at or after ``start``
        self.begin = self.fh.tell()
        self.end = end
        self.done = False

    def lines_before(self) -> int:
        """Newlines before the range: its first line's number is this plus one."""
        count, left = 0, self.begin
        with open(self.fh.name, "rb") as f:
            while left > 0:
                block = f.read(min(READ_BLOCK_BYTES, left))
                count += block.count(b"\n")
                left -= len(block)
        return count

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        position = self.fh.tell()
        if self.done or position >= self.end:
            self.done = True
            return b""
        want = self.end - position if size is None or size < 0 else min(size, self.end - position)
        data = self.fh.read(want)
        if self.fh.tell() >= self.end or not data:
            if data and not data.endswith(b"\n"):
                data += self.fh.readline()  # the last line started inside the range: finish it
            self.done = True
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.fh.close()
        super().close()


def _read_byte_range(
    f: InputFile, columns: Columns, block_rows: int, encoding_errors: str, split: Split
) -> Iterator[RawRows]:
    stream = ByteRange(f.path, split.start, split.end)
    try:
        first_line = stream.lines_before()
        if f.format in ("csv", "tsv"):
            schema = _csv_schema(f, columns)
            yield from _read_csv(
                f,
                stream,
                columns,
                schema=schema,
                first_row=max(first_line - 1, 0),
                skip_header=stream.begin == 0,
            )
        elif f.format == "jsonl":
            yield from _read_jsonl(f, stream, columns, block_rows, encoding_errors, first_line)
        else:
            yield from _read_txt(f, stream, block_rows, first_line)
    finally:
        stream.close()


def _csv_schema(f: InputFile, columns: Columns) -> pa.Schema:
    """The types a whole-file read would infer (from the first block), for a range to reuse."""
    reader = pa_csv.open_csv(f.path, **_csv_options(f, columns))
    schema = reader.schema
    reader.close()
    return schema


def _iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Split a byte stream into lines without the newline, reading 1 MiB at a time."""
    rest = b""
    first = True
    while True:
        block = stream.read(READ_BLOCK_BYTES)
        if not block:
            break
        if first and block.startswith(b"\xef\xbb\xbf"):
            block = block[3:]  # a UTF-8 byte order mark is not part of the first line
        first = False
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line[:-1] if line.endswith(b"\r") else line
    if rest:
        yield rest[:-1] if rest.endswith(b"\r") else rest


def _missing_column(f: InputFile, name: str, role: str, present: list[str]) -> InputError:
    shown = ", ".join(present) if present else "(none)"
    return InputError(f"{role} column '{name}' not found in {f.path}; columns are: {shown}")


def _check_columns(f: InputFile, columns: Columns, present: list[str]) -> None:
    roles = [(columns.text, "text")]
    roles += [(columns.id, "id")] if columns.id else []
    roles += [(k, "kept") for k in columns.keep]
    for name, role in roles:
        if name not in present:
            raise _missing_column(f, name, role, present)


def _split_table(f: InputFile, table: pa.Table, columns: Columns) -> dict[str, Any]:
    return {
        "ids": table.column(columns.id).combine_chunks() if columns.id else None,
        "keep": table.select(list(columns.keep)) if columns.keep else None,
    }


def _csv_options(
    f: InputFile,
    columns: Columns,
    on_invalid_row: Any = None,
    schema: pa.Schema | None = None,
    skip_header: bool = False,
) -> dict[str, Any]:
    read = {"use_threads": False, "block_size": READ_BLOCK_BYTES}
    types: dict[str, pa.DataType] = {}
    if schema is not None:  # a byte range: no header of its own; the whole file's names and types
        read.update(column_names=schema.names, skip_rows=1 if skip_header else 0)
        types = dict(zip(schema.names, schema.types))
    # Binary, so that invalid UTF-8 becomes a row-level decision, not a file-level crash.
    types[columns.text] = pa.binary()
    return {
        "read_options": pa_csv.ReadOptions(**read),
        "parse_options": pa_csv.ParseOptions(
            delimiter="\t" if f.format == "tsv" else ",",
            # Inside a byte range a quoted newline cannot be told from a record boundary:
            # there it makes a visibly malformed row instead of a silently merged one.
            newlines_in_values=schema is None,
            invalid_row_handler=on_invalid_row,
        ),
        "convert_options": pa_csv.ConvertOptions(column_types=types),
    }


def _read_csv(
    f: InputFile,
    source: Any,
    columns: Columns,
    schema: pa.Schema | None = None,
    first_row: int = 0,
    skip_header: bool = False,
) -> Iterator[RawRows]:
    parse_rejects: list[Reject] = []

    def on_invalid_row(row: Any) -> str:
        # pyarrow counts the header as row 1 when it reads one
        number = first_row + row.number - (0 if schema is not None and not skip_header else 1)
        reason = f"expected {row.expected_columns} columns, got {row.actual_columns}"
        parse_rejects.append(Reject(f.path, "row", number, reason, row.text))
        return "skip"

    reader = pa_csv.open_csv(source, **_csv_options(f, columns, on_invalid_row, schema, skip_header))
    present = reader.schema.names
    _check_columns(f, columns, present)
    row = first_row
    malformed: set[int] = set()  # row numbers the parser skipped: good rows are numbered around them
    for batch in reader:
        table = pa.Table.from_batches([batch]).select(columns.wanted)
        malformed.update(r.location for r in parse_rejects if r.location is not None)
        locations = []
        for _ in range(table.num_rows):
            row += 1
            while row in malformed:
                row += 1
            locations.append(row)
        yield RawRows(
            f,
            table.column(columns.text).to_pylist(),
            locations,
            parse_rejects=parse_rejects[:],
            **_split_table(f, table, columns),
        )
        parse_rejects.clear()
    if parse_rejects:
        yield RawRows(f, [], [], parse_rejects=parse_rejects[:])


def _read_parquet(f: InputFile, columns: Columns, block_rows: int, split: Split | None) -> Iterator[RawRows]:
    pf = pq.ParquetFile(f.path)
    present = pf.schema_arrow.names
    _check_columns(f, columns, present)
    text_type = pf.schema_arrow.field(columns.text).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        if not (pa.types.is_binary(text_type) or pa.types.is_large_binary(text_type)):
            raise InputError(f"{f.path}: text column '{columns.text}' is {text_type}, not a string")
    groups = list(range(pf.num_row_groups))
    if split is not None and split.kind == "row_groups":
        groups = groups[split.start : split.end]
    row = sum(pf.metadata.row_group(g).num_rows for g in range(groups[0])) if groups else 0
    for batch in pf.iter_batches(batch_size=block_rows, columns=columns.wanted, row_groups=groups):
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        yield RawRows(
            f,
            table.column(columns.text).to_pylist(),
            list(range(row + 1, row + n + 1)),
            **_split_table(f, table, columns),
        )
        row += n


def _read_jsonl(
    f: InputFile,
    stream: IO[bytes],
    columns: Columns,
    block_rows: int,
    encoding_errors: str,
    first_line: int = 0,
) -> Iterator[RawRows]:
    objects: list[dict] = []
    lines: list[str] = []
    numbers: list[int] = []
    rejects: list[Reject] = []
    checked = False
    for number, line in enumerate(_iter_lines(stream), start=first_line + 1):
        if not line.strip():
            continue  # blank lines separate nothing in JSON lines; they are not records
        obj, reason = _parse_json_object(line, encoding_errors)
        if obj is None:
            raw = line.decode("utf-8", "backslashreplace")
            rejects.append(Reject(f.path, "line", number, reason or "", raw))
            continue
        if not checked:
            _check_columns_json(f, columns, obj)
            checked = True
        objects.append(obj)
        lines.append(line.decode("utf-8", "replace"))
        numbers.append(number)
        if len(objects) >= block_rows:
            yield _json_rows(f, objects, lines, numbers, rejects, columns)
            objects, lines, numbers, rejects = [], [], [], []
    if objects or rejects:
        yield _json_rows(f, objects, lines, numbers, rejects, columns)


def _parse_json_object(line: bytes, encoding_errors: str) -> tuple[dict | None, str | None]:
    try:
        obj = json.loads(line.decode("utf-8", encoding_errors))
    except UnicodeDecodeError:
        return None, "invalid UTF-8"
    except ValueError as exc:
        return None, f"invalid JSON: {exc.args[0] if exc.args else exc}"
    if not isinstance(obj, dict):
        return None, f"JSON line is a {type(obj).__name__}, not an object"
    return obj, None


def _check_columns_json(f: InputFile, columns: Columns, first: dict) -> None:
    # Only the text column is required up front; ids and kept fields may be absent (null).
    if columns.text not in first:
        raise _missing_column(f, columns.text, "text", list(first))


def _json_rows(
    f: InputFile,
    objects: list[dict],
    lines: list[str],
    numbers: list[int],
    rejects: list[Reject],
    columns: Columns,
) -> RawRows:
    def column(name: str) -> pa.Array:
        values = [o.get(name) for o in objects]
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())

    keep = pa.table({k: column(k) for k in columns.keep}) if columns.keep else None
    return RawRows(
        f,
        [o.get(columns.text) for o in objects],
        numbers,
        ids=column(columns.id) if columns.id else None,
        keep=keep,
        raw_lines=lines,
        parse_rejects=rejects,
    )


def _read_txt(f: InputFile, stream: IO[bytes], block_rows: int, first_line: int = 0) -> Iterator[RawRows]:
    texts: list[bytes] = []
    numbers: list[int] = []
    for number, line in enumerate(_iter_lines(stream), start=first_line + 1):
        texts.append(line)
        numbers.append(number)
        if len(texts) >= block_rows:
            yield RawRows(f, texts, numbers)
            texts, numbers = [], []
    if texts:
        yield RawRows(f, texts, numbers)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------------- checking


@dataclass
class CheckedRows:
    """The good rows of one RawRows, plus what was rejected there."""

    texts: list[str]
    ids: pa.Array
    keep: pa.Table | None
    positions: np.ndarray  # global record index of each good row
    rejects: list[Reject]
    first_record: int
    records: int  # records consumed, good and rejected (parse rejects are not records)

    @property
    def record_end(self) -> int:
        return self.first_record + self.records

    def drop_before(self, record: int) -> CheckedRows:
        """What is left once every record before ``record`` is set aside (for --resume)."""
        start = int(np.searchsorted(self.positions, record))
        return CheckedRows(
            self.texts[start:],
            self.ids.slice(start),
            self.keep.slice(start) if self.keep is not None else None,
            self.positions[start:],
            [r for r in self.rejects if r.position >= record],
            self.first_record,
            self.records,
        )


def check_rows(raw: RawRows, first_record: int, encoding_errors: str, on_error: str) -> CheckedRows:
    """Decide for each record whether it can be embedded; ``first_record`` numbers default ids."""
    rejects = list(raw.parse_rejects)
    for r in rejects:
        r.position = first_record
    texts: list[str] = []
    good: list[int] = []
    null_ids = raw.ids.is_null().to_pylist() if raw.ids is not None else None
    for i, value in enumerate(raw.texts):
        text, reason = check_text(value, encoding_errors)
        if reason is None and null_ids is not None and null_ids[i]:
            reason = "null id"
        if reason is None:
            texts.append(text)  # type: ignore[arg-type]
            good.append(i)
            continue
        location = raw.locations[i]
        reject = Reject(raw.file.path, _kind(raw.file), location, reason, _raw(raw, i))
        reject.position = first_record + i
        rejects.append(reject)
    rejects.sort(key=lambda r: r.location if r.location is not None else -1)  # in file order
    if on_error == "fail" and rejects:
        raise BadRowError(f"bad row: {rejects[0].describe()} (use --on-error skip to set it aside)")
    n = len(raw.texts)
    ids = raw.ids if raw.ids is not None else pa.array(np.arange(first_record, first_record + n))
    keep = raw.keep
    if len(good) < n:
        index = pa.array(good, pa.int64())
        ids = ids.take(index)
        keep = keep.take(index) if keep is not None else None
    positions = np.asarray(good, dtype=np.int64) + first_record
    return CheckedRows(texts, ids, keep, positions, rejects, first_record, n)


def check_text(value: Any, encoding_errors: str) -> tuple[str | None, str | None]:
    """(text, None) when ``value`` can be embedded, else (None, the reason it cannot)."""
    if value is None:
        return None, "null text"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8", encoding_errors)
        except UnicodeDecodeError:
            return None, "invalid UTF-8"
    if not isinstance(value, str):
        return None, f"text is a {type(value).__name__}, not a string"
    if not value.strip():
        return None, "empty text"
    return value, None


def _kind(f: InputFile) -> str:
    return "line" if f.format in ("jsonl", "txt") else "row"


def _raw(raw: RawRows, i: int) -> str | None:
    if raw.raw_lines is not None:
        return raw.raw_lines[i]
    value = raw.texts[i]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return None if value is None else str(value)
