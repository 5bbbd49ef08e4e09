"""The manifest: what a run is, and which of its shards are finished.

Format (``format_version`` 2), per writer (``manifest.json``, or ``manifest-I-of-N.json``
for part I of a sharded run):

* the **header**, the manifest file itself: tool, settings, inputs, runtime, assignment,
  ``status`` and ``shards`` (those compacted into it so far) and ``totals``. Written at the
  start of a run (and of each resumed run) and once more when it ends.
* one **commit marker** per finished shard, ``OUTPUT/.minilm-shards/{prefix}SSSSS.json``,
  holding that shard's record (rows, first_row, record_end, files with bytes and sha256).
  Written once, after the shard's files are committed: a constant cost per shard, and no
  appends (fine for object stores, which cannot append).
* **compaction** on finish, interrupt or failure: the header is rewritten with every shard
  and the totals (the form format_version 1 readers know), then the markers are removed.

Loading = the header's shards + the markers of its prefix that continue them in order
(a marker already compacted is skipped; a gap ends the list, so the shards after it are
redone). Version 1 manifests (no markers) load unchanged; a newer version is refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from typing import Any

from .. import __version__
from ..errors import OutputConflict
from ..storage import Storage, input_key, storage_for
from .layout import MARKER_FOLDER, Layout
from .writers import ShardRecord

FORMAT_VERSION = 2
_PART = re.compile(r"^manifest-(\d{5})-of-(\d{5})\.json$")


class ManifestError(OutputConflict):
    """A manifest that cannot be used: ``kind`` is "unreadable", "malformed" or "newer"."""

    def __init__(self, message: str, kind: str, detail: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail


def layout_of(path: str) -> Layout:
    """The writer a manifest file belongs to, from its name."""
    root, name = os.path.split(os.fspath(path))
    match = _PART.match(name)
    if match:
        return Layout(root, int(match.group(1)), int(match.group(2)))
    return Layout(root)


def _dumps(doc: Any, indent: int | None = 2) -> bytes:
    return (json.dumps(doc, indent=indent, sort_keys=False) + "\n").encode()


def read_doc(path: str, storage: Storage | None = None) -> dict[str, Any]:
    """The header as a dict, checked for shape and version; OutputConflict (exit 3) if not."""
    storage = storage or storage_for(path)
    try:
        doc = json.loads(storage.read_bytes(path).decode("utf-8"))
    except (OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise ManifestError(f"cannot read {path}: {detail}", "unreadable", detail) from None
    why = _malformed(doc)
    if why:
        raise ManifestError(
            f"{path} is malformed ({why}): not a manifest this tool can use", "malformed", why
        )
    version = doc.get("format_version", 1)
    if isinstance(version, int) and version > FORMAT_VERSION:
        why = f"format_version {version}, written by a newer minilm-cli"
        raise ManifestError(
            f"{path} has {why}; this one ({__version__}) reads up to {FORMAT_VERSION}: upgrade to use it",
            "newer",
            why,
        )
    return doc


def _malformed(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    for key, kind in (("shards", list), ("settings", dict), ("inputs", list)):
        if key in doc and not isinstance(doc[key], kind):
            return f"'{key}' is not a JSON {'array' if kind is list else 'object'}"
    if not isinstance(doc.get("format_version", 1), int):
        return "'format_version' is not an integer"
    if "shards" not in doc or "settings" not in doc:
        return "no 'shards' or 'settings'"
    for shard in doc["shards"]:
        if not isinstance(shard, dict) or not isinstance(shard.get("index"), int):
            return "a shard entry without an index"
    return None


def is_ours(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("tool"), dict)
        and doc["tool"].get("name") == "minilm-cli"
    )


class Manifest:
    """One writer's manifest: its header document and the shards its markers add."""

    def __init__(self, doc: dict[str, Any], layout: Layout, storage: Storage | None = None) -> None:
        self.doc = doc
        self.layout = layout
        self.storage = storage or storage_for(layout.root)

    @property
    def path(self) -> str:
        return self.layout.manifest_path

    @classmethod
    def new(cls, layout: Layout, settings: dict, inputs: list[dict], runtime: dict) -> Manifest:
        doc = {
            "format_version": FORMAT_VERSION,
            "tool": {"name": "minilm-cli", "version": __version__},
            "status": "running",
            "settings": settings,
            "inputs": inputs,
            "runtime": runtime,
            "markers": f"{MARKER_FOLDER}/{layout.prefix}",
            "shards": [],
            "totals": {},
        }
        return cls(doc, layout)

    @classmethod
    def load(cls, path: str, storage: Storage | None = None) -> Manifest:
        """Header + markers: the compacted and the in-progress form alike."""
        layout = layout_of(path)
        storage = storage or storage_for(layout.root)
        manifest = cls(canonical_inputs(read_doc(path, storage)), layout, storage)
        manifest._add_markers()
        return manifest

    def _add_markers(self) -> None:
        shards = self.shards
        done = {s["index"] for s in shards}
        markers = {}
        for name in self.storage.list_dir(self.layout.marker_folder):
            index = self.layout.own_index(name)
            if index is not None and name.endswith(".json") and index not in done:
                markers[index] = name
        expect = shards[-1]["index"] + 1 if shards else 0
        while expect in markers:
            path = os.path.join(self.layout.marker_folder, markers[expect])
            try:
                record = json.loads(self.storage.read_bytes(path))
            except (OSError, ValueError):
                break  # a damaged marker: that shard and the ones after it are redone
            if not isinstance(record, dict) or record.get("index") != expect:
                break
            shards.append(record)
            expect += 1

    def save(self) -> None:
        """Write the header (with the shards compacted into it so far)."""
        self.storage.write_atomic(self.path, _dumps(self.doc))

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.doc["shards"]

    def add_shard(self, record: ShardRecord) -> None:
        """Record a committed shard: one small marker file, whatever the shard count."""
        entry = asdict(record)
        self.storage.write_atomic(self.layout.marker_path(record.index), _dumps(entry, None))
        self.shards.append(entry)

    def truncate(self, keep: int) -> None:
        """Forget shards from position ``keep`` on (damaged on disk): they are redone."""
        for shard in self.shards[keep:]:
            self.storage.remove(self.layout.marker_path(shard["index"]))
        del self.shards[keep:]

    def resume_point(self) -> tuple[int, int, int]:
        """(next shard index, output rows done, input records done)."""
        if not self.shards:
            return 0, 0, 0
        last = self.shards[-1]
        return last["index"] + 1, last["first_row"] + last["rows"], last["record_end"]

    def mismatch(self, settings: dict, inputs: list[dict]) -> str | None:
        """Why a resumed run would not produce the output this manifest started, or None."""
        why = first_difference(self.doc.get("settings", {}), settings)
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
        """Compact: the header with every shard and the totals, then drop the markers."""
        self.doc["status"] = status
        self.doc["totals"] = totals
        self.doc["format_version"] = FORMAT_VERSION
        self.save()
        self.remove_markers()

    def remove_markers(self) -> None:
        for name in self.storage.list_dir(self.layout.marker_folder):
            if self.layout.own_index(name) is not None and name.endswith(".json"):
                self.storage.remove(os.path.join(self.layout.marker_folder, name))
        self.storage.remove_empty_dir(self.layout.marker_folder)


def canonical_inputs(doc: dict[str, Any]) -> dict[str, Any]:
    """Every place ``doc`` names an input, as its key (storage/identity.py), in place.

    This tool records keys; older versions recorded each path as it was given. Such an entry
    is made a key against the current working directory: best effort, right when the run is
    continued from the folder it started in (as a cron job is), and then every other
    spelling of the same file matches too. A key is its own key, so this changes nothing else."""

    def fix(entries: Any) -> None:
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                entry["path"] = input_key(entry["path"])

    fix(doc.get("inputs"))
    assignment = doc.get("assignment")
    if isinstance(assignment, dict):
        fix(assignment.get("splits"))
    gens = doc.get("generations")
    for gen in gens if isinstance(gens, list) else []:
        if not isinstance(gen, dict):
            continue
        for name in ("inputs", "input_records", "splits"):
            fix(gen.get(name))
        plan = gen.get("plan")
        if isinstance(plan, dict):
            fix(plan.get("inputs"))
            for name in ("new", "changed"):
                if isinstance(plan.get(name), list):
                    plan[name] = [input_key(p) if isinstance(p, str) else p for p in plan[name]]
    return doc


def first_difference(
    old: dict, new: dict, prefix: str = "", labels: tuple[str, str] = ("manifest", "this run")
) -> str | None:
    """The first setting that differs, named down to the nested key (e.g. plan.shard_rows)."""
    for key in sorted(set(old) | set(new)):
        before, now = old.get(key), new.get(key)
        if before == now:
            continue
        if isinstance(before, dict) and isinstance(now, dict) and key != "model":
            return first_difference(before, now, f"{prefix}{key}.", labels)
        has = "manifest has" if labels[0] == "manifest" else f"{labels[0]} has"
        return f"{prefix}{key} differs: {has} {_short(before)}, {labels[1]} {_short(now)}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def manifest_parts(root: str, storage: Storage | None = None) -> list[str]:
    storage = storage or storage_for(root)
    return [os.path.join(root, n) for n in storage.list_dir(root) if _PART.match(n)]


def find_manifests(root: str, storage: Storage | None = None) -> list[str]:
    """manifest.json (a single or merged run), else the parts of a sharded run."""
    storage = storage or storage_for(root)
    single = os.path.join(root, "manifest.json")
    return [single] if storage.exists(single) else manifest_parts(root, storage)
