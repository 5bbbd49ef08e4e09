"""--reuse PREVIOUS_OUTPUT: rows whose text an earlier output already embedded take its vector.

At the start of a run the keys of every finished shard of every --reuse output go into a
``KeyIndex`` (output/keyindex.py: bucketed and sorted on local scratch disk, memory-mapped),
never one Python dict of everything. A chunk's keys are looked up there, and the vectors are
read from the earlier shards, row group by row group.

The run records what it looked in (``snapshot``: each output's location and, per manifest,
how many shards and a digest of their key files) in its own manifest, so that `minilm
verify` can later check every reused row against exactly those shards.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import InputError
from ..output import Manifest, find_manifests
from ..output.keyindex import KeyIndex, KeySource, keys_digest
from ..storage import is_remote, local_path, redact_url

# What must match for an earlier vector to be the one this run would compute.
SAME_BYTES = (
    "model",
    "dim",
    "pooling",
    "normalize",
    "max_length",
    "precision",
    "dtype",
    "truncate_dim",
    "ranges",
    "overflow",
    "layer",
)


def reuse_problem(settings: dict, earlier: dict, name: str) -> str | None:
    for key in SAME_BYTES:
        now, then = settings.get(key), earlier.get(key)
        if key == "model":
            now, then = (now or {}).get("weights_sha256"), (then or {}).get("weights_sha256")
        if now != then:
            if key == "ranges":  # 2 x dim numbers: too long to quote
                return f"--reuse {name}: its int8 ranges differ (pass --ranges {name} to use them)"
            return f"--reuse {name}: its {key} differs ({then!r}, this run {now!r})"
    return None


def location(root: str) -> str:
    """Where an output is, for a manifest: an absolute path, or its URL without credentials."""
    return redact_url(root) if is_remote(root) else os.path.abspath(local_path(root))


class ReuseIndex(KeyIndex):
    """The keys of earlier outputs; ``lookup`` gives their vectors."""

    def __init__(self, outputs: list[str], settings: dict) -> None:
        self.recorded: list[dict[str, Any]] = []
        sources: list[KeySource] = []
        for root in outputs:
            sources += self._add_output(root, settings)
        super().__init__(sources)

    def _add_output(self, root: str, settings: dict) -> list[KeySource]:
        paths = find_manifests(root)
        if not paths:
            raise InputError(f"--reuse {root}: no manifest.json there, so it is not a minilm output")
        sources, manifests = [], []
        for path in paths:
            doc = Manifest.load(path).doc
            problem = reuse_problem(settings, doc.get("settings", {}), root)
            if problem:
                raise InputError(problem)
            fmt = doc["settings"].get("format", "parquet")
            for shard in doc["shards"]:
                if "keys" not in shard["files"]:
                    raise InputError(f"--reuse {root}: written by an older minilm-cli without text keys")
                sources.append(KeySource(root, shard["files"], fmt))
            manifests.append(
                {
                    "name": os.path.basename(path),
                    "shards": len(doc["shards"]),
                    "keys_sha256": keys_digest(doc["shards"]),
                }
            )
        self.recorded.append({"location": location(root), "manifests": manifests})
        return sources

    def snapshot(self) -> list[dict[str, Any]]:
        """What this run looked in, for its manifest (see module docstring)."""
        return self.recorded

    def lookup(self, keys: np.ndarray) -> dict[int, np.ndarray]:
        """Row -> the earlier output's vector, for each row whose key an earlier output holds."""
        return {row: self.vector(src, at) for row, src, at in self.find(keys)}
