"""--reuse PREVIOUS_OUTPUT: rows whose text an earlier output already embedded take its vector.

Every shard carries its text keys, sorted (``.minilm-keys/part-*.npy``, see output/writers.py).
At the start of a run the keys of every finished shard of every --reuse output are spread by
their first byte into 256 bucket files on local scratch disk and each bucket is sorted, so the
lookup holds one bucket's worth of keys at a time (about 100 MB per billion rows), never one
Python dict of everything. A chunk's keys are then found with a binary search per bucket
(memory-mapped), and the vectors are read from the earlier shards, row group by row group.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..errors import InputError
from ..output import Manifest, find_manifests
from ..storage import is_remote, storage_for

ENTRY = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("src", "<u4"), ("row", "<u4")])
BUCKETS = 256
# What must match for an earlier vector to be the one this run would compute.
SAME_BYTES = ("model", "dim", "pooling", "normalize", "max_length", "precision", "dtype", "overflow")


def reuse_problem(settings: dict, earlier: dict, name: str) -> str | None:
    for key in SAME_BYTES:
        now, then = settings.get(key), earlier.get(key)
        if key == "model":
            now, then = (now or {}).get("weights_sha256"), (then or {}).get("weights_sha256")
        if now != then:
            return f"--reuse {name}: its {key} differs ({then!r}, this run {now!r})"
    return None


class ReuseIndex:
    """The text keys of earlier outputs, bucketed and sorted on disk."""

    def __init__(self, outputs: list[str], settings: dict) -> None:
        self.sources: list[tuple[str, dict[str, Any], str]] = []  # (root, shard files, format)
        self.scratch = tempfile.TemporaryDirectory(prefix="minilm-reuse-")
        for root in outputs:
            self._add_output(root, settings)
        self.buckets = self._build()
        self._groups: dict[int, tuple[int, np.ndarray]] = {}
        self._arrays: dict[int, np.ndarray] = {}

    def _add_output(self, root: str, settings: dict) -> None:
        paths = find_manifests(root)
        if not paths:
            raise InputError(f"--reuse {root}: no manifest.json there, so it is not a minilm output")
        for path in paths:
            doc = Manifest.load(path).doc
            problem = reuse_problem(settings, doc.get("settings", {}), root)
            if problem:
                raise InputError(problem)
            fmt = doc["settings"].get("format", "parquet")
            for shard in doc["shards"]:
                if "keys" not in shard["files"]:
                    raise InputError(f"--reuse {root}: written by an older minilm-cli without text keys")
                self.sources.append((root, shard["files"], fmt))

    def _build(self) -> list[np.ndarray]:
        files = [open(self._bucket(b), "wb") for b in range(BUCKETS)]
        try:
            for src, (root, shard, _) in enumerate(self.sources):
                keys = _load_npy(os.path.join(root, shard["keys"]["path"]))
                entries = np.empty(len(keys), dtype=ENTRY)
                entries["hi"], entries["lo"], entries["row"] = keys["hi"], keys["lo"], keys["row"]
                entries["src"] = src
                bucket = (entries["hi"] >> np.uint64(56)).astype(np.intp)
                for b in np.unique(bucket):
                    files[b].write(entries[bucket == b].tobytes())
        finally:
            for f in files:
                f.close()
        return [self._sort_bucket(b) for b in range(BUCKETS)]

    def _bucket(self, b: int) -> str:
        return os.path.join(self.scratch.name, f"{b:03d}.bin")

    def _sort_bucket(self, b: int) -> np.ndarray:
        entries = np.fromfile(self._bucket(b), dtype=ENTRY)
        entries.sort(order=["hi", "lo"])
        entries.tofile(self._bucket(b))
        del entries
        if os.path.getsize(self._bucket(b)) == 0:
            return np.empty(0, dtype=ENTRY)
        return np.memmap(self._bucket(b), dtype=ENTRY, mode="r")

    def lookup(self, keys: np.ndarray) -> dict[int, np.ndarray]:
        """Row -> the earlier output's vector, for each row whose key an earlier output holds."""
        hits: list[tuple[int, int, int]] = []  # (row, src, row in src)
        bucket_of = (keys[:, 0] >> np.uint64(56)).astype(np.intp)
        for b in np.unique(bucket_of):
            entries = self.buckets[b]
            if not len(entries):
                continue
            rows = np.nonzero(bucket_of == b)[0]
            at = np.searchsorted(entries["hi"], keys[rows, 0])
            for row, i in zip(rows, at):
                while i < len(entries) and entries["hi"][i] == keys[row, 0]:
                    if entries["lo"][i] == keys[row, 1]:
                        hits.append((int(row), int(entries["src"][i]), int(entries["row"][i])))
                        break
                    i += 1
        hits.sort(key=lambda h: (h[1], h[2]))  # read each earlier shard in order, once
        return {row: self._vector(src, at) for row, src, at in hits}

    def _vector(self, src: int, row: int) -> np.ndarray:
        root, files, fmt = self.sources[src]
        if fmt == "npy":
            if src not in self._arrays:
                path = os.path.join(root, files["embeddings"]["path"])
                # one shard mapped at a time; on an object store, read whole (no mmap there)
                array = _load_npy(path) if is_remote(path) else np.load(path, mmap_mode="r")
                self._arrays = {src: array}
            return np.asarray(self._arrays[src][row], dtype=np.float32)
        start, block = self._groups.get(src, (-1, None))
        if block is None or not start <= row < start + len(block):
            start, block = _row_group_of(os.path.join(root, files["data"]["path"]), row)
            self._groups = {src: (start, block)}  # one row group held at a time
        return np.asarray(block[row - start], dtype=np.float32)

    def close(self) -> None:
        self.buckets, self._groups, self._arrays = [], {}, {}
        self.scratch.cleanup()


def _row_group_of(path: str, row: int) -> tuple[int, np.ndarray]:
    """(first row, embeddings) of the row group of a Parquet shard that holds ``row``."""
    with storage_for(path).open_read(path) as f:
        return _row_group_in(pq.ParquetFile(f), path, row)


def _row_group_in(pf: pq.ParquetFile, path: str, row: int) -> tuple[int, np.ndarray]:
    start = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row < start + n:
            column = pf.read_row_group(g, columns=["embedding"]).column("embedding").combine_chunks()
            values = column.flatten().to_numpy(zero_copy_only=False)
            return start, values.reshape(n, column.type.list_size)
        start += n
    raise InputError(f"--reuse: {path} holds fewer rows than its keys say")


def _load_npy(path: str) -> np.ndarray:
    storage = storage_for(path)
    with storage.open_read(path) as f:
        return np.load(f, allow_pickle=False)
