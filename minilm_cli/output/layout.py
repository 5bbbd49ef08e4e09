"""Names in OUTPUT: which files a writer owns, so that many writers can share one folder.

  OUTPUT/manifest.json                     a single (or merged) run's manifest
  OUTPUT/manifest-IIIII-of-NNNNN.json      part I of a sharded run (--num-shards N)
  OUTPUT/.manifest*.json.lock              the flock of that manifest's writer
  OUTPUT/.minilm-shards/{prefix}SSSSS.json one commit marker per finished shard (see manifest.py)
  OUTPUT/{prefix}SSSSS.parquet             parquet layout
  OUTPUT/embeddings/{prefix}SSSSS.npy      npy layout, with OUTPUT/metadata/{prefix}SSSSS.parquet
  OUTPUT/token_offsets/{prefix}SSSSS.npy   npy layout, --pooling none: row i's token vectors are
                                           embeddings[offsets[i]:offsets[i + 1]] (int64, rows + 1)
  OUTPUT/rejects/{prefix}SSSSS.jsonl       rows set aside under --on-error skip
  OUTPUT/.minilm-keys/{prefix}SSSSS.npy    the shard's text keys, sorted (what --reuse looks up)

``prefix`` is ``part-`` for a single run and ``part-IIIII-`` for part I of a sharded run; a
writer creates, cleans up and removes only names of its own prefix (and its own manifest,
lock and markers), never another part's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

KEYS_FOLDER = ".minilm-keys"
SHARD_FOLDERS = ("embeddings", "token_offsets", "metadata", "rejects", KEYS_FOLDER)
MARKER_FOLDER = ".minilm-shards"
TMP_SUFFIX = ".tmp"
EXTENSIONS = ("parquet", "npy", "jsonl", "json")

# Any shard name this tool writes, of any writer: the namespace --overwrite guards.
ANY_SHARD = re.compile(r"^part-\d{5}(-\d{5})?\.(parquet|npy|jsonl)$")
ANY_MANIFEST = re.compile(r"^manifest(-\d{5}-of-\d{5})?\.json$")


def manifest_name(shard_index: int = 0, num_shards: int = 1) -> str:
    if num_shards == 1:
        return "manifest.json"
    return f"manifest-{shard_index:05d}-of-{num_shards:05d}.json"


def shard_prefix(shard_index: int = 0, num_shards: int = 1) -> str:
    return "part-" if num_shards == 1 else f"part-{shard_index:05d}-"


@dataclass(frozen=True)
class Layout:
    """The names one writer (a single run, or one part of a sharded run) owns under ``root``."""

    root: str
    shard_index: int = 0
    num_shards: int = 1

    @property
    def prefix(self) -> str:
        return shard_prefix(self.shard_index, self.num_shards)

    @property
    def sharded(self) -> bool:
        return self.num_shards > 1

    @property
    def manifest_name(self) -> str:
        return manifest_name(self.shard_index, self.num_shards)

    @property
    def manifest_path(self) -> str:
        return self.path(self.manifest_name)

    @property
    def lock_path(self) -> str:
        return self.path(f".{self.manifest_name}.lock")

    @property
    def marker_folder(self) -> str:
        return self.path(MARKER_FOLDER)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def rel(self, path: str) -> str:
        return relative(path, self.root)

    def shard_name(self, index: int) -> str:
        return f"{self.prefix}{index:05d}"

    def shard_files(self, index: int, fmt: str, tokens: bool = False) -> dict[str, str]:
        """Role -> path relative to OUTPUT, for shard ``index`` of layout ``fmt`` (``tokens``:
        --pooling none's token vectors, which need a row index beside them in the npy layout)."""
        name = self.shard_name(index)
        if fmt == "npy":
            files = {"embeddings": f"embeddings/{name}.npy", "metadata": f"metadata/{name}.parquet"}
            if tokens:
                files["token_offsets"] = f"token_offsets/{name}.npy"
        else:
            files = {"data": f"{name}.parquet"}
        files["keys"] = f"{KEYS_FOLDER}/{name}.npy"
        files["rejects"] = f"rejects/{name}.jsonl"
        return files

    def marker_path(self, index: int) -> str:
        return os.path.join(self.marker_folder, f"{self.shard_name(index)}.json")

    def _own(self) -> re.Pattern:
        ext = "|".join(EXTENSIONS)
        return re.compile(rf"^{re.escape(self.prefix)}(\d{{5}})\.({ext})$")

    def own_index(self, name: str) -> int | None:
        """The shard index of a file name this writer owns, else None."""
        match = self._own().match(name)
        return int(match.group(1)) if match else None

    def owns(self, name: str) -> bool:
        """Whether a file name (any folder) is one of this writer's shard files or temps."""
        return self.own_index(name) is not None or self.is_own_temp(name)

    def is_own_temp(self, name: str) -> bool:
        if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
            return False
        inner = name[1 : -len(TMP_SUFFIX)]
        return self.own_index(inner) is not None or inner == self.manifest_name


def relative(path: str, root: str) -> str:
    """``path`` relative to ``root``: ``os.path.relpath`` for local paths; for URLs
    (``s3://b/out/x``) the part after the root's prefix (relpath would make them absolute
    local paths, and normalise ``s3://`` to ``s3:/``)."""
    if "://" not in path and "://" not in root:
        return os.path.relpath(path, root)
    base = root.rstrip("/") + "/"
    if path.startswith(base):
        return path[len(base) :]
    return path


def shard_folders(root: str) -> list[str]:
    """OUTPUT and the folders shards live in (the marker folder is separate)."""
    return [root, *(os.path.join(root, f) for f in SHARD_FOLDERS)]
