"""Gathering one block of records into a RawRows whose id and kept columns fit the schema.

Columns are converted whole where every value already has the declared Python type (the
common case: one pyarrow call); only a column holding a misfit is converted value by value,
so that the misfit becomes its row's error and the rest of the column is kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from .rows import Columns, InputFile, RawRows, Reject
from .values import type_name

Convert = Callable[[str, Any, str, str], "tuple[Any, str | None]"]
Extract = Callable[[list[Any], str], list[Any]]

_PLAIN = {"string": (str,), "int64": (int,), "float64": (float,), "bool": (bool,)}


class BlockBuilder:
    """Records of one block: their text, location, raw line, and the parsed record itself."""

    def __init__(
        self,
        f: InputFile,
        columns: Columns,
        schema: pa.Schema,
        encoding_errors: str,
        convert: Convert,
        extract: Extract,
        keep_raw: bool = True,
    ) -> None:
        self.f = f
        self.columns = columns
        self.fields = [schema.field(name) for name in columns.typed]
        self.encoding_errors = encoding_errors
        self.convert = convert
        self.extract = extract
        self.keep_raw = keep_raw
        self.rejects: list[Reject] = []
        self._reset()

    def _reset(self) -> None:
        self.texts: list[Any] = []
        self.locations: list[int] = []
        self.raw: list[str] = []
        self.items: list[Any] = []

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def pending(self) -> bool:
        return bool(self.texts or self.rejects)

    def add(self, text: Any, location: int, raw: str | None, item: Any) -> None:
        self.texts.append(text)
        self.locations.append(location)
        self.items.append(item)
        if self.keep_raw:
            self.raw.append(raw or "")

    def reject(self, location: int, reason: str, raw: str | None) -> None:
        """A record that could not even be parsed."""
        kind = "line" if self.f.format in ("jsonl", "txt") else "row"
        self.rejects.append(Reject(self.f.path, kind, location, reason, raw))

    def take(self) -> RawRows:
        """The block so far, as RawRows; the builder starts a new block."""
        errors: list[str | None] = [None] * len(self.items)
        by_name = {field.name: self._column(field, errors) for field in self.fields}
        keep = self.columns.keep_table(by_name)
        rows = RawRows(
            self.f,
            self.texts,
            self.locations,
            ids=by_name[self.columns.id] if self.columns.id else None,
            keep=keep,
            raw_lines=self.raw if self.keep_raw else None,
            parse_rejects=self.rejects,
            row_errors=errors if any(e is not None for e in errors) else None,
        )
        self.rejects = []
        self._reset()
        return rows

    def _column(self, field: pa.Field, errors: list[str | None]) -> pa.Array:
        values = self.extract(self.items, field.name)
        declared = type_name(field)
        plain = _PLAIN.get(declared)
        if plain is not None and all(v is None or v.__class__ in plain for v in values):
            try:
                return pa.array(values, field.type)
            except (pa.ArrowException, UnicodeError, OverflowError):
                pass  # a lone surrogate, invalid UTF-8, an int beyond int64: value by value
        out = []
        for i, value in enumerate(values):
            converted, reason = self.convert(field.name, value, declared, self.encoding_errors)
            if reason is not None and errors[i] is None:
                errors[i] = reason
            out.append(None if reason else converted)
        return pa.array(out, field.type)
