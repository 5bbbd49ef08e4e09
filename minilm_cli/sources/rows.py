"""The records that flow out of the input side: which file, which columns, which part of a
file, and blocks of rows before and after their checks."""

from __future__ import annotations

import contextlib
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..errors import InputError, shown

FORMATS = ("csv", "tsv", "jsonl", "parquet", "txt")


@dataclass(frozen=True)
class InputFile:
    """One input, with what a resumed run must find unchanged."""

    path: str  # "-" is stdin
    format: str
    compression: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    #: The store's version tag (``etag:...``) for object-store inputs; None for local files.
    etag: str | None = None
    #: TSV only: quotes are quoting, as in CSV (``--tsv-quoting csv``, the default), or text.
    #: A job setting, not part of the fingerprint.
    quoting: bool = True

    @property
    def quoted(self) -> bool:
        """Do quotes quote (CSV always; TSV unless --tsv-quoting none)?"""
        return self.format == "csv" or (self.format == "tsv" and self.quoting)

    @property
    def is_stdin(self) -> bool:
        return self.path == "-"

    @property
    def key(self) -> str:
        """Which file this is however ``path`` spells it (storage/identity.py): the manifest
        records inputs under it, and --append, --resume and the job-array checks compare it."""
        from ..storage import input_key

        return input_key(self.path)

    def fingerprint(self) -> dict[str, Any]:
        """What the manifest records (the key: a real path, or the URL without credentials)
        and a resumed or appended run compares: an object rewritten in the same second with
        the same size has a new ETag."""
        out: dict[str, Any] = {
            "path": self.key,
            "format": self.format,
            "compression": self.compression,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }
        if self.etag is not None:
            out["etag"] = self.etag
        return out


@dataclass(frozen=True)
class Columns:
    """Which input columns the job reads."""

    text: str = "text"
    id: str | None = None
    keep: tuple[str, ...] = ()
    #: The kept columns' names in the output, parallel to ``keep`` (``--keep-columns a:b``);
    #: empty when every one keeps its input name.
    keep_as: tuple[str, ...] = ()

    @property
    def kept(self) -> list[tuple[str, str]]:
        """(input name, output name) of each kept column."""
        return list(zip(self.keep, self.keep_as or self.keep))

    def keep_table(self, typed: dict[str, pa.Array]) -> pa.Table | None:
        """The kept columns of a block, under their output names (an id column kept as
        well is the same array twice: once as ``id``, once here)."""
        if not self.keep:
            return None
        return pa.table({name: typed[source] for source, name in self.kept})

    @property
    def wanted(self) -> list[str]:
        names = [self.text] + ([self.id] if self.id else []) + list(self.keep)
        return list(dict.fromkeys(names))

    @property
    def typed(self) -> list[str]:
        """The columns whose types the schema fixes: the id first, then the kept ones."""
        return list(dict.fromkeys(([self.id] if self.id else []) + list(self.keep)))


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
            "path": self.file.key,
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
    #: The id the row would have had, to join it back: the record number it takes (or, for a
    #: line that is not even a record, would take once fixed) with default ids; the
    #: --id-column's value as JSON allows (None where the id itself is missing or unreadable).
    id: Any = None

    def describe(self) -> str:
        where = f"{self.location_kind} {self.location}" if self.location is not None else "?"
        return f"{self.source}, {where}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            self.location_kind: self.location,
            "reason": self.reason,
            "raw": self.raw,
        }


@dataclass
class RawRows:
    """Up to one read block of records from one file, not yet checked.

    ``ids`` and ``keep`` conform exactly to the job's schema; a value that did not fit it
    is null there and its row carries the reason in ``row_errors`` (a bad row)."""

    file: InputFile
    texts: list[Any]
    locations: list[int]
    ids: pa.Array | None = None
    keep: pa.Table | None = None
    raw_lines: list[str] | None = None
    parse_rejects: list[Reject] = field(default_factory=list)
    row_errors: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.texts)


@contextlib.contextmanager
def input_errors(f: InputFile) -> Iterator[None]:
    """What reading ``f`` may raise, as the one-line InputError a user can act on."""
    try:
        yield
    except FileNotFoundError:
        raise InputError(f"input not found: {f.path}") from None
    except PermissionError:
        raise InputError(f"permission denied reading {f.path}") from None
    except (EOFError, OSError, pa.ArrowException, UnicodeDecodeError, zlib.error, lzma.LZMAError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # disk-level faults are runtime failures, not bad input
        raise InputError(f"{f.path}: cannot read as {f.format}: {_read_failure(f, exc)}") from None


def _read_failure(f: InputFile, exc: BaseException) -> str:
    """Why ``f`` cannot be read, in our words first; the library's own words follow in
    brackets as the detail (never as the explanation)."""
    detail = one_line(exc)
    if f.compression and isinstance(exc, EOFError):
        return f"the {f.compression} stream ends early, a cut-short file? ({detail})"
    codec = (zlib.error, lzma.LZMAError, OSError) + ((pa.ArrowException,) if f.compression == "zstd" else ())
    if f.compression and isinstance(exc, codec):  # OSError: bz2's and gzip's bad data (errno None)
        return f"not valid {f.compression} data ({detail})"
    if f.format == "parquet" and isinstance(exc, pa.ArrowException):
        return f"not a readable Parquet file ({detail})"
    return detail


def one_line(exc: BaseException) -> str:
    """An exception's message for an error line: one line, cut and escaped (it may quote data)."""
    return shown(" ".join(str(exc).split()), 160) or type(exc).__name__
