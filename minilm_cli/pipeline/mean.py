"""--overflow mean: the model stage that merges each document's windows back into one row."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..batching import Chunk, TokenizedChunk
from ..config import WINDOW_COLUMNS


@dataclass
class MergedTokens(TokenizedChunk):
    """The token counts of the windows behind a chunk of merged rows (their ids are gone)."""

    padded: int = 0
    windows_run: int = 0  # windows that went through the model
    window_rows: int = 0  # windows behind these documents, a copy of a repeated window included

    @property
    def padded_tokens(self) -> int:
        return self.padded

    @property
    def model_rows(self) -> int:
        return self.windows_run


@dataclass
class _Open:
    """A document whose windows have begun but not all arrived."""

    total: np.ndarray  # sum of token-weighted window vectors, float64
    weight: int
    ids: pa.Array  # its id and kept columns (one row)
    keep: pa.Table | None
    # blake2b-128 over its windows' keys (dedup.token_keys) in order: the document's key,
    # what its row's entry in the key file holds; None when its windows came without keys
    key: Any

    def add(self, total: np.ndarray, weight: int, window_keys: bytes | None) -> None:
        self.total += total
        self.weight += weight
        if self.key is not None and window_keys is not None:
            self.key.update(window_keys)
        else:
            self.key = None


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
        keys = np.ascontiguousarray(chunk.keys) if chunk.keys is not None else None
        ends = np.append(cuts[1:], n).astype(np.int64)
        done = _Done()
        for k, cut in enumerate(cuts):
            window_keys = keys[cut : ends[k]].tobytes() if keys is not None else None
            if numbers[cut] != 0:  # the open document's later windows
                self.open.add(totals[k], int(sums[k]), window_keys)  # type: ignore[union-attr]
                continue
            done.close(self)
            key = hashlib.blake2b(window_keys, digest_size=16) if window_keys is not None else None
            first = _drop(keep.slice(cut, 1))
            self.open = _Open(totals[k], int(sums[k]), chunk.ids.slice(cut, 1), first, key)
        if chunk.shard_end:
            done.close(self)
        if not done.weights and not chunk.shard_end:
            return None
        return self._emit(chunk, vectors.shape[1], done)

    def _emit(self, chunk: Chunk, dim: int, done: _Done) -> tuple[Chunk, np.ndarray]:
        count = len(done.weights)
        vectors = np.zeros((0, dim))
        if count:
            vectors = np.stack(done.totals) / np.asarray(done.weights, dtype=np.float64)[:, None]
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        held, self.held = [*self.held, chunk], []
        out = Chunk(
            texts=[""] * count,
            ids=pa.concat_arrays(done.ids) if done.ids else chunk.ids.slice(0, 0),
            keep=pa.concat_tables(done.keep) if done.keep and done.keep[0] is not None else None,
            rejects=[r for c in held for r in c.rejects],
            first_row=self.next_row,  # type: ignore[arg-type]
            record_end=chunk.record_end,
            shard_end=chunk.shard_end,
            tokens=_counts(held),
            keys=done.key_array(),
        )
        self.next_row += count  # type: ignore[operator]
        return out, vectors.astype(np.float32)


@dataclass
class _Done:
    """Documents whose last window has arrived, waiting to be emitted."""

    totals: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    keep: list = field(default_factory=list)
    keys: list = field(default_factory=list)

    def close(self, merge: MeanMerge) -> None:
        """The open document (if any) is complete."""
        doc = merge.open
        if doc is not None:
            self.totals.append(doc.total)
            self.weights.append(doc.weight)
            self.ids.append(doc.ids)
            self.keep.append(doc.keep)
            self.keys.append(doc.key.digest() if doc.key is not None else None)
            merge.open = None

    def key_array(self) -> np.ndarray | None:
        """rows x 2 uint64, as dedup.text_keys / token_keys lay keys out (None: unkeyed)."""
        if any(k is None for k in self.keys):
            return None
        return np.frombuffer(b"".join(self.keys), dtype="<u8").reshape(-1, 2)


def _drop(keep: pa.Table) -> pa.Table | None:
    """The kept columns without the window columns (None when nothing else was kept)."""
    rest = keep.drop_columns([c for c in WINDOW_COLUMNS if c in keep.column_names])
    return rest if rest.num_columns else None


def _counts(chunks: list[Chunk]) -> MergedTokens:
    tokens = [c.tokens for c in chunks if c.tokens is not None]
    lengths = np.concatenate([t.lengths for t in tokens]) if tokens else np.zeros(0, np.int64)
    run = sum(t.model_rows for t in tokens)
    padded = sum(t.padded_tokens for t in tokens)
    return MergedTokens([], lengths, 0, padded, windows_run=run, window_rows=sum(len(c) for c in chunks))
