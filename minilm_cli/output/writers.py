"""Embeddings and their row metadata into shards, or JSON lines on stdout.

A shard's files are written through the storage layer as pending files: invisible under
their final names until ``commit``, so a reader or a resumed run never mistakes a
half-written shard for a finished one. Every shard of a run gets the same Parquet schema:
``metadata_schema`` (id + kept columns) when the run resolved one, else the first table's.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import select
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..batching import Chunk
from ..errors import InputError
from ..model.tokens import TokenVectors
from ..sources.values import schema_difference
from ..storage import PendingFile, Storage, storage_for
from .layout import Layout

#: --dtype -> the stored array's numpy type, so the Parquet list's value type (binary is int8
#: bytes, ubinary uint8 bytes: 8 dims each) and the .npy's dtype
NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}


@dataclass
class FileRecord:
    path: str  # relative to OUTPUT
    bytes: int
    sha256: str


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
    embedded: int = 0  # rows (or windows) that went through the model (repeated texts are copied)
    reused: int = 0  # rows whose vector is a --reuse output's (looked up, or a copy of one)
    reuse: str | None = None  # the manifest's "reuse" entry this shard looked rows up in


def sha256_of(storage: Storage, path: str) -> str:
    digest = hashlib.sha256()
    with storage.open_read(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedding_array(embeddings: np.ndarray | TokenVectors, dtype: str) -> pa.Array:
    """``fixed_size_list<dtype>[width]`` per row: int8 for int8 and binary, uint8 for uint8 and
    ubinary (quantized rows already hold their stored values: an exact cast here); for token
    vectors, a list of them per row."""
    if isinstance(embeddings, TokenVectors):
        per_token = embedding_array(embeddings.vectors, dtype)
        return pa.ListArray.from_arrays(pa.array(embeddings.offsets, pa.int32()), per_token)
    values = pa.array(embeddings.astype(NUMPY_DTYPES[dtype], copy=False).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, embeddings.shape[1])


def token_columns(tokens: TokenVectors) -> dict[str, pa.ListArray]:
    """--pooling none's per-token columns: ids and each token's characters in the original text."""
    offsets = pa.array(tokens.offsets, pa.int32())
    values = {
        "token_ids": tokens.token_ids,
        "token_char_start": tokens.spans[:, 0],
        "token_char_end": tokens.spans[:, 1],
    }
    return {name: pa.ListArray.from_arrays(offsets, pa.array(v, pa.int32())) for name, v in values.items()}


def metadata_table(chunk: Chunk, embeddings: object = None) -> pa.Table:
    table = pa.table({"id": chunk.ids})
    if chunk.keep is not None:
        for name in chunk.keep.column_names:
            table = table.append_column(name, chunk.keep.column(name))
    if isinstance(embeddings, TokenVectors):
        for name, column in token_columns(embeddings).items():
            table = table.append_column(name, column)
    return table


class ShardWriter:
    """Writes the shards of one writer's ``layout`` under OUTPUT, one at a time."""

    def __init__(
        self,
        layout: Layout,
        fmt: str,
        dtype: str,
        first_index: int = 0,
        metadata_schema: pa.Schema | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.layout = layout
        self.fmt = fmt
        self.dtype = dtype
        self.index = first_index
        self.metadata_schema = metadata_schema
        self.storage = storage or storage_for(layout.root)
        self._open: _OpenShard | None = None
        self.reuse: str | None = None  # set by OutputSession.record_reuse

    def write(self, chunk: Chunk, embeddings: np.ndarray) -> ShardRecord | None:
        """Append a chunk; when it ends a shard, commit the shard and return its record."""
        if self._open is None and (len(chunk) or chunk.rejects):
            files = self.layout.shard_files(self.index, self.fmt)
            self._open = _OpenShard(self, files, chunk.first_row)
        if self._open is not None:
            self._open.append(chunk, embeddings)
            if chunk.shard_end:
                shard, self._open = self._open, None
                try:
                    record = shard.commit(self.index, chunk.record_end)
                except BaseException:
                    shard.discard()  # nothing half-written stays behind
                    raise
                self.index += 1
                return record
        return None

    def abort(self) -> None:
        """Drop the shard being written; finished shards are untouched."""
        if self._open is not None:
            self._open.discard()
            self._open = None


class _OpenShard:
    """The files of one shard while it is being written, all pending."""

    def __init__(self, writer: ShardWriter, files: dict[str, str], first_row: int) -> None:
        self.w = writer
        self.files = files
        self.first_row = first_row
        self.rows = self.rejected = self.truncated = self.tokens = self.padded_tokens = 0
        self.embedded = self.reused = 0
        self.keys: list[np.ndarray] = []  # per chunk: the text keys of its rows
        self.pending: dict[str, PendingFile] = {}
        self.parquet: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.npy: _NpySpool | None = None
        self.token_offsets: list[np.ndarray] = []  # --pooling none, npy: each row's first token, per chunk
        self.token_count = 0

    def _create(self, role: str) -> PendingFile:
        pending = self.w.storage.create(self.w.layout.path(self.files[role]))
        self.pending[role] = pending
        return pending

    def append(self, chunk: Chunk, embeddings: np.ndarray) -> None:
        if chunk.rejects:
            stream = self.pending["rejects"].stream if "rejects" in self.pending else None
            stream = stream or self._create("rejects").stream
            lines = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in chunk.rejects)
            stream.write(lines.encode("utf-8"))
            self.rejected += len(chunk.rejects)
        table = metadata_table(chunk, embeddings)
        if self.w.fmt == "npy":
            tokens = embeddings if isinstance(embeddings, TokenVectors) else None
            matrix = tokens.vectors if tokens is not None else embeddings
            if self.npy is None:
                self.npy = _NpySpool(self.w.storage, matrix.shape[1], NUMPY_DTYPES[self.w.dtype])
            self.npy.append(matrix)
            if tokens is not None:
                if "token_offsets" not in self.files:
                    self.files = self.w.layout.shard_files(self.w.index, "npy", tokens=True)
                self.token_offsets.append(tokens.offsets[:-1] + self.token_count)
                self.token_count += tokens.tokens
        else:
            table = table.add_column(1, "embedding", embedding_array(embeddings, self.w.dtype))
        if len(chunk) or self.parquet is None:
            self._write_parquet(table)
        if chunk.keys is not None:
            self.keys.append(chunk.keys)
        if chunk.dedup is not None:
            self.reused += chunk.dedup.reused_rows
        self.rows += len(chunk)
        self.truncated += chunk.truncated_rows
        if chunk.tokens is not None:
            self.embedded += chunk.tokens.model_rows
            self.tokens += chunk.tokens.real_tokens
            self.padded_tokens += chunk.tokens.padded_tokens

    def _target_schema(self, table: pa.Schema) -> pa.Schema:
        schema = self.w.metadata_schema
        if schema is None:
            return table
        if self.w.fmt != "npy":
            schema = schema.insert(1, table.field("embedding"))
        return schema

    def _write_parquet(self, table: pa.Table) -> None:
        if self.parquet is None:
            self.schema = self._target_schema(table.schema)
            role = "metadata" if self.w.fmt == "npy" else "data"
            stream = self._create(role).stream
            dictionary = dictionary_columns(self.schema)
            self.parquet = pq.ParquetWriter(stream, self.schema, use_dictionary=dictionary)
        if table.num_rows == 0:
            table = self.schema.empty_table()  # rejects only: still the job's columns and types
        try:
            table = table.cast(self.schema) if table.schema != self.schema else table
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError):
            why = schema_difference(table.schema, self.schema)
            raise InputError(f"a column changes type between rows or inputs: {why}") from None
        self.parquet.write_table(table)

    def commit(self, index: int, record_end: int) -> ShardRecord:
        """Close and commit every file of the shard; a vanished temp file raises."""
        if self.parquet is not None:
            self.parquet.close()
        if self.w.fmt == "npy":
            if self.npy is None:  # a shard of rejects only still gets its (empty) arrays
                self.npy = _NpySpool(self.w.storage, 0, NUMPY_DTYPES[self.w.dtype])
            self.npy.write_to(self._create("embeddings").stream)
            if "token_offsets" in self.files:
                starts = np.concatenate([*self.token_offsets, [self.token_count]]).astype(np.int64)
                np.save(self._create("token_offsets").stream, starts, allow_pickle=False)
        if self.keys:
            write_keys(self._create("keys").stream, np.concatenate(self.keys))
        records = {}
        for role in self.files:  # in layout order: the table file first, rejects last
            if role in self.pending:
                self.pending[role].commit()
                path = self.w.layout.path(self.files[role])
                size = self.w.storage.info(path).size  # type: ignore[union-attr]
                records[role] = FileRecord(self.files[role], size, sha256_of(self.w.storage, path))
        counts = (self.rows, self.rejected, self.first_row, record_end)
        return ShardRecord(
            index,
            *counts,
            self.truncated,
            self.tokens,
            self.padded_tokens,
            records,
            self.embedded,
            self.reused,
            self.w.reuse,
        )

    def discard(self) -> None:
        for closeable in (self.parquet, self.npy):
            try:
                if closeable is not None:
                    closeable.close()
            except Exception:  # noqa: BLE001 - discarding after a failure must not fail again
                pass
        for pending in self.pending.values():
            pending.discard()


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet leaf columns to dictionary-encode: all (Arrow's default) but float32
    embedding values. Those are nearly all distinct, so the dictionary fills its 1 MiB page
    limit within the first rows and the column falls back to plain anyway; until then the
    writer keeps the dictionary's hash table and the buffered pages: about 30 MiB more peak
    memory per shard writer (docs/PERFORMANCE.md, Memory), and files ~5% larger. float16 and
    the integer forms keep it: their few distinct values make the files smaller."""
    embedding = schema.field("embedding").type if "embedding" in schema.names else None
    while isinstance(embedding, (pa.ListType, pa.FixedSizeListType)):
        embedding = embedding.value_type
    leaves = list(parquet_leaves(schema))
    if embedding != pa.float32():
        return leaves
    return [path for path in leaves if not path.startswith("embedding.list.element")]


@functools.lru_cache(maxsize=8)
def parquet_leaves(schema: pa.Schema) -> tuple[str, ...]:
    """The dotted paths of the Parquet leaf columns the writer makes of ``schema`` (a kept
    list or struct column has its own), read from an empty file written the same way."""
    sink = io.BytesIO()
    pq.ParquetWriter(sink, schema).close()
    parquet = pq.ParquetFile(io.BytesIO(sink.getvalue())).schema
    return tuple(parquet.column(i).path for i in range(len(parquet)))


KEY_DTYPE = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("row", "<u8")])


def write_keys(stream: IO[bytes], keys: np.ndarray) -> None:
    """A shard's text keys (rows x 2 uint64) sorted, with each key's row in the shard: a
    previous output that --reuse can search without reading its texts or holding it in memory."""
    table = np.empty(len(keys), dtype=KEY_DTYPE)
    table["hi"], table["lo"] = keys[:, 0], keys[:, 1]
    table["row"] = np.arange(len(keys), dtype=np.uint64)
    table.sort(order=["hi", "lo"])
    np.save(stream, table, allow_pickle=False)


class _NpySpool:
    """Rows of a .npy spooled to a local scratch file; header and data are written in one
    pass at commit, when the row count is known: no seeking back in the output stream."""

    def __init__(self, storage: Storage, dim: int, dtype: type) -> None:
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self.spool: IO[bytes] = storage.scratch()

    def append(self, block: np.ndarray) -> None:
        self.spool.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def write_to(self, stream: IO[bytes]) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, self.dim),
        }
        np.lib.format.write_array_header_1_0(stream, header)
        self.spool.seek(0)
        shutil.copyfileobj(self.spool, stream, 1 << 20)
        self.close()

    def close(self) -> None:
        self.spool.close()


class JsonLinesWriter:
    """``-o -``: one JSON object per row on stdout, for pipes into jq and friends."""

    def __init__(self, stream: IO[str] | None = None, dtype: str = "float32") -> None:
        self.stream = stream or sys.stdout
        self.integers = dtype not in ("float32", "float16")  # quantized rows: JSON integers

    def write(self, chunk: Chunk, embeddings: np.ndarray | TokenVectors) -> None:
        if self.integers and isinstance(embeddings, np.ndarray):
            embeddings = embeddings.astype(np.int64)
        meta = metadata_table(chunk, embeddings).to_pylist()
        lines = []
        for row, vector in zip(meta, _row_vectors(embeddings)):
            row["embedding"] = vector
            lines.append(json.dumps(row, default=str))
        if lines:
            write_all(self.stream, "\n".join(lines) + "\n")


def _row_vectors(embeddings: np.ndarray | TokenVectors) -> Iterator[list]:
    """Each row's embedding as JSON lists: a vector, or (--pooling none) a list of token vectors."""
    if not isinstance(embeddings, TokenVectors):
        yield from embeddings.tolist()
        return
    bounds = embeddings.offsets
    for a, b in zip(bounds[:-1], bounds[1:]):
        yield embeddings.vectors[a:b].tolist()


def write_all(stream: IO[str], text: str) -> None:
    """All of ``text`` reaches the stream's file, or an OSError (BrokenPipeError) is raised.

    Under PYTHONUNBUFFERED=1 (usual in containers and cron) sys.stdout writes straight to the
    raw file, and a write that a closing reader (``| head``) cuts short returns a short count
    that the text layer drops without a word: the rest of the chunk is lost and the run ends
    with exit 0 and a full summary. Writing the bytes in a loop makes the next write after a
    short one raise, so the run stops with the documented 141."""
    binary = getattr(stream, "buffer", None)
    if binary is None:  # a plain text stream (StringIO): nothing is cut short
        stream.write(text)
        stream.flush()
        return
    stream.flush()  # whatever the text layer still holds goes first
    data = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    while data:
        written = binary.write(data)
        if written is None:  # a non-blocking stdout that is full: wait until it drains
            select.select([], [stream.fileno()], [])
            continue
        data = data[written:]
    binary.flush()
