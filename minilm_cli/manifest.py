"""OUTPUT/manifest.json: what a run is, and which shards of it are finished.

It is rewritten atomically after every published shard, so at any instant it lists
exactly the shards that are complete on disk. ``--resume`` compares a new run's settings
and inputs with it, keeps the listed shards, and continues from the last one's
``record_end``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import write_atomic
from .errors import OutputConflict
from .sinks import ShardRecord

FORMAT_VERSION = 1


def manifest_name(shard_index: int = 0, num_shards: int = 1) -> str:
    if num_shards == 1:
        return "manifest.json"
    return f"manifest-{shard_index:05d}-of-{num_shards:05d}.json"


class Manifest:
    """The manifest's JSON document, with the few operations a run needs."""

    def __init__(self, doc: dict[str, Any], path: Path) -> None:
        self.doc = doc
        self.path = path

    @classmethod
    def new(cls, path: Path, settings: dict, inputs: list[dict], runtime: dict) -> Manifest:
        doc = {
            "format_version": FORMAT_VERSION,
            "tool": {"name": "minilm-cli", "version": __version__},
            "status": "running",
            "settings": settings,
            "inputs": inputs,
            "runtime": runtime,
            "shards": [],
            "totals": {},
        }
        return cls(doc, path)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            return cls(json.loads(path.read_text(encoding="utf-8")), path)
        except (OSError, ValueError) as exc:
            raise OutputConflict(f"cannot read {path}: {exc}") from None

    def save(self) -> None:
        write_atomic(self.path, (json.dumps(self.doc, indent=2, sort_keys=False) + "\n").encode())

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.doc["shards"]

    def add_shard(self, record: ShardRecord) -> None:
        self.shards.append(asdict(record))

    def resume_point(self) -> tuple[int, int, int]:
        """(next shard index, output rows done, input records done)."""
        if not self.shards:
            return 0, 0, 0
        last = self.shards[-1]
        return last["index"] + 1, last["first_row"] + last["rows"], last["record_end"]

    def mismatch(self, settings: dict, inputs: list[dict]) -> str | None:
        """Why a resumed run would not produce the output this manifest started, or None."""
        why = _first_difference(self.doc.get("settings", {}), settings)
        if why:
            return why
        old_inputs = self.doc.get("inputs", [])
        if len(old_inputs) != len(inputs):
            return f"inputs differ: manifest has {len(old_inputs)} files, this run {len(inputs)}"
        for before, now in zip(old_inputs, inputs):
            if before != now:
                changed = [k for k in now if before.get(k) != now.get(k)]
                return f"input {now['path']} differs from the manifest ({', '.join(changed)})"
        return None

    def finish(self, status: str, totals: dict[str, Any]) -> None:
        self.doc["status"] = status
        self.doc["totals"] = totals
        self.save()


def _first_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    """The first setting that differs, named down to the nested key (e.g. plan.shard_rows)."""
    for key in sorted(set(old) | set(new)):
        before, now = old.get(key), new.get(key)
        if before == now:
            continue
        if isinstance(before, dict) and isinstance(now, dict) and key != "model":
            return _first_difference(before, now, f"{prefix}{key}.")
        return f"{prefix}{key} differs: manifest has {_short(before)}, this run {_short(now)}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def finished_files(root: str | Path, role: str | None = None) -> list[Path]:
    """The files of finished shards, in order, as every manifest part under ``root`` lists them.

    ``role``: "data" (parquet layout), "embeddings" / "metadata" (npy layout), "rejects".
    Default: the table files, "data" or "metadata".
    """
    root = Path(root)
    paths = []
    for part in find_manifests(root):
        for shard in Manifest.load(part).shards:
            files = shard["files"]
            wanted = role or ("data" if "data" in files else "metadata")
            if wanted in files:
                paths.append(root / files[wanted]["path"])
    return paths


def open_dataset(root: str | Path) -> Any:
    """A pyarrow Dataset over the finished shards only (ids, embeddings or metadata, kept columns)."""
    import pyarrow.dataset as ds

    return ds.dataset([str(p) for p in finished_files(root)], format="parquet")


def manifest_parts(root: Path) -> list[Path]:
    return sorted(Path(root).glob("manifest-*-of-*.json"))


def find_manifests(root: str | Path) -> list[Path]:
    """manifest.json (a single or merged run), else the parts of a sharded run."""
    single = Path(root) / "manifest.json"
    return [single] if single.exists() else manifest_parts(Path(root))


def merge_manifests(root: str | Path) -> tuple[Path, list[str]]:
    """Check that the parts of a sharded run tile the input and are complete; if so, write
    one OUTPUT/manifest.json listing every shard. Returns (path, problems)."""
    from .sharding import coverage_problems

    root = Path(root)
    paths = manifest_parts(root)
    if not paths:
        raise OutputConflict(f"{root} holds no manifest-*-of-*.json parts to merge")
    docs = [Manifest.load(p).doc for p in paths]
    problems = coverage_problems(docs)
    problems += [
        f"{p.name}: run is {d.get('status')!r}, not complete"
        for p, d in zip(paths, docs)
        if d.get("status") != "complete"
    ]
    target = root / "manifest.json"
    if problems:
        return target, problems
    docs.sort(key=lambda d: d["settings"]["plan"]["shard_index"])
    merged = Manifest.new(target, docs[0]["settings"], docs[0]["inputs"], docs[0]["runtime"])
    merged.doc["settings"] = {
        **docs[0]["settings"],
        "plan": {**docs[0]["settings"]["plan"], "shard_index": None},
    }
    merged.doc["parts"] = [p.name for p in paths]
    row = 0
    for doc in docs:
        for shard in doc["shards"]:
            merged.shards.append({**shard, "first_row": row, "part": doc["settings"]["plan"]["shard_index"]})
            row += shard["rows"]
    totals: dict[str, Any] = {}
    for key in ("rows", "rejected", "truncated", "shards", "tokens", "padded_tokens"):
        totals[key] = sum(d["totals"].get(key, 0) for d in docs)
    totals["seconds"] = max(d["totals"].get("seconds", 0) for d in docs)
    merged.finish("complete", totals)
    return target, []
