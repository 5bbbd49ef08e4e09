"""Cut the row stream into chunks, and chunks into model batches.

Chunks are windows of rows: tokenized together, sorted by length, embedded, and put
back in input order. They never straddle an output shard, so a resumed run forms the
same chunks (and so the same batches, and bit-identical fp32 embeddings) as the first.

Batches are cut from a length-sorted chunk by a padded-token budget: rows x longest
row <= ``batch_tokens``, and at most ``batch_size`` rows. Short texts travel in big
batches, long ones in small, and little compute is spent on padding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import InputError
from .sources import CheckedRows, Reject


@dataclass
class Chunk:
    """Checked rows ready to embed, and the rejects met while gathering them."""

    texts: list[str]
    ids: pa.Array
    keep: pa.Table | None
    rejects: list[Reject]
    first_row: int  # output row number of texts[0]
    record_end: int  # input records consumed once this chunk is written (the resume point)
    shard_end: bool = False  # the last chunk of an output shard
    tokens: TokenizedChunk | None = None
    dedup: Any = None  # pipeline.dedup.DedupPlan: which rows the model sees, when deduplicating
    keys: np.ndarray | None = None  # rows x 2 uint64: each text's key (pipeline.dedup.text_keys)
    truncated: int | None = None  # rows whose text was truncated, copied and reused rows included

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def truncated_rows(self) -> int:
        """Rows written whose text was truncated, whatever their vector's source (the count the
        summary and the manifest give); the model's own count where no one counted all rows."""
        if self.truncated is not None:
            return self.truncated
        return self.tokens.truncated if self.tokens is not None else 0


def row_offsets(lengths: np.ndarray) -> np.ndarray:
    """Where each row starts in rows laid end to end: ``len(lengths) + 1`` int64, from 0."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


class FlatIds:
    """Rows of token ids as one flat int32 array and row offsets: no Python object per row,
    so a chunk's ids pad in a few vectorised steps and travel between threads or processes
    as two buffers. ``ids[i]`` is row i (a view); ``len(ids)`` the rows."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray) -> None:
        self.values = values  # int32, every row's ids end to end
        self.offsets = offsets  # int64, rows + 1: row i is values[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_rows(cls, rows: Sequence[np.ndarray]) -> FlatIds:
        offsets = row_offsets(np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows)))
        values = np.concatenate(rows).astype(np.int32) if len(rows) else np.zeros(0, np.int32)
        return cls(values, offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> np.ndarray:
        return self.values[self.offsets[row] : self.offsets[row + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


@dataclass
class TokenizedChunk:
    """Token ids of a chunk, and the batches to run them in."""

    ids: FlatIds
    lengths: np.ndarray
    truncated: int
    batches: list[Batch] = field(default_factory=list)
    overflowed: list[bool] = field(default_factory=list)  # per row, when tokenized from text
    # --pooling none: per row, each token's (start, end) characters in the original text
    spans: list[np.ndarray] | None = None

    @property
    def model_rows(self) -> int:
        """Rows (texts or windows) that go through the model."""
        return len(self.ids)

    @property
    def real_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def padded_tokens(self) -> int:
        return sum(b.input_ids.shape[0] * b.input_ids.shape[1] for b in self.batches)


@dataclass
class Batch:
    """Padded model input for some rows of a chunk; ``rows`` are their chunk positions."""

    rows: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    # Flat positions of the real tokens in the (rows x width) layout, set for a GPU only: our
    # encoder packs the tokens with them, and finding them on a GPU would stall every batch.
    positions: np.ndarray | None = None


def chunk_rows(
    checked: Iterable[CheckedRows],
    chunk_size: int,
    shard_rows: int,
    first_row: int = 0,
    first_record: int = 0,
    by_records: bool = False,
) -> Iterator[Chunk]:
    """Regroup checked rows into chunks of ``chunk_size`` that end at every shard boundary.

    A chunk carries the rejects whose record position falls before its last row, and its
    ``record_end`` is the record just after that row: where a resumed run starts reading.
    Rows of one record (the windows of a long document share its position) are never cut
    by a shard boundary: the shard runs past ``shard_rows`` to the record's last row, so a
    resume never repeats or loses part of a record. A piece whose last record goes on in
    the next piece says so with a true ``continues`` attribute. ``by_records``: a shard
    holds ``shard_rows`` records, however many rows each (their rows merge into one later).
    """
    pending = _Pending(first_row)
    shard = _ShardCount(shard_rows, by_records)
    record_end = first_record
    for piece in checked:
        pending.rejects.extend(piece.rejects)
        positions, n, offset = piece.positions, len(piece.texts), 0
        continues = bool(getattr(piece, "continues", False))
        while offset < n:
            if shard.finishing is not None and positions[offset] != shard.finishing:
                yield shard.end(pending.emit(shard.finishing + 1, shard_end=True))
                continue
            take = min(chunk_size - pending.rows, n - offset)
            if shard.finishing is None:
                take = min(take, shard.room(positions, offset, n))
            else:
                take = min(take, _run_length(positions, offset, shard.finishing))
            pending.add(piece, offset, take)
            shard.took(positions, offset, take)
            offset += take
            last = int(positions[offset - 1])
            if shard.finishing is None and shard.full:
                if (offset < n and positions[offset] == last) or (offset == n and continues):
                    shard.finishing = last  # the shard is full, but this record goes on
                else:
                    yield shard.end(pending.emit(last + 1, shard_end=True))
                    continue
            ended = positions[offset] != last if offset < n else not continues
            if shard.finishing is not None and ended:
                yield shard.end(pending.emit(last + 1, shard_end=True))
            elif pending.rows == chunk_size:
                yield pending.emit(last + 1, shard_end=False)
        record_end = piece.record_end
    yield pending.emit(record_end, shard_end=True, final=True)


class _ShardCount:
    """What the open shard holds (rows, or records started), and the record that overflows it."""

    def __init__(self, shard_rows: int, by_records: bool) -> None:
        self.limit = shard_rows
        self.by_records = by_records
        self.used = 0
        self.last = -1  # position of the last row taken
        self.finishing: int | None = None

    @property
    def full(self) -> bool:
        return self.used >= self.limit

    def _starts(self, positions: np.ndarray, offset: int, end: int) -> np.ndarray:
        """Where records start in positions[offset:end], relative to offset."""
        seg = positions[offset:end]
        before = np.concatenate(([self.last], seg[:-1]))
        return np.flatnonzero(seg != before)

    def room(self, positions: np.ndarray, offset: int, n: int) -> int:
        """The most rows from ``offset`` on that the shard takes before it is full."""
        if not self.by_records:
            return self.limit - self.used
        starts = self._starts(positions, offset, n)
        left = self.limit - self.used
        return n - offset if len(starts) <= left else int(starts[left])

    def took(self, positions: np.ndarray, offset: int, take: int) -> None:
        self.used += len(self._starts(positions, offset, offset + take)) if self.by_records else take
        self.last = int(positions[offset + take - 1])

    def end(self, chunk: Chunk) -> Chunk:
        self.used, self.finishing = 0, None
        return chunk


def _run_length(positions: np.ndarray, offset: int, record: int) -> int:
    """How many rows from ``offset`` on belong to ``record``."""
    return int(np.searchsorted(positions[offset:], record, side="right"))


class _Pending:
    def __init__(self, first_row: int) -> None:
        self.first_row = first_row
        self.rejects: list[Reject] = []
        self._reset()

    def _reset(self) -> None:
        self.texts: list[str] = []
        self.ids: list[pa.Array] = []
        self.keep: list[pa.Table] = []

    @property
    def rows(self) -> int:
        return len(self.texts)

    def add(self, piece: CheckedRows, offset: int, take: int) -> None:
        self.texts.extend(piece.texts[offset : offset + take])
        self.ids.append(piece.ids.slice(offset, take))
        if piece.keep is not None:
            self.keep.append(piece.keep.slice(offset, take))

    def _types(self) -> str:
        """Each column's types across the pieces, where it has more than one."""
        columns = {"id": [a.type for a in self.ids]}
        for table in self.keep:
            for column in table.schema:
                columns.setdefault(column.name, []).append(column.type)
        seen = {name: sorted({str(t) for t in types}) for name, types in columns.items()}
        mixed = [f"{name} is {' and '.join(types)}" for name, types in seen.items() if len(types) > 1]
        return "; ".join(mixed) or "their columns differ"

    def emit(self, record_end: int, shard_end: bool, final: bool = False) -> Chunk:
        try:
            ids = pa.concat_arrays(self.ids) if self.ids else pa.array([], pa.int64())
            keep = pa.concat_tables(self.keep, promote_options="permissive") if self.keep else None
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise InputError(f"the id or kept columns change type between inputs: {self._types()}") from None
        # Parse rejects after the last record sit at record_end itself: the final chunk takes them.
        mine = [r for r in self.rejects if final or r.position < record_end]
        self.rejects = [r for r in self.rejects if not final and r.position >= record_end]
        chunk = Chunk(self.texts, ids, keep, mine, self.first_row, record_end, shard_end)
        self.first_row += self.rows
        self._reset()
        return chunk


def plan_batches(lengths: np.ndarray, batch_tokens: int, batch_size: int) -> list[np.ndarray]:
    """Group row positions, longest first, so each group's rows x longest <= batch_tokens."""
    order = np.argsort(-lengths, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        fit = max(1, min(batch_size, batch_tokens // max(longest, 1)))
        groups.append(order[start : start + fit])
        start += fit
    return groups


def pad_batch(
    ids: FlatIds | Sequence[np.ndarray], lengths: np.ndarray, rows: np.ndarray, pad_id: int
) -> Batch:
    """Right-pad the rows' token ids into one int64 matrix and its attention mask, in a few
    whole-array steps (no Python loop over rows)."""
    flat = ids if isinstance(ids, FlatIds) else FlatIds.from_rows(ids)
    n = lengths[rows]
    width = int(n.max())
    columns = np.arange(width)
    real = columns < n[:, None]
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    input_ids[real] = flat.values[(flat.offsets[rows][:, None] + columns)[real]]
    return Batch(rows, input_ids, real.astype(np.int64))
