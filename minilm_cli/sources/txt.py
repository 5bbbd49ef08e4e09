"""Plain text: one text per line (universal newlines); no columns. A blank line (ASCII
whitespace only) is no record and takes no number, as in JSON lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from ..errors import InputError
from .rows import Columns, InputFile, RawRows
from .streams import iter_lines


def no_columns_in_text(f: InputFile, columns: Columns) -> None:
    asked = ([columns.id] if columns.id else []) + list(columns.keep)
    if asked:
        raise InputError(
            f"{f.path} is plain text, one text per line: it has no column '{asked[0]}' "
            "(--id-column and --keep-columns need csv, tsv, jsonl or parquet)"
        )


def read_txt(f: InputFile, stream: IO[bytes], block_rows: int, first_line: int = 0) -> Iterator[RawRows]:
    texts: list[bytes] = []
    numbers: list[int] = []
    for number, line in enumerate(iter_lines(stream), start=first_line + 1):
        if not line.strip():
            continue  # blank lines separate paragraphs of prose; they are not records (as in JSON lines)
        texts.append(line)
        numbers.append(number)
        if len(texts) >= block_rows:
            yield RawRows(f, texts, numbers)
            texts, numbers = [], []
    if texts:
        yield RawRows(f, texts, numbers)
