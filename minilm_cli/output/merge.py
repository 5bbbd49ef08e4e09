"""Reading an OUTPUT whole: its finished files, open_dataset, and merge-manifests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import OutputConflict
from ..storage import Storage, arrow_filesystem, storage_for
from .layout import Layout
from .manifest import Manifest, ManifestError, find_manifests, first_difference, manifest_parts


def listed_file_problems(root: str, shards: list[dict], storage: Storage | None = None) -> list[str]:
    """Every file the shards list must exist with its recorded size."""
    storage = storage or storage_for(root)
    problems = []
    for shard in shards:
        for rec in shard["files"].values():
            info = storage.info(os.path.join(root, rec["path"]))
            if info is None:
                problems.append(f"{rec['path']} is missing")
            elif info.size != rec["bytes"]:
                problems.append(f"{rec['path']} is {info.size} bytes, manifest says {rec['bytes']}")
    return problems


def settings_mix_problems(named: list[tuple[str, dict]]) -> list[str]:
    """Parts of one output must share every setting but their own shard index."""

    def comparable(doc: dict) -> dict:
        settings = dict(doc.get("settings") or {})
        plan = settings.get("plan")
        if isinstance(plan, dict):
            settings["plan"] = {k: v for k, v in plan.items() if k != "shard_index"}
        return settings

    if not named:
        return []
    first_name, first = named[0]
    problems = []
    for name, doc in named[1:]:
        why = first_difference(comparable(first), comparable(doc), labels=(first_name, name))
        if why:
            problems.append(f"parts were embedded with different settings: {why}")
    return problems


def finished_files(root: str | Path, role: str | None = None) -> list[str]:
    """The files of finished shards, in order, as every manifest part under ``root`` lists them.

    ``role``: "data" (parquet layout), "embeddings" / "metadata" (npy layout), "rejects".
    Default: the table files, "data" or "metadata". Raises OutputConflict when a listed
    file is missing or not the size the manifest recorded: rows would silently be lost.
    Paths are strings: local paths, or URLs on an object store (``s3://bucket/out/...``).
    """
    root = os.fspath(root)
    paths = []
    for part in find_manifests(root):
        shards = Manifest.load(part).shards
        problems = listed_file_problems(root, shards)
        if problems:
            raise OutputConflict(
                f"{part}: {problems[0]} (and {len(problems) - 1} more problem(s))"
                if len(problems) > 1
                else f"{part}: {problems[0]}"
            )
        for shard in shards:
            if shard.get("superseded"):
                continue  # a later --append generation re-embedded these rows
            files = shard["files"]
            wanted = role or ("data" if "data" in files else "metadata")
            if wanted in files:
                paths.append(os.path.join(root, files[wanted]["path"]))
    return paths


def open_dataset(root: str | Path) -> Any:
    """A pyarrow Dataset over the finished shards only (ids, embeddings or metadata, kept columns).
    ``root`` may be an object-store URL: the files are read through its pyarrow file system."""
    import pyarrow.dataset as ds

    filesystem, paths = arrow_filesystem(finished_files(root))
    return ds.dataset(paths, format="parquet", filesystem=filesystem)


def load_parts(root: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """((name, manifest doc) of every readable part, problems of the others)."""
    named, problems = [], []
    for path in manifest_parts(root):
        name = os.path.basename(path)
        try:
            named.append((name, Manifest.load(path).doc))
        except ManifestError as exc:
            if exc.kind == "newer":
                raise
            problems.append(f"{name}: {exc.kind} manifest ({exc.detail})")
    return named, problems


def merge_manifests(root: str | Path) -> tuple[str, list[str]]:
    """Check that the parts of a sharded run tile the input, share their settings, are
    complete and their files are all there; if so, write one OUTPUT/manifest.json listing
    every shard. Returns (path, problems)."""
    from ..sharding import coverage_problems

    root = os.fspath(root)
    target = os.path.join(root, "manifest.json")
    if not manifest_parts(root):
        raise OutputConflict(f"{root} holds no manifest-*-of-*.json parts to merge")
    named, problems = load_parts(root)
    docs = [doc for _, doc in named]
    problems += settings_mix_problems(named)
    if not problems:
        problems += coverage_problems(docs)
    problems += [
        f"{n}: run is {d.get('status')!r}, not complete" for n, d in named if d.get("status") != "complete"
    ]
    for name, doc in named:
        problems += [f"{name}: {p}" for p in listed_file_problems(root, doc["shards"])]
    if problems:
        return target, problems
    docs.sort(key=lambda d: d["settings"]["plan"]["shard_index"])
    merged = Manifest.new(Layout(root), docs[0]["settings"], docs[0]["inputs"], docs[0]["runtime"])
    merged.doc.pop("markers")
    merged.doc["settings"] = {
        **docs[0]["settings"],
        "plan": {**docs[0]["settings"]["plan"], "shard_index": None},
    }
    merged.doc["parts"] = [
        name for name, _ in sorted(named, key=lambda n: n[1]["settings"]["plan"]["shard_index"])
    ]
    reuse = {k: v for doc in docs for k, v in doc.get("reuse", {}).items()}
    if reuse:
        merged.doc["reuse"] = reuse  # the --reuse sources the shards name (verify checks them)
    row = 0
    for _, part, shard in sorted(_shards_by_generation(docs), key=lambda t: t[:2] + (t[2]["index"],)):
        merged.shards.append({**shard, "first_row": row, "part": part})
        row += shard["rows"]
    merged.doc["generations"] = _merged_generations(docs)
    totals: dict[str, Any] = {}
    for key in ("rows", "rejected", "truncated", "shards", "tokens", "padded_tokens"):
        totals[key] = sum(d["totals"].get(key, 0) for d in docs)
    totals["seconds"] = max(d["totals"].get("seconds", 0) for d in docs)
    merged.finish("complete", totals)
    return target, []


def _shards_by_generation(docs: list[dict]) -> list[tuple[int, int, dict]]:
    """(generation, part, shard) of every shard: the merged list is ordered by generation, then
    part, so rows come in record order (default ids ascending) across --append generations."""
    out = []
    for doc in docs:
        part = doc["settings"]["plan"]["shard_index"]
        firsts = [(g["first_shard"], g["generation"]) for g in doc.get("generations", [])]
        for shard in doc["shards"]:
            number = max((g for first, g in firsts if first <= shard["index"]), default=1)
            out.append((number, part, shard))
    return out


def _merged_generations(docs: list[dict]) -> list[dict]:
    """The array's generations: what each embedded, its records, and every part's shards it superseded."""
    merged = []
    for number, gen in enumerate(docs[0].get("generations", [])):
        gens = [d["generations"][number] for d in docs]
        merged.append(
            {
                "generation": gen["generation"],
                "started": min((g.get("started") or "" for g in gens), default="") or None,
                "inputs": gen.get("inputs", []),
                "record_start": min(g.get("record_start", 0) for g in gens),
                "record_end": max(g.get("record_end", 0) for g in gens),
                "superseded": [
                    [d["settings"]["plan"]["shard_index"], index]
                    for d, g in zip(docs, gens)
                    for index in g.get("superseded", [])
                ],
            }
        )
    return merged


def stale_merge_problems(root: str, doc: dict, storage: Storage | None = None) -> list[str]:
    """A merged manifest.json is a snapshot: a part that --append has taken on since is not in it."""
    if "parts" not in doc:
        return []
    storage = storage or storage_for(root)
    merged = max(len(doc.get("generations", [])), 1)
    problems = []
    for path in manifest_parts(root, storage):
        try:
            part = Manifest.load(path, storage).doc
        except ManifestError:
            continue  # not part of the merged snapshot's promise; merge-manifests reports it
        if len(part.get("generations", [])) > merged:
            problems.append(
                f"manifest.json holds {merged} generation(s) but {os.path.basename(path)} has "
                f"{len(part['generations'])} (appended since the merge): run minilm merge-manifests"
            )
    return problems
