"""JSON lines: one object per line (universal newlines), typed by the job's schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO

import pyarrow as pa

from ..errors import InputError, shown
from .blocks import BlockBuilder
from .rows import Columns, InputFile, RawRows
from .streams import iter_lines
from .values import json_value


def parse_json_object(line: bytes, encoding_errors: str) -> tuple[dict | None, str | None]:
    """(the object, None), or (None, why the line is not a JSON object)."""
    try:
        obj = json.loads(line.decode("utf-8", encoding_errors))
    except UnicodeDecodeError:
        return None, "invalid UTF-8"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except ValueError as exc:
        return None, f"invalid JSON: {exc.args[0] if exc.args else exc}"
    if not isinstance(obj, dict):
        return None, f"JSON line is a {type(obj).__name__}, not an object"
    return obj, None


def _extract(objects: list[dict], name: str) -> list:
    return [o.get(name) for o in objects]


def read_jsonl(
    f: InputFile,
    stream: IO[bytes],
    columns: Columns,
    schema: pa.Schema,
    block_rows: int,
    encoding_errors: str,
    first_line: int = 0,
) -> Iterator[RawRows]:
    block = BlockBuilder(f, columns, schema, encoding_errors, json_value, _extract)
    checked = False
    for number, line in enumerate(iter_lines(stream), start=first_line + 1):
        if not line.strip():
            continue  # blank lines separate nothing in JSON lines; they are not records
        obj, reason = parse_json_object(line, encoding_errors)
        if obj is None:
            block.reject(number, reason or "", line.decode("utf-8", "backslashreplace"))
            continue
        if not checked:
            # Only the text column is required up front; ids and kept fields may be absent (null).
            if columns.text not in obj:
                listed = shown(", ".join(obj), 120) if obj else "(none)"
                raise InputError(f"text column '{columns.text}' not found in {f.path}; columns are: {listed}")
            checked = True
        block.add(obj.get(columns.text), number, line.decode("utf-8", "replace"), obj)
        if len(block) >= block_rows:
            yield block.take()
    if block.pending:
        yield block.take()
