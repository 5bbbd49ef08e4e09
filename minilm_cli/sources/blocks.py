"""Gathering one block of records, value by value, into a RawRows that fits the schema."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from .rows import Columns, InputFile, RawRows, Reject
from .values import type_name

Convert = Callable[[str, Any, str, str], "tuple[Any, str | None]"]


class BlockBuilder:
    """Rows of one block: their text, location, raw line, typed values and row errors."""

    def __init__(
        self,
        f: InputFile,
        columns: Columns,
        schema: pa.Schema,
        encoding_errors: str,
        convert: Convert,
        keep_raw: bool = True,
    ) -> None:
        self.f = f
        self.columns = columns
        self.fields = [schema.field(name) for name in columns.typed]
        self.declared = [type_name(field) for field in self.fields]
        self.encoding_errors = encoding_errors
        self.convert = convert
        self.keep_raw = keep_raw
        self.rejects: list[Reject] = []
        self._reset()

    def _reset(self) -> None:
        self.texts: list[Any] = []
        self.locations: list[int] = []
        self.raw: list[str] = []
        self.values: list[list[Any]] = [[] for _ in self.fields]
        self.errors: list[str | None] = []
        self.any_error = False

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: Any, location: int, raw: str | None, get: Callable[[str], Any]) -> None:
        """One record; ``get(name)`` is its raw value of a column (None when absent)."""
        error = None
        for field, declared, out in zip(self.fields, self.declared, self.values):
            value, reason = self.convert(field.name, get(field.name), declared, self.encoding_errors)
            if reason is not None and error is None:
                error = reason
            out.append(None if reason else value)
        self.texts.append(text)
        self.locations.append(location)
        if self.keep_raw:
            self.raw.append(raw or "")
        self.errors.append(error)
        self.any_error = self.any_error or error is not None

    def reject(self, location: int, reason: str, raw: str | None) -> None:
        """A record that could not even be parsed."""
        kind = "line" if self.f.format in ("jsonl", "txt") else "row"
        self.rejects.append(Reject(self.f.path, kind, location, reason, raw))

    def take(self) -> RawRows:
        """The block so far, as RawRows; the builder starts a new block."""
        arrays = [pa.array(v, field.type) for v, field in zip(self.values, self.fields)]
        by_name = dict(zip(self.columns.typed, arrays))
        keep = None
        if self.columns.keep:
            keep = pa.table({k: by_name[k] for k in self.columns.keep})
        rows = RawRows(
            self.f,
            self.texts,
            self.locations,
            ids=by_name[self.columns.id] if self.columns.id else None,
            keep=keep,
            raw_lines=self.raw if self.keep_raw else None,
            parse_rejects=self.rejects,
            row_errors=self.errors if self.any_error else None,
        )
        self.rejects = []
        self._reset()
        return rows

    @property
    def pending(self) -> bool:
        return bool(self.texts or self.rejects)
