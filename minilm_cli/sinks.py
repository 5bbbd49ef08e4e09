"""Output side: embeddings and their row metadata into shards, or JSON lines on stdout.

A shard is written under hidden temp names and published (fsync, rename, fsync dir)
only once it is complete; the pipeline then records it in the manifest. A reader, or a
resumed run, never mistakes a half-written shard for a finished one.

Layouts:
  parquet  OUTPUT/part-00000.parquet         id, embedding fixed_size_list<float>[dim], kept columns
  npy      OUTPUT/embeddings/part-00000.npy  rows x dim
           OUTPUT/metadata/part-00000.parquet id and kept columns, same row order
  rejects  OUTPUT/rejects/part-00000.jsonl   rows set aside under --on-error skip
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import publish, temp_path
from .batching import Chunk
from .errors import InputError
from .model import sha256_file

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class FileRecord:
    path: str  # relative to OUTPUT
    bytes: int
    sha256: str

    @classmethod
    def of(cls, root: Path, path: Path) -> FileRecord:
        return cls(str(path.relative_to(root)), path.stat().st_size, sha256_file(path))


@dataclass
class ShardRecord:
    """A finished shard, as the manifest lists it."""

    index: int
    rows: int
    rejected: int
    first_row: int
    record_end: int
    truncated: int
    tokens: int
    padded_tokens: int
    files: dict[str, FileRecord]


def embedding_array(embeddings: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    values = pa.array(embeddings.astype(NUMPY_DTYPES[dtype], copy=False).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, embeddings.shape[1])


def metadata_table(chunk: Chunk) -> pa.Table:
    table = pa.table({"id": chunk.ids})
    if chunk.keep is not None:
        for name in chunk.keep.column_names:
            table = table.append_column(name, chunk.keep.column(name))
    return table


class ShardWriter:
    """Writes shards ``{prefix}{index:05d}`` of one layout under OUTPUT, one at a time."""

    def __init__(
        self, root: Path, layout: str, dtype: str, prefix: str = "part-", first_index: int = 0
    ) -> None:
        self.root = root
        self.layout = layout
        self.dtype = dtype
        self.prefix = prefix
        self.index = first_index
        self._open: _OpenShard | None = None

    def write(self, chunk: Chunk, embeddings: np.ndarray) -> ShardRecord | None:
        """Append a chunk; when it ends a shard, publish the shard and return its record."""
        if self._open is None and (len(chunk) or chunk.rejects):
            self._open = _OpenShard(self._paths(), self.layout, self.dtype, chunk.first_row)
        if self._open is not None:
            self._open.append(chunk, embeddings)
            if chunk.shard_end:
                record = self._open.publish(self.root, self.index, chunk.record_end)
                self._open = None
                self.index += 1
                return record
        return None

    def abort(self) -> None:
        """Drop the shard being written; finished shards are untouched."""
        if self._open is not None:
            self._open.discard()
            self._open = None

    def _paths(self) -> dict[str, Path]:
        name = f"{self.prefix}{self.index:05d}"
        if self.layout == "npy":
            paths = {
                "embeddings": self.root / "embeddings" / f"{name}.npy",
                "metadata": self.root / "metadata" / f"{name}.parquet",
            }
        else:
            paths = {"data": self.root / f"{name}.parquet"}
        paths["rejects"] = self.root / "rejects" / f"{name}.jsonl"
        return paths


class _OpenShard:
    """The files of one shard while it is being written, all under temp names."""

    def __init__(self, paths: dict[str, Path], layout: str, dtype: str, first_row: int) -> None:
        self.paths = paths
        self.layout = layout
        self.dtype = dtype
        self.first_row = first_row
        self.rows = 0
        self.rejected = 0
        self.truncated = 0
        self.tokens = 0
        self.padded_tokens = 0
        self.parquet: pq.ParquetWriter | None = None
        self.npy: _NpyAppender | None = None
        self.rejects: IO[str] | None = None
        for role, path in paths.items():
            if role != "rejects":  # made only when a row is rejected
                path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, chunk: Chunk, embeddings: np.ndarray) -> None:
        if chunk.rejects:
            self._append_rejects(chunk)
        table = metadata_table(chunk)
        if self.layout == "npy":
            self._ensure_npy(embeddings.shape[1])
            self.npy.append(embeddings)  # type: ignore[union-attr]
        else:
            table = table.add_column(1, "embedding", embedding_array(embeddings, self.dtype))
        if len(chunk) or self.parquet is None:
            self._write_parquet(table)
        self.rows += len(chunk)
        if chunk.tokens is not None:
            self.truncated += chunk.tokens.truncated
            self.tokens += chunk.tokens.real_tokens
            self.padded_tokens += chunk.tokens.padded_tokens

    def _write_parquet(self, table: pa.Table) -> None:
        if self.parquet is None:
            target = self.paths["metadata" if self.layout == "npy" else "data"]
            self.parquet = pq.ParquetWriter(temp_path(target), table.schema)
            self.schema = table.schema
        try:
            table = table.cast(self.schema) if table.schema != self.schema else table
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"a column changes type between rows or inputs: {exc}") from None
        self.parquet.write_table(table)

    def _ensure_npy(self, dim: int) -> None:
        if self.npy is None:
            self.npy = _NpyAppender(temp_path(self.paths["embeddings"]), dim, NUMPY_DTYPES[self.dtype])

    def _append_rejects(self, chunk: Chunk) -> None:
        if self.rejects is None:
            self.paths["rejects"].parent.mkdir(parents=True, exist_ok=True)
            self.rejects = open(temp_path(self.paths["rejects"]), "w", encoding="utf-8")
        for reject in chunk.rejects:
            self.rejects.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")
        self.rejected += len(chunk.rejects)

    def _close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if self.npy is not None:
            self.npy.close()
        if self.rejects is not None:
            self.rejects.close()

    def publish(self, root: Path, index: int, record_end: int) -> ShardRecord:
        if self.layout == "npy" and self.npy is None:
            self._ensure_npy(0)  # a shard of rejects only still gets its (empty) arrays
        self._close()
        files = {}
        for role, final in self.paths.items():
            tmp = temp_path(final)
            if tmp.exists():
                publish(tmp, final)
                files[role] = FileRecord.of(root, final)
        return ShardRecord(
            index,
            self.rows,
            self.rejected,
            self.first_row,
            record_end,
            self.truncated,
            self.tokens,
            self.padded_tokens,
            files,
        )

    def discard(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - discarding after a failure must not fail again
            pass
        for final in self.paths.values():
            temp_path(final).unlink(missing_ok=True)


class _NpyAppender:
    """A .npy written row-block by row-block; the header's row count is fixed at close.

    numpy pads .npy headers so that the first dimension can grow in place, so the header
    written for 0 rows has the same length as the final one and is simply overwritten.
    """

    def __init__(self, path: Path, dim: int, dtype: type) -> None:
        self.path = path
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self.file = open(path, "wb")
        self.header_len = self._write_header(0)

    def _write_header(self, rows: int) -> int:
        self.file.seek(0)
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (rows, self.dim),
        }
        np.lib.format.write_array_header_1_0(self.file, header)
        return self.file.tell()

    def append(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def close(self) -> None:
        if self.file.closed:
            return
        self.file.flush()
        end = self.file.tell()
        if self._write_header(self.rows) != self.header_len:
            raise RuntimeError("npy header changed length")  # numpy's growth padding prevents this
        self.file.seek(end)
        self.file.close()


class JsonLinesWriter:
    """``-o -``: one JSON object per row on stdout, for pipes into jq and friends."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, chunk: Chunk, embeddings: np.ndarray) -> None:
        meta = metadata_table(chunk).to_pylist()
        lines = []
        for row, vector in zip(meta, embeddings.tolist()):
            row["embedding"] = vector
            lines.append(json.dumps(row, default=str))
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
