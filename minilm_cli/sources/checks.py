"""Row checks: each record of a RawRows is embeddable, or a Reject with its reason."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import BadRowError
from .delimited import printable
from .rows import InputFile, RawRows, Reject
from .values import clean_str


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
        # not a record, so no id of its own: with default ids, the number it would take once fixed
        r.id = None if raw.ids is not None else first_record + _records_before(raw, r.location)
    texts: list[str] = []
    good: list[int] = []
    null_ids = raw.ids.is_null().to_pylist() if raw.ids is not None else None
    row_errors = raw.row_errors
    for i, value in enumerate(raw.texts):
        text, reason = check_text(value, encoding_errors)
        if reason is None and row_errors is not None and row_errors[i] is not None:
            reason = row_errors[i]
        if reason is None and null_ids is not None and null_ids[i]:
            reason = "null id"
        if reason is None:
            texts.append(text)  # type: ignore[arg-type]
            good.append(i)
            continue
        reject = Reject(raw.file.path, _kind(raw.file), raw.locations[i], reason or "", _raw(raw, i))
        reject.position = first_record + i
        reject.id = first_record + i if raw.ids is None else json_id(raw.ids[i].as_py())
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
    value, reason = clean_str(value, encoding_errors)
    if reason is not None:
        return None, reason
    if not value.strip():  # type: ignore[union-attr]
        return None, "empty text"
    return value, None


def json_id(value: Any) -> Any:
    """An id value as a reject record (JSON) holds it: as written to stdout rows (str of
    anything JSON has no type for: timestamps, decimals, bytes)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _records_before(raw: RawRows, location: int | None) -> int:
    """Records of the block before a line or row (both counted in the same numbering)."""
    return bisect.bisect_left(raw.locations, location) if location is not None else 0


def _kind(f: InputFile) -> str:
    return "line" if f.format in ("jsonl", "txt") else "row"


def _raw(raw: RawRows, i: int) -> str | None:
    if raw.raw_lines is not None:
        return printable(raw.raw_lines[i])
    value = raw.texts[i]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return None if value is None else printable(str(value))
