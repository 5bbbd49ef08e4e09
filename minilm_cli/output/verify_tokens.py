"""`verify` for --pooling none: a shard of token vectors read back and checked for shape.

Parquet: ``embedding`` is list<fixed_size_list<float>[dim]> and ``token_ids``,
``token_char_start``, ``token_char_end`` are list<int32>, all with the same number of entries
per row. npy: ``embeddings/`` holds the flat (tokens, dim) matrix and ``token_offsets/`` the
rows + 1 int64 starts that index it; the metadata Parquet holds the three token columns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..config import TOKEN_COLUMNS
from ..storage import Storage
from .tables import read_table


@dataclass
class TokenShard:
    """A shard's token vectors: row i's are ``vectors[offsets[i]:offsets[i + 1]]``."""

    vectors: np.ndarray  # (tokens, dim) float32
    offsets: np.ndarray  # (rows + 1,) int64
    problems: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return max(len(self.offsets) - 1, 0)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1] if self.vectors.ndim == 2 else 0

    def rows_not_finite(self) -> int:
        bad_tokens = np.flatnonzero(~np.isfinite(self.vectors).all(axis=1))
        return len(np.unique(np.searchsorted(self.offsets, bad_tokens, side="right")))


def read_token_shard(storage: Storage, root: str, files: dict, layout: str) -> tuple[TokenShard, pa.Table]:
    """(the shard's token vectors, its other columns), from either layout."""
    if layout == "npy":
        meta = read_table(storage, os.path.join(root, files["metadata"]["path"]))
        with storage.open_read(os.path.join(root, files["embeddings"]["path"])) as f:
            vectors = np.asarray(np.load(f, allow_pickle=False), dtype=np.float32)
        if "token_offsets" not in files:
            offsets = np.zeros(1, np.int64)
            shard = TokenShard(
                vectors, offsets, ["no token_offsets file for --pooling none"] if len(meta) else []
            )
        else:
            with storage.open_read(os.path.join(root, files["token_offsets"]["path"])) as f:
                offsets = np.load(f, allow_pickle=False)
            shard = TokenShard(vectors, offsets.astype(np.int64))
            if offsets.ndim != 1 or offsets.dtype != np.int64:
                shard.problems.append(
                    f"token_offsets is {offsets.dtype} {offsets.shape}, not int64 (rows + 1,)"
                )
    else:
        table = read_table(storage, os.path.join(root, files["data"]["path"]))
        column = table.column("embedding").combine_chunks()
        meta = table.drop_columns(["embedding"])
        if not pa.types.is_list(column.type) or not pa.types.is_fixed_size_list(column.type.value_type):
            return TokenShard(
                np.zeros((0, 0), np.float32),
                np.zeros(1, np.int64),
                [f"embedding is {column.type}, not list<fixed_size_list<float>> (--pooling none)"],
            ), meta
        per_token = column.flatten()
        vectors = per_token.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        shard = TokenShard(vectors.reshape(-1, per_token.type.list_size), _offsets(column))
    shard.problems += token_problems(shard, meta)
    return shard, meta


def _offsets(column: pa.ListArray) -> np.ndarray:
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    return np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)


def token_problems(shard: TokenShard, meta: pa.Table) -> list[str]:
    """The row index and the per-token columns agree with the vectors."""
    offsets = shard.offsets
    if (
        len(offsets) == 0
        or offsets[0] != 0
        or (np.diff(offsets) < 0).any()
        or offsets[-1] != len(shard.vectors)
    ):
        return [f"the token offsets do not index the {len(shard.vectors)} token vectors row by row"]
    problems = []
    counts = np.diff(offsets)
    for name in TOKEN_COLUMNS:
        if name not in meta.column_names:
            problems.append(f"no {name} column (--pooling none)")
            continue
        column = meta.column(name).combine_chunks()
        if column.type != pa.list_(pa.int32()):
            problems.append(f"{name} is {column.type}, not list<int32>")
        elif len(column) != len(counts) or not np.array_equal(
            _offsets(column)[1:] - _offsets(column)[:-1], counts
        ):
            problems.append(f"{name} does not hold one entry per token vector")
    if not problems:
        start = meta.column("token_char_start").combine_chunks().flatten().to_numpy()
        end = meta.column("token_char_end").combine_chunks().flatten().to_numpy()
        if (start < 0).any() or (end < start).any():
            problems.append("a token's character span is negative or ends before it starts")
    return problems
