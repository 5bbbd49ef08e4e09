"""The sorted key files of finished shards, searchable in bounded memory.

Every shard carries its keys, sorted (``.minilm-keys/part-*.npy``, see writers.py): 16 bytes
of blake2b per row over what the model would see (the text, or a window's token ids), and
the row. ``KeyIndex`` spreads the keys of many shards by their first byte into 256 bucket
files on local scratch disk and sorts each, so it holds one bucket's worth of keys at a time
(about 100 MB per billion rows), never one Python dict of everything. Keys are found with a
binary search per bucket (memory-mapped), and vectors are read from the shards, row group by
row group. --reuse looks rows up in it (pipeline/reuse.py); verify checks reused rows with it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow.parquet as pq

from ..errors import InputError
from ..storage import is_remote, storage_for

ENTRY = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("src", "<u4"), ("row", "<u4")])
BUCKETS = 256
# Distinct keys deduplication remembers per shard (pipeline/dedup.py): ~25 MB of float32
# vectors at dim 384. A shard with no more distinct keys than this copied every repeat.
DEDUP_CAPACITY = 16_384


@dataclass
class KeySource:
    """One finished shard: the OUTPUT it is in, its files as the manifest lists them, its layout."""

    root: str
    files: dict[str, Any]
    fmt: str


def load_npy(path: str) -> np.ndarray:
    with storage_for(path).open_read(path) as f:
        return np.load(f, allow_pickle=False)


def keys_digest(shards: list[dict[str, Any]]) -> str:
    """What identifies a list of shards' keys: sha256 over their key files' sha256s, in order."""
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(shard["files"]["keys"]["sha256"].encode())
    return digest.hexdigest()


class KeyIndex:
    """The keys of ``sources``, bucketed and sorted on local scratch disk."""

    def __init__(self, sources: list[KeySource]) -> None:
        self.sources = sources
        self.files: list[IO[bytes]] = [storage_for(None).scratch() for _ in range(BUCKETS)]
        self.buckets = self._build()
        self._groups: dict[int, tuple[int, np.ndarray]] = {}
        self._arrays: dict[int, np.ndarray] = {}

    def _build(self) -> list[np.ndarray]:
        for src, source in enumerate(self.sources):
            keys = load_npy(os.path.join(source.root, source.files["keys"]["path"]))
            entries = np.empty(len(keys), dtype=ENTRY)
            entries["hi"], entries["lo"], entries["row"] = keys["hi"], keys["lo"], keys["row"]
            entries["src"] = src
            bucket = (entries["hi"] >> np.uint64(56)).astype(np.intp)
            for b in np.unique(bucket):
                self.files[b].write(entries[bucket == b].tobytes())
        return [self._sort_bucket(f) for f in self.files]

    @staticmethod
    def _sort_bucket(f: IO[bytes]) -> np.ndarray:
        f.flush()
        if f.tell() == 0:
            return np.empty(0, dtype=ENTRY)
        f.seek(0)
        entries = np.frombuffer(f.read(), dtype=ENTRY).copy()
        entries.sort(order=["hi", "lo"])
        f.seek(0)
        f.write(entries.tobytes())
        f.flush()
        del entries
        return np.memmap(f, dtype=ENTRY, mode="r")

    def find(self, keys: np.ndarray) -> list[tuple[int, int, int]]:
        """(row, src, row in src) for each row of ``keys`` (rows x 2 uint64) the index holds,
        sorted by (src, row in src) so each shard is read in order, once."""
        hits: list[tuple[int, int, int]] = []
        bucket_of = (keys[:, 0] >> np.uint64(56)).astype(np.intp)
        for b in np.unique(bucket_of):
            entries = self.buckets[b]
            if not len(entries):
                continue
            rows = np.nonzero(bucket_of == b)[0]
            at = np.searchsorted(entries["hi"], keys[rows, 0])
            for row, i in zip(rows, at):
                found = next(_holders(entries, int(i), keys[row]), None)
                if found is not None:
                    hits.append((int(row), *found))
        hits.sort(key=lambda h: (h[1], h[2]))
        return hits

    def all_of(self, key: np.ndarray) -> list[tuple[int, int]]:
        """Every (src, row in src) holding ``key`` (one key may be in many shards)."""
        entries = self.buckets[int(key[0] >> np.uint64(56))]
        if not len(entries):
            return []
        return list(_holders(entries, int(np.searchsorted(entries["hi"], key[0])), key))

    def vector(self, src: int, row: int) -> np.ndarray:
        """The stored vector of row ``row`` of source ``src``, as float32."""
        source = self.sources[src]
        if source.fmt == "npy":
            if src not in self._arrays:
                path = os.path.join(source.root, source.files["embeddings"]["path"])
                # one shard mapped at a time; on an object store, read whole (no mmap there)
                array = load_npy(path) if is_remote(path) else np.load(path, mmap_mode="r")
                self._arrays = {src: array}
            return np.asarray(self._arrays[src][row], dtype=np.float32)
        start, block = self._groups.get(src, (-1, None))
        if block is None or not start <= row < start + len(block):
            start, block = _row_group_of(os.path.join(source.root, source.files["data"]["path"]), row)
            self._groups = {src: (start, block)}  # one row group held at a time
        return np.asarray(block[row - start], dtype=np.float32)

    def close(self) -> None:
        self.buckets, self._groups, self._arrays = [], {}, {}
        for f in self.files:
            f.close()
        self.files = []


def _holders(entries: np.ndarray, i: int, key: np.ndarray) -> Iterator[tuple[int, int]]:
    """(src, row in src) of each entry holding ``key``, from ``i``, its first possible place in
    the bucket (keys sharing ``hi`` sit together, in no order of ``lo``)."""
    while i < len(entries) and entries["hi"][i] == key[0]:
        if entries["lo"][i] == key[1]:
            yield int(entries["src"][i]), int(entries["row"][i])
        i += 1


def _row_group_of(path: str, row: int) -> tuple[int, np.ndarray]:
    """(first row, embeddings) of the row group of a Parquet shard that holds ``row``."""
    with storage_for(path).open_read(path) as f:
        pf = pq.ParquetFile(f)
        start = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row < start + n:
                column = pf.read_row_group(g, columns=["embedding"]).column("embedding").combine_chunks()
                values = column.flatten().to_numpy(zero_copy_only=False)
                return start, values.reshape(n, column.type.list_size)
            start += n
    raise InputError(f"{path} holds fewer rows than its keys say")
