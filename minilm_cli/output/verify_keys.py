"""verify, incremental runs: each shard's key file, and the rows it took from --reuse outputs.

Key file (``.minilm-keys/part-*.npy``, writers.write_keys): a (hi, lo, row) record per row of
the shard, sorted by key, each row exactly once. The keys are hashes of what the model saw
(text or window token ids), which the shard does not hold, so they cannot be recomputed; what
can be checked is their shape and one consequence: with deduplication on, rows sharing a key
hold byte-identical vectors whenever the shard has no more distinct keys than dedup remembers
(nothing was forgotten, so every repeat was copied). Not for --overflow mean, whose row keys
are documents' (over their windows' keys), deduplicated window by window.

Reused rows: a run with --reuse records in its manifest (``reuse``: id -> sources) each
earlier output's location and, per manifest, how many shards it looked in and a digest of
their key files; every shard it wrote names that id. verify builds the same key index over
exactly those shards and checks that every row whose key is there holds a byte copy of a
vector stored for that key, and that the count matches the shard's ``reused``. An earlier
output that is gone or has changed since is a warning: its rows cannot be checked.
One shard's keys and one index (on local scratch disk) are held at a time.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import MinilmError
from ..storage import Storage, storage_for
from .keyindex import DEDUP_CAPACITY, KeyIndex, KeySource, keys_digest
from .manifest import Manifest, find_manifests
from .writers import KEY_DTYPE


def key_file_problems(keys: np.ndarray, entry: dict, settings: dict, embeddings: np.ndarray) -> list[str]:
    """What is wrong with a shard's key file, read as ``keys``."""
    if keys.dtype != KEY_DTYPE or keys.ndim != 1:
        return [f"not a key file (dtype {keys.dtype}, {keys.ndim} dimensions)"]
    rows = entry["rows"]
    if len(keys) != rows:
        return [f"holds {len(keys)} keys, the shard {rows} rows"]
    if not rows:
        return []
    hi, lo = keys["hi"], keys["lo"]
    if ((hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] < lo[:-1]))).any():
        return ["keys are not sorted"]
    if not np.array_equal(np.sort(keys["row"]), np.arange(rows, dtype=np.uint64)):
        return ["does not name each row of the shard exactly once"]
    same = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
    mean = (settings.get("overflow") or {}).get("mode") == "mean"
    dedup = (settings.get("plan") or {}).get("dedup", False)
    if not dedup or mean or rows - int(same.sum()) > DEDUP_CAPACITY:
        return []
    at = np.flatnonzero(same)
    first, second = keys["row"][at].astype(np.int64), keys["row"][at + 1].astype(np.int64)
    differ = (embeddings[first] != embeddings[second]).any(axis=1)
    if differ.any():
        row = int(min(first[differ][0], second[differ][0]))
        return [f"{int(differ.sum())} rows share a key but not the vector (e.g. row {row})"]
    return []


class KeyChecks:
    """The key-file and --reuse checks of one manifest's shards, shard by shard."""

    def __init__(self, root: str, storage: Storage, doc: dict, warnings: list[str]) -> None:
        self.root = root
        self.storage = storage
        self.settings = doc.get("settings", {})
        self.reuse: dict[str, Any] = doc.get("reuse") or {}
        self.warnings = warnings
        self.index: tuple[str, KeyIndex | None] | None = None  # (reuse id, its index)
        self.unkeyed = 0
        self.checked = 0  # reused rows found byte-identical to their source's

    def check(self, entry: dict, embeddings: np.ndarray) -> list[str]:
        files = entry["files"]
        if "keys" not in files:
            self.unkeyed += 1
            return []
        name = files["keys"]["path"]
        with self.storage.open_read(os.path.join(self.root, name)) as f:
            keys = np.load(f, allow_pickle=False)
        problems = key_file_problems(keys, entry, self.settings, embeddings)
        if not problems:
            try:
                problems = self.reused(entry, keys, embeddings)
            except (MinilmError, OSError, ValueError) as exc:  # the source went bad while read
                self.warnings.append(
                    f"a --reuse source cannot be read ({_short(exc)}): reused rows not checked"
                )
        return [f"{name}: {p}" for p in problems]

    def reused(self, entry: dict, keys: np.ndarray, embeddings: np.ndarray) -> list[str]:
        sid = entry.get("reuse")
        if sid is None:
            return []
        if sid not in self.reuse:
            return [f"names --reuse sources {sid!r}, which the manifest does not record"]
        index = self._index(sid)
        if index is None:
            return []
        pairs = np.column_stack((keys["hi"], keys["lo"]))
        hits = index.find(pairs)
        bad, example = 0, None
        for pos, src, at in hits:
            got = embeddings[int(keys["row"][pos])].tobytes()
            if index.vector(src, at).tobytes() == got:
                continue
            if any(index.vector(s, r).tobytes() == got for s, r in index.all_of(pairs[pos])):
                continue
            bad += 1
            example = example if example is not None else int(keys["row"][pos])
        problems = []
        where = ", ".join(s["location"] for s in self.reuse[sid]["sources"])
        if bad:
            problems.append(f"{bad} reused rows are not byte copies of {where} (e.g. row {example})")
        if len(hits) != entry.get("reused", len(hits)):
            problems.append(
                f"{len(hits)} rows' keys are in {where}, but the manifest says {entry['reused']} reused"
            )
        self.checked += len(hits) - bad
        return problems

    def _index(self, sid: str) -> KeyIndex | None:
        if self.index is not None and self.index[0] == sid:
            return self.index[1]
        self.close()
        sources, why = [], None
        for source in self.reuse[sid]["sources"]:
            found, why = _snapshot(source)
            if why:
                break
            sources += found
        index = None
        if not why:
            try:
                index = KeyIndex(sources)
            except (MinilmError, OSError, ValueError) as exc:
                why = f"a --reuse source's key files cannot be read ({_short(exc)})"
        if why:
            self.warnings.append(f"{why}: the rows reused from it are not checked")
        self.index = (sid, index)
        return index

    def close(self) -> None:
        if self.index is not None and self.index[1] is not None:
            self.index[1].close()
        self.index = None

    def summary(self) -> None:
        if self.unkeyed:
            self.warnings.append(
                f"{self.unkeyed} shard(s) have no key file (an older minilm-cli): --reuse cannot use them"
            )


def _snapshot(source: dict) -> tuple[list[KeySource], str | None]:
    """The shards a --reuse run looked in, if the earlier output still holds them unchanged."""
    location = source["location"]
    try:
        storage = storage_for(location)
        if not find_manifests(location, storage):
            return [], f"--reuse source {location} is gone"
        found = []
        for part in source["manifests"]:
            doc = Manifest.load(os.path.join(location, part["name"]), storage).doc
            shards = doc["shards"][: part["shards"]]
            if len(shards) < part["shards"] or keys_digest(shards) != part["keys_sha256"]:
                return [], f"--reuse source {location} has changed since this output reused it"
            fmt = doc["settings"].get("format", "parquet")
            found += [KeySource(location, s["files"], fmt) for s in shards]
        return found, None
    except (MinilmError, OSError, KeyError, TypeError, ValueError) as exc:
        return [], f"--reuse source {location} cannot be read ({_short(exc)})"


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120]
