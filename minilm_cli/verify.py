"""`minilm verify OUTPUT`: does what is on disk match what the manifest promises?"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import OutputConflict
from .manifest import find_manifests
from .model import sha256_file
from .outdir import SHARD_FOLDERS
from .sharding import coverage_problems


@dataclass
class VerifyReport:
    root: Path
    problems: list[str] = field(default_factory=list)
    shards: int = 0
    rows: int = 0
    rejected: int = 0
    dim: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = (
            f"{self.root}: {self.shards} shard(s), {self.rows} rows, {self.rejected} rejected, dim {self.dim}"
        )
        if self.ok:
            return f"ok: {head}"
        lines = [f"FAILED: {head}; {len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def verify_output(root: str | Path) -> VerifyReport:
    """Check every shard of every manifest part under ``root``; never raises on bad data."""
    root = Path(root)
    manifests = find_manifests(root)
    if not manifests:
        raise OutputConflict(f"{root} holds no manifest.json: not a minilm output")
    report = VerifyReport(root)
    ids_seen: set[Any] = set()
    docs = []
    for path in manifests:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            report.problems.append(f"{path.name}: unreadable ({exc})")
            continue
        try:
            _verify_manifest(root, path.name, doc, report, ids_seen)
            docs.append(doc)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            report.problems.append(f"{path.name}: malformed manifest ({type(exc).__name__}: {exc})")
    if manifests and manifests[0].name != "manifest.json":  # the parts of a sharded run
        report.problems += coverage_problems(docs)
    _find_orphans(root, manifests, report)
    return report


def _verify_manifest(root: Path, name: str, doc: dict, report: VerifyReport, ids_seen: set) -> None:
    settings = doc.get("settings", {})
    report.dim = settings.get("dim")
    if doc.get("status") != "complete":
        report.problems.append(f"{name}: run is {doc.get('status')!r}, not complete; rerun it with --resume")
    next_row = 0
    for shard in doc.get("shards", []):
        report.shards += 1
        report.rows += shard["rows"]
        report.rejected += shard["rejected"]
        if shard["first_row"] != next_row:
            report.problems.append(
                f"shard {shard['index']}: starts at row {shard['first_row']}, expected {next_row}"
            )
        next_row = shard["first_row"] + shard["rows"]
        problems = _verify_shard(root, shard, settings, ids_seen)
        report.problems += [f"shard {shard['index']}: {p}" for p in problems]
    totals = doc.get("totals") or {}
    if doc.get("status") == "complete" and totals.get("rows") != next_row:
        report.problems.append(f"{name}: totals say {totals.get('rows')} rows, shards hold {next_row}")


def _verify_shard(root: Path, shard: dict, settings: dict, ids_seen: set) -> list[str]:
    problems = []
    for rec in shard["files"].values():
        path = root / rec["path"]
        if not path.exists():
            problems.append(f"{rec['path']} is missing")
        elif path.stat().st_size != rec["bytes"]:
            problems.append(f"{rec['path']} is {path.stat().st_size} bytes, manifest says {rec['bytes']}")
        elif sha256_file(path) != rec["sha256"]:
            problems.append(f"{rec['path']}: checksum mismatch (changed since it was written)")
    if problems:
        return problems
    try:
        embeddings, meta = _read_shard(root, shard["files"], settings.get("format", "parquet"))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a finding, not a crash
        return [f"unreadable: {' '.join(str(exc).split())[:200]}"]
    rows = shard["rows"]
    if embeddings.shape[0] != rows or meta.num_rows != rows:
        problems.append(
            f"holds {embeddings.shape[0]} embeddings and {meta.num_rows} id rows, manifest says {rows}"
        )
    if rows and embeddings.shape[1] != settings.get("dim"):
        problems.append(f"dim {embeddings.shape[1]}, manifest says {settings.get('dim')}")
    bad = int((~np.isfinite(embeddings)).any(axis=1).sum()) if rows else 0
    if bad:
        problems.append(f"{bad} rows hold NaN or Inf")
    ids = meta.column("id")
    if (settings.get("overflow") or {}).get("mode") == "split":  # one id per document, window 0
        ids = ids.filter(pc.equal(meta.column("window"), 0))
    problems += _check_ids(ids, ids_seen)
    if "rejects" in shard["files"]:
        lines = sum(1 for _ in open(root / shard["files"]["rejects"]["path"], encoding="utf-8"))
        if lines != shard["rejected"]:
            problems.append(f"rejects file has {lines} lines, manifest says {shard['rejected']}")
    elif shard["rejected"]:
        problems.append(f"manifest lists {shard['rejected']} rejects but no rejects file")
    return problems


def _read_shard(root: Path, files: dict, layout: str) -> tuple[np.ndarray, pa.Table]:
    if layout == "npy":
        embeddings = np.load(root / files["embeddings"]["path"], mmap_mode="r")
        return np.asarray(embeddings, dtype=np.float32), pq.read_table(root / files["metadata"]["path"])
    table = pq.read_table(root / files["data"]["path"])
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return values.reshape(-1, dim), table.drop_columns(["embedding"])


def _check_ids(ids: pa.ChunkedArray, seen: set) -> list[str]:
    if ids.null_count:
        return [f"{ids.null_count} null ids"]
    unique = pc.unique(ids)
    if len(unique) != len(ids):
        return [f"{len(ids) - len(unique)} duplicate ids inside the shard"]
    values = unique.to_pylist()
    clash = seen.intersection(values)
    seen.update(values)
    return [f"{len(clash)} ids also appear in an earlier shard, e.g. {next(iter(clash))!r}"] if clash else []


def _find_orphans(root: Path, manifests: list[Path], report: VerifyReport) -> None:
    listed = set()
    for path in manifests:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            listed |= {f["path"] for s in doc.get("shards", []) for f in s["files"].values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return  # already reported as malformed
    for folder in [root, *(root / f for f in SHARD_FOLDERS)]:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            rel = str(path.relative_to(root))
            if path.name.startswith("part-") and rel not in listed:
                report.problems.append(f"{rel} is not listed in any manifest")
