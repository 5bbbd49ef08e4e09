"""`minilm verify OUTPUT`: does what is on disk match what the manifest promises?"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import stored_dim
from ..errors import ExitCode, MinilmError
from ..storage import Storage, redact_url, storage_for
from .ids import DuplicateScan
from .layout import relative as layout_rel
from .layout import shard_folders
from .manifest import Manifest, ManifestError, find_manifests, layout_of
from .merge import settings_mix_problems, stale_merge_problems
from .tables import read_table
from .verify_keys import KeyChecks
from .verify_tokens import TokenShard, read_token_shard
from .writers import NUMPY_DTYPES, sha256_of


@dataclass
class VerifyReport:
    root: str  # a local path, or a URL without credentials
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shards: int = 0
    rows: int = 0
    rejected: int = 0
    duplicate_ids: int = 0
    reused: int = 0  # rows found byte copies of their --reuse sources' vectors
    dim: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = (
            f"{self.root}: {self.shards} shard(s), {self.rows} rows, {self.rejected} rejected, dim {self.dim}"
        )
        warned = [f"  warning: {w}" for w in self.warnings]
        if self.reused:
            warned.insert(0, f"  {self.reused} reused rows are byte copies of their --reuse sources")
        if self.ok:
            return "\n".join([f"ok: {head}", *warned])
        lines = [f"FAILED: {head}; {len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines + warned)


@dataclass
class _Shard:
    """A shard being checked: what to call it in the report, and where its ids are."""

    label: str
    table: str


class _Verifier:
    def __init__(self, root: str, storage: Storage) -> None:
        self.root = root
        self.storage = storage
        self.report = VerifyReport(redact_url(root))
        self.scan = DuplicateScan(storage)
        self.seen: list[_Shard] = []
        self.listed: set[str] = set()
        self.docs: list[tuple[str, dict]] = []
        self.all_read = True
        self.id_column: str | None = None
        self.schema: tuple[str, pa.Schema] | None = None  # (first shard's label, its table schema)
        self.keys: KeyChecks | None = None  # the key-file and --reuse checks of the manifest at hand

    def run(self, manifests: list[str]) -> VerifyReport:
        try:
            for path in manifests:
                self.manifest(path)
            if self.docs:
                self.id_column = self.docs[0][1].get("settings", {}).get("id_column")
            if len(self.docs) > 1 or (self.docs and self.docs[0][0] != "manifest.json"):
                self.parts()
            elif self.docs:
                self.report.problems += stale_merge_problems(self.root, self.docs[0][1], self.storage)
            self.duplicates()
            if self.all_read:
                self.orphans()
        finally:
            self.scan.close()
        return self.report

    def manifest(self, path: str) -> None:
        name = os.path.basename(path)
        try:
            manifest = Manifest.load(path, self.storage)
        except ManifestError as exc:
            if exc.kind == "newer":
                raise
            self.all_read = False
            return self.report.problems.append(f"{name}: {exc.kind} manifest ({exc.detail})")
        holder = self.storage.lock_holder(layout_of(path).lock_path)
        self.keys = KeyChecks(self.root, self.storage, manifest.doc, self.report.warnings)
        try:
            self.check_manifest(name, manifest.doc, holder)
            self.docs.append((name, manifest.doc))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            self.all_read = False
            self.report.problems.append(f"{name}: malformed manifest ({type(exc).__name__}: {exc})")
        finally:
            self.keys.close()
        self.keys.summary()
        self.report.reused += self.keys.checked

    def check_manifest(self, name: str, doc: dict, holder: str | None) -> None:
        settings = doc.get("settings", {})
        report = self.report
        report.dim = settings.get("dim")
        if holder is not None:
            report.problems.append(f"{name}: a run is in progress (pid {holder}); verify it once it ends")
        elif doc.get("status") == "running":  # says running, but its lock (flock or lease) is free
            report.problems.append(
                f"{name}: run was interrupted (status 'running', no process holds its lock); "
                "rerun the same command with --resume to continue"
            )
        elif doc.get("status") != "complete":
            report.problems.append(
                f"{name}: run is {doc.get('status')!r}, not complete; rerun it with --resume"
            )
        by_file = name != "manifest.json" or "parts" in doc
        next_row = 0
        for shard in doc.get("shards", []):
            if shard.get("superseded"):  # replaced by a later --append generation: not read
                self.listed |= {f["path"] for f in shard["files"].values()}
                next_row = shard["first_row"] + shard["rows"]
                continue
            report.shards += 1
            report.rows += shard["rows"]
            report.rejected += shard["rejected"]
            files = shard["files"]
            table = files["data" if "data" in files else "metadata"]["path"]
            label = os.path.basename(table) if by_file else f"shard {shard['index']}"
            if shard["first_row"] != next_row and not by_file:
                report.problems.append(f"{label}: starts at row {shard['first_row']}, expected {next_row}")
            next_row = shard["first_row"] + shard["rows"]
            self.listed |= {f["path"] for f in files.values()}
            report.problems += [
                f"{label}: {p}" for p in self.check_shard(_Shard(label, table), shard, settings)
            ]
        totals = doc.get("totals") or {}
        rows = sum(s["rows"] for s in doc.get("shards", []) if not s.get("superseded"))
        if doc.get("status") == "complete" and totals.get("rows") != rows:
            report.problems.append(f"{name}: totals say {totals.get('rows')} rows, shards hold {rows}")

    def check_shard(self, shard: _Shard, entry: dict, settings: dict) -> list[str]:
        problems = []
        for rec in entry["files"].values():
            path = os.path.join(self.root, rec["path"])
            info = self.storage.info(path)
            if info is None:
                problems.append(f"{rec['path']} is missing")
            elif info.size != rec["bytes"]:
                problems.append(f"{rec['path']} is {info.size} bytes, manifest says {rec['bytes']}")
            elif sha256_of(self.storage, path) != rec["sha256"]:
                problems.append(f"{rec['path']}: checksum mismatch (changed since it was written)")
        if problems:
            return problems
        try:
            embeddings, meta = self.read_shard(entry["files"], settings)
            problems += self.check_schema(shard, entry["files"])
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a finding, not a crash
            return [f"unreadable: {' '.join(str(exc).split())[:200]}"]
        if isinstance(embeddings, np.ndarray):  # token shards are read as float32 (verify_tokens)
            problems += stored_type_problems(embeddings.dtype, settings.get("dtype", "float32"))
            embeddings = embeddings.astype(np.float32, copy=False)  # every stored type is exact in float32
        problems += self.check_rows(shard, entry, settings, embeddings, meta)
        if not problems and self.keys is not None and not isinstance(embeddings, TokenShard):
            problems += self.keys.check(entry, embeddings)
        return problems

    def check_schema(self, shard: _Shard, files: dict) -> list[str]:
        """Every shard of an output has the same columns and types (readers join them as one)."""
        with self.storage.open_read(os.path.join(self.root, shard.table)) as f:
            schema = pq.read_schema(f).remove_metadata()
        if self.schema is None:
            self.schema = (shard.label, schema)
            return []
        first, expected = self.schema
        if schema.equals(expected):
            return []
        theirs = ", ".join(f"{f.name} {f.type}" for f in schema)
        ours = ", ".join(f"{f.name} {f.type}" for f in expected)
        return [f"columns ({theirs}) differ from {first}'s ({ours})"]

    def check_rows(
        self,
        shard: _Shard,
        entry: dict,
        settings: dict,
        embeddings: np.ndarray | TokenShard,
        meta: pa.Table,
    ) -> list[str]:
        rows = entry["rows"]
        ids = meta.column("id")
        if isinstance(embeddings, TokenShard):  # --pooling none: a list of token vectors per row
            problems = list(embeddings.problems)
            held, dim = embeddings.rows, embeddings.dim
            bad = embeddings.rows_not_finite() if rows else 0
        else:
            problems = []
            held, dim = embeddings.shape[0], embeddings.shape[1]
            bad = int((~np.isfinite(embeddings)).any(axis=1).sum()) if rows else 0
        if held != rows or len(ids) != rows:
            problems.append(f"holds {held} embeddings and {len(ids)} id rows, manifest says {rows}")
        width = stored_width(settings.get("dim"), settings.get("dtype", "float32"))
        if rows and dim != width:
            problems.append(f"{dim} values a row, manifest's dim and dtype say {width}")
        if bad:
            problems.append("1 row holds NaN or Inf" if bad == 1 else f"{bad} rows hold NaN or Inf")
        if ids.null_count:
            problems.append(f"{ids.null_count} null ids")
        else:
            self.scan.add(_document_ids(meta, settings))
            self.seen.append(shard)
        files = entry["files"]
        if "rejects" in files:
            with self.storage.open_read(os.path.join(self.root, files["rejects"]["path"])) as f:
                lines = sum(1 for _ in f)
            if lines != entry["rejected"]:
                problems.append(f"rejects file has {lines} lines, manifest says {entry['rejected']}")
        elif entry["rejected"]:
            problems.append(f"manifest lists {entry['rejected']} rejects but no rejects file")
        return problems

    def read_shard(self, files: dict, settings: dict) -> tuple[np.ndarray | TokenShard, pa.Table]:
        layout = settings.get("format", "parquet")
        if settings.get("pooling") == "none":
            return read_token_shard(self.storage, self.root, files, layout)
        if layout == "npy":
            with self.storage.open_read(os.path.join(self.root, files["embeddings"]["path"])) as f:
                embeddings = np.load(f)
            meta = read_table(self.storage, os.path.join(self.root, files["metadata"]["path"]))
            return np.asarray(embeddings), meta
        table = read_table(self.storage, os.path.join(self.root, files["data"]["path"]))
        column = table.column("embedding").combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(-1, column.type.list_size), table.drop_columns(["embedding"])

    def parts(self) -> None:
        from ..sharding import coverage_problems

        mix = settings_mix_problems(self.docs)
        self.report.problems += mix
        if not mix and self.docs[0][0] != "manifest.json":
            self.report.problems += coverage_problems([doc for _, doc in self.docs])

    def duplicates(self) -> None:
        """Repeated ids: a failure for default ids (row numbers), a warning under --id-column."""
        repeats = self.scan.repeats()
        self.report.duplicate_ids = repeats.total
        out = self.report.warnings if self.id_column else self.report.problems
        for number, shard in enumerate(self.seen):
            example = self._example(shard, repeats.example.get(number))
            if repeats.inside.get(number):
                out.append(f"{shard.label}: {repeats.inside[number]} duplicate ids inside the shard{example}")
            if repeats.earlier.get(number):
                out.append(
                    f"{shard.label}: {repeats.earlier[number]} ids also appear in an earlier shard{example}"
                )

    def _example(self, shard: _Shard, row: int | None) -> str:
        if row is None:
            return ""
        ids = read_table(self.storage, os.path.join(self.root, shard.table), columns=["id"])
        return f", e.g. {ids.column('id')[row].as_py()!r}"

    def orphans(self) -> None:
        for folder in shard_folders(self.root):
            for name in self.storage.list_dir(folder):
                rel = layout_rel(os.path.join(folder, name), self.root)
                if name.startswith("part-") and rel not in self.listed:
                    self.report.problems.append(f"{rel} is not listed in any manifest")


def stored_width(dim: object, dtype: str) -> object:
    """Values a stored row holds (``config.stored_dim``); a manifest's non-integer ``dim`` as it is."""
    return stored_dim(dim, dtype) if isinstance(dim, int) else dim


def stored_type_problems(stored: np.dtype, dtype: str) -> list[str]:
    """The embedding's value type is the one --dtype writes (output/writers.py: binary is int8
    bytes, ubinary uint8 bytes)."""
    expected = NUMPY_DTYPES.get(dtype)
    if expected is None:
        return [f"manifest's dtype {dtype!r} is none this minilm-cli writes"]
    if stored != np.dtype(expected):
        return [f"embedding values are {stored}, manifest's dtype {dtype} stores {np.dtype(expected)}"]
    return []


def _document_ids(table: pa.Table, settings: dict) -> pa.ChunkedArray:
    """The ids that must be unique: one per row, or with --overflow split one per document
    (its window 0; the other windows repeat the id on purpose)."""
    if (settings.get("overflow") or {}).get("mode") == "split":
        return table.column("id").filter(pc.equal(table.column("window"), 0))
    return table.column("id")


def verify_output(root: str | Path) -> VerifyReport:
    """Check every shard of every manifest part under ``root``; never raises on bad data.

    An OUTPUT that exists but holds no manifest (deleted, or the folder emptied) is damage:
    a one-line error with exit 4. A manifest from a newer minilm-cli: exit 3.
    """
    root = os.fspath(root)
    storage = storage_for(root)
    manifests = find_manifests(root, storage)
    if not manifests:
        raise MinilmError(
            f"{redact_url(root)} holds no manifest.json: not a minilm output, or its manifest was deleted",
            ExitCode.VERIFY_FAILED,
        )
    return _Verifier(root, storage).run(manifests)
