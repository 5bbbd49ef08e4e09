"""--overflow mean: the model stage that merges each document's windows back into one row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..batching import Chunk, TokenizedChunk
from .windows import WINDOW_COLUMNS


@dataclass
class MergedTokens(TokenizedChunk):
    """The token counts of the windows behind a chunk of merged rows (their ids are gone)."""

    padded: int = 0

    @property
    def padded_tokens(self) -> int:
        return self.padded


@dataclass
class _Open:
    """A document whose windows have begun but not all arrived."""

    total: np.ndarray  # sum of token-weighted window vectors, float64
    weight: int
    ids: pa.Array  # its id and kept columns (one row)
    keep: pa.Table | None


class MeanMerge:
    """The model stage of --overflow mean: one row per document, the mean of its windows'
    vectors (as the model returns them, so normalised when the model normalises) weighted
    by their token counts (special tokens included), L2-normalised again when the model
    normalises. Sums are float64; a document's windows never straddle a shard, so a
    resumed run merges exactly what the first run merged."""

    def __init__(self, normalize: bool) -> None:
        self.normalize = normalize
        self.next_row: int | None = None
        self.open: _Open | None = None
        self.held: list[Chunk] = []  # chunks that completed no document: their counts and rejects

    def __call__(self, embedded: Iterator[tuple[Chunk, np.ndarray]]) -> Iterator[tuple[Chunk, np.ndarray]]:
        for chunk, vectors in embedded:
            if self.next_row is None:
                self.next_row = chunk.first_row
            merged = self._merge(chunk, vectors)
            if merged is None:
                self.held.append(chunk)
                continue
            yield merged

    def _merge(self, chunk: Chunk, vectors: np.ndarray) -> tuple[Chunk, np.ndarray] | None:
        n = len(chunk)
        keep = chunk.keep
        numbers = keep.column("window").to_numpy() if n else np.zeros(0, np.int32)
        weights = keep.column("tokens").to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
        starts = np.flatnonzero(numbers == 0)
        cuts = np.concatenate(([0], starts[starts > 0])) if n else np.zeros(0, np.int64)
        totals = np.add.reduceat(vectors.astype(np.float64) * weights[:, None], cuts) if n else None
        sums = np.add.reduceat(weights, cuts) if n else None
        done_totals, done_weights, done_ids, done_keep = [], [], [], []
        for k, cut in enumerate(cuts):
            if numbers[cut] != 0:  # the open document's later windows
                self.open.total += totals[k]  # type: ignore[union-attr]
                self.open.weight += int(sums[k])  # type: ignore[union-attr]
                continue
            self._close_open(done_totals, done_weights, done_ids, done_keep)
            self.open = _Open(totals[k], int(sums[k]), chunk.ids.slice(cut, 1), _drop(keep.slice(cut, 1)))
        if chunk.shard_end:
            self._close_open(done_totals, done_weights, done_ids, done_keep)
        if not done_weights and not chunk.shard_end:
            return None
        return self._emit(chunk, vectors.shape[1], done_totals, done_weights, done_ids, done_keep)

    def _close_open(self, totals: list, weights: list, ids: list, keep: list) -> None:
        if self.open is not None:
            totals.append(self.open.total)
            weights.append(self.open.weight)
            ids.append(self.open.ids)
            keep.append(self.open.keep)
            self.open = None

    def _emit(
        self, chunk: Chunk, dim: int, totals: list, weights: list, ids: list, keep: list
    ) -> tuple[Chunk, np.ndarray]:
        count = len(weights)
        vectors = np.zeros((0, dim))
        if count:
            vectors = np.stack(totals) / np.asarray(weights, dtype=np.float64)[:, None]
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        held, self.held = [*self.held, chunk], []
        out = Chunk(
            texts=[""] * count,
            ids=pa.concat_arrays(ids) if ids else chunk.ids.slice(0, 0),
            keep=pa.concat_tables(keep) if keep and keep[0] is not None else None,
            rejects=[r for c in held for r in c.rejects],
            first_row=self.next_row,  # type: ignore[arg-type]
            record_end=chunk.record_end,
            shard_end=chunk.shard_end,
            tokens=_counts(held),
        )
        self.next_row += count  # type: ignore[operator]
        return out, vectors.astype(np.float32)


def _drop(keep: pa.Table) -> pa.Table | None:
    """The kept columns without the window columns (None when nothing else was kept)."""
    rest = keep.drop_columns([c for c in WINDOW_COLUMNS if c in keep.column_names])
    return rest if rest.num_columns else None


def _counts(chunks: list[Chunk]) -> MergedTokens:
    tokens = [c.tokens for c in chunks if c.tokens is not None]
    lengths = np.concatenate([t.lengths for t in tokens]) if tokens else np.zeros(0, np.int64)
    return MergedTokens([], lengths, 0, padded=sum(t.padded_tokens for t in tokens))
