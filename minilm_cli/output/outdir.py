"""One writer's rules for OUTPUT: the lock, --overwrite, --resume clean-up and checks.

Nothing in OUTPUT is read or removed before the lock is held, and a writer removes only
names it owns (its prefix, manifest, lock, markers and temp files) or files its own
manifest lists: never another part's files, and never a file this tool did not write.
"""

from __future__ import annotations

import os

from ..errors import OutputConflict
from ..storage import Lock, Storage, storage_for
from .layout import ANY_MANIFEST, MARKER_FOLDER, Layout, shard_folders
from .manifest import Manifest, ManifestError, is_ours, read_doc

NPY_MAGIC = b"\x93NUMPY"
PARQUET_MAGIC = b"PAR1"


class OutputDir:
    """OUTPUT as one writer (a single run, or one part of a sharded run) sees it."""

    def __init__(self, layout: Layout, storage: Storage | None = None) -> None:
        self.layout = layout
        self.root = layout.root
        self.storage = storage or storage_for(layout.root)
        self.lock: Lock | None = None
        self.created = False

    @property
    def manifest_path(self) -> str:
        return self.layout.manifest_path

    def acquire(self) -> None:
        info = self.storage.info(self.root)
        if info is not None and not info.is_dir:
            raise OutputConflict(f"OUTPUT {self.root} exists and is not a directory")
        self.created = info is None
        try:
            self.storage.make_dirs(self.root)
        except (FileExistsError, NotADirectoryError) as exc:
            raise OutputConflict(
                f"cannot create OUTPUT {self.root}: {exc.strerror.lower()} (a parent is a file)"
            ) from None
        self.lock = self.storage.lock(self.layout.lock_path, owns=self.layout.owns)

    def release(self, remove: bool = True) -> None:
        """Let go of the lock; by default its file goes too, so none is left in a finished OUTPUT."""
        if self.lock is not None:
            self.lock.release(remove=remove)
            self.lock = None

    # -- what is in OUTPUT

    def _files(self) -> list[tuple[str, str]]:
        """(folder, name) of every entry in OUTPUT and its shard folders."""
        return [(d, n) for d in shard_folders(self.root) for n in self.storage.list_dir(d)]

    def own_files(self) -> list[str]:
        """This writer's shard files, manifest and markers (not the lock, not temp files)."""
        found = [self.manifest_path] if self.storage.exists(self.manifest_path) else []
        for folder, name in [*self._files(), *self._markers()]:
            if self.layout.own_index(name) is not None:
                found.append(os.path.join(folder, name))
        return found

    def _markers(self) -> list[tuple[str, str]]:
        folder = self.layout.marker_folder
        return [(folder, n) for n in self.storage.list_dir(folder)]

    def remove_own_temp_files(self) -> None:
        """What this writer left half-written when it was last stopped; nobody else's."""
        for folder, name in [*self._files(), *self._markers()]:
            if self.layout.is_own_temp(name):
                self.storage.remove(os.path.join(folder, name))

    def is_empty(self) -> bool:
        if not self.layout.sharded:  # a single run owns the whole directory
            return not any(not n.startswith(".") for n in self.storage.list_dir(self.root))
        return not self.own_files()

    def foreign_files(self, listed: set[str]) -> list[str]:
        """Files in this tool's namespace (part-*, manifest*.json) that this writer did not write."""
        found = []
        for folder, name in self._files():
            rel = self.layout.rel(os.path.join(folder, name))
            ours = self.layout.own_index(name) is not None or rel in listed
            if name == self.layout.manifest_name and folder == self.root:
                continue
            if (name.startswith("part-") or ANY_MANIFEST.match(name)) and not ours:
                found.append(rel)
        return found

    # -- the run's start

    def prepare(self, overwrite: bool, resume: bool) -> Manifest | None:
        """Make OUTPUT ready; return the manifest to resume from, if any."""
        self._refuse_other_runs()
        self.remove_own_temp_files()
        if resume and self.storage.exists(self.manifest_path):
            return Manifest.load(self.manifest_path, self.storage)  # drop_unlisted once settings match
        if self.is_empty():
            return None
        if resume:
            raise OutputConflict(
                f"--resume: {self.manifest_path} not found, so {self.root} is not a minilm output"
            )
        if not overwrite:
            raise OutputConflict(
                f"OUTPUT {self.root} is not empty: add --resume to continue it or --overwrite to replace it"
            )
        self._overwrite()
        return None

    def _refuse_other_runs(self) -> None:
        """Part I of a sharded run never writes beside a finished single run's output."""
        merged = os.path.join(self.root, "manifest.json")
        if not self.layout.sharded or not self.storage.exists(merged):
            return
        try:
            doc = read_doc(merged, self.storage)
        except ManifestError:
            doc = None
        plan = (doc or {}).get("settings", {}).get("plan")
        plan = plan if isinstance(plan, dict) else {}
        if doc is None or "parts" not in doc or plan.get("num_shards") != self.layout.num_shards:
            raise OutputConflict(
                f"OUTPUT {self.root} holds another run's output (its manifest.json is not a merge of "
                f"{self.layout.num_shards} parts): choose another OUTPUT"
            )

    def _overwrite(self) -> None:
        listed: set[str] = set()
        if self.storage.exists(self.manifest_path):
            try:
                doc = read_doc(self.manifest_path, self.storage)
            except ManifestError as exc:
                doc, why = None, exc.detail
            if doc is None or not is_ours(doc):
                what = why if doc is None else "no minilm-cli tool entry"
                raise OutputConflict(
                    f"--overwrite refused: {self.manifest_path} is not a manifest minilm-cli wrote "
                    f"({what}); it is not ours to replace"
                )
            listed = {
                f["path"]
                for s in Manifest.load(self.manifest_path, self.storage).shards
                for f in s["files"].values()
            }
        foreign = self.foreign_files(listed)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputConflict(
                f"--overwrite refused: OUTPUT {self.root} holds files minilm did not write ({shown}); "
                "move them or choose another OUTPUT"
            )
        for rel in sorted(listed):
            self.storage.remove(self.layout.path(rel))
        for path in self.own_files():
            self.storage.remove(path)
        for folder in [*shard_folders(self.root)[1:], self.layout.path(MARKER_FOLDER)]:
            self.storage.remove_empty_dir(folder)

    # -- resume

    def drop_unlisted(self, manifest: Manifest) -> None:
        """A shard committed just before a crash, but not yet recorded, is redone."""
        listed = {f["path"] for shard in manifest.shards for f in shard["files"].values()}
        marked = {self.layout.marker_path(s["index"]) for s in manifest.shards}
        for path in self.own_files():
            if path == self.manifest_path or path in marked:
                continue
            if os.path.dirname(path) == self.layout.marker_folder or self.layout.rel(path) not in listed:
                self.storage.remove(path)

    def first_damaged(self, manifest: Manifest) -> tuple[int, str] | None:
        """(position, why) of the first listed shard whose files are missing or damaged."""
        for position, shard in enumerate(manifest.shards):
            for rec in shard["files"].values():
                why = self._damage(rec)
                if why:
                    return position, why
        return None

    def _damage(self, rec: dict) -> str | None:
        path = self.layout.path(rec["path"])
        info = self.storage.info(path)
        if info is None:
            return f"{rec['path']} is missing"
        if info.size != rec["bytes"]:
            return f"{rec['path']} is {info.size} bytes, manifest says {rec['bytes']}"
        if path.endswith(".parquet") and (
            info.size < 8 or self.storage.read_range(path, -4, 4) != PARQUET_MAGIC
        ):
            return f"{rec['path']} has no Parquet footer"
        if path.endswith(".npy") and self.storage.read_range(path, 0, 6) != NPY_MAGIC:
            return f"{rec['path']} has no .npy header"
        return None

    def undo_fresh_start(self) -> None:
        """A new run that failed on its input before any shard: leave OUTPUT as it was,
        so the corrected command can simply be run again."""
        self.storage.remove(self.manifest_path)
        self.remove_own_temp_files()
        for path in self.own_files():
            self.storage.remove(path)
        for folder in [*shard_folders(self.root)[1:], self.layout.marker_folder]:
            self.storage.remove_empty_dir(folder)
        if self.created:
            self.release()
            self.storage.remove_empty_dir(self.root)
