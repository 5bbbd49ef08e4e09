"""Repeated ids in bounded memory, however many rows the output holds.

Each id becomes a fixed-width 16-byte digest: integers exactly (a tag byte and a bijective
64-bit mix, so no two integers collide), anything else by BLAKE2b (15 bytes: a collision
among 10^9 ids has odds below 10^-18). Digests, with the shard and row they came from,
are spread over 256 scratch files by a digest byte; each bucket is then sorted and
scanned on its own. Memory is one shard's ids plus one bucket (1/256 of 24 bytes a row:
about 9 MB for 100 million ids), never a set of every id.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import pyarrow as pa

from ..storage import Storage, storage_for

BUCKETS = 256
RECORD = np.dtype([("d", "S16"), ("shard", "<u4"), ("row", "<u4")])


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on 64-bit integers that spreads every bit."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def digests(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, 16) uint8: one fixed-width digest per id (nulls hash like the string 'None')."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    out = np.zeros((len(ids), 16), dtype=np.uint8)
    if pa.types.is_integer(ids.type) and not ids.null_count:
        values = ids.to_numpy(zero_copy_only=False)
        tag = b"u" if pa.types.is_unsigned_integer(ids.type) and values.dtype.itemsize == 8 else b"i"
        mixed = _mix(values.astype(np.uint64) if tag == b"u" else values.astype(np.int64).view(np.uint64))
        out[:, 0] = tag[0]
        out[:, 1:9] = mixed.astype(">u8").view(np.uint8).reshape(-1, 8)
        return out
    buf = bytearray()
    for value in ids.to_pylist():
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else repr(value).encode()
        buf += b"s" + hashlib.blake2b(raw, digest_size=15).digest()
    return np.frombuffer(bytes(buf), dtype=np.uint8).reshape(-1, 16) if buf else out


@dataclass
class Repeats:
    """Per shard (by the order it was added): repeated ids, and the row of a first example."""

    inside: dict[int, int] = field(default_factory=dict)  # repeated within the shard
    earlier: dict[int, int] = field(default_factory=dict)  # also in an earlier shard
    example: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.inside.values()) + sum(self.earlier.values())


class DuplicateScan:
    """Feed each shard's ids in order with ``add``; ``repeats()`` then finds every repeat."""

    def __init__(self, storage: Storage | None = None) -> None:
        self.storage = storage or storage_for(None)
        self.files: list[IO[bytes] | None] = [None] * BUCKETS
        self.shards = 0

    def add(self, ids: pa.Array | pa.ChunkedArray) -> int:
        """Add one shard's ids; returns the shard's number in this scan."""
        shard = self.shards
        self.shards += 1
        digest = digests(ids)
        if not len(digest):
            return shard
        records = np.empty(len(digest), dtype=RECORD)
        records["d"] = digest.view("S16").reshape(-1)
        records["shard"] = shard
        records["row"] = np.arange(len(digest), dtype=np.uint32)
        bucket = digest[:, 1]
        order = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=BUCKETS)
        start = 0
        for b in np.flatnonzero(counts):
            end = start + counts[b]
            if self.files[b] is None:
                self.files[b] = self.storage.scratch()
            self.files[b].write(records[order[start:end]].tobytes())  # type: ignore[union-attr]
            start = end
        return shard

    def repeats(self) -> Repeats:
        found = Repeats()
        for b, f in enumerate(self.files):
            if f is None:
                continue
            f.seek(0)
            records = np.frombuffer(f.read(), dtype=RECORD)
            f.close()
            self.files[b] = None
            _scan_bucket(records, found)
        return found

    def close(self) -> None:
        for f in self.files:
            if f is not None:
                f.close()
        self.files = [None] * BUCKETS


def _scan_bucket(records: np.ndarray, found: Repeats) -> None:
    # Records were appended in (shard, row) order, so a stable sort on the digest keeps
    # each group of equal ids in that order: every record after a group's first is a repeat.
    records = records[np.argsort(records["d"], kind="stable")]
    d, shard = records["d"], records["shard"]
    repeat = np.zeros(len(records), dtype=bool)
    repeat[1:] = d[1:] == d[:-1]
    same_shard = np.zeros(len(records), dtype=bool)
    same_shard[1:] = shard[1:] == shard[:-1]
    for kind, mask in (("inside", repeat & same_shard), ("earlier", repeat & ~same_shard)):
        counts = getattr(found, kind)
        for s, n in zip(*np.unique(shard[mask], return_counts=True)):
            counts[int(s)] = counts.get(int(s), 0) + int(n)
    shards, rows = shard[repeat], records["row"][repeat]
    for s in np.unique(shards):
        row = int(rows[shards == s].min())
        found.example[int(s)] = min(found.example.get(int(s), row), row)


def count_duplicate_ids(root: str | os.PathLike) -> int:
    """Repeated ids over every finished shard of OUTPUT (all its manifest parts), in bounded
    memory: for the pipeline to record as totals.duplicate_ids at the end of a run."""
    from .merge import finished_files
    from .tables import read_table

    storage = storage_for(os.fspath(root))
    scan = DuplicateScan(storage)
    try:
        for path in finished_files(root):
            scan.add(read_table(storage, path, columns=["id"]).column("id"))
        return scan.repeats().total
    finally:
        scan.close()
