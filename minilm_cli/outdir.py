"""The OUTPUT directory: one writer at a time, and the --overwrite / --resume rules."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from .atomic import remove_temp_files
from .errors import OutputConflict
from .manifest import Manifest

SHARD_FOLDERS = ("embeddings", "metadata", "rejects")


class OutputDir:
    """OUTPUT, held under an flock: the kernel drops it when the holder dies, even by kill -9."""

    def __init__(self, root: str | Path, prefix: str = "part-", manifest_name: str = "manifest.json") -> None:
        self.root = Path(root)
        self.prefix = prefix
        self.manifest_path = self.root / manifest_name
        self.lock_path = self.root / f".{manifest_name}.lock"
        self._lock_fd: int | None = None
        self.created = False

    def acquire(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise OutputConflict(f"OUTPUT {self.root} exists and is not a directory")
        self.created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputConflict(f"OUTPUT {self.root} is in use by another run (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock; the file stays, harmless
            self._lock_fd = None

    def undo_fresh_start(self) -> None:
        """A new run that failed on its input before any shard: leave OUTPUT as it was,
        so the corrected command can simply be run again."""
        self.manifest_path.unlink(missing_ok=True)
        if self.created:
            self.lock_path.unlink(missing_ok=True)
            shutil.rmtree(self.root / "rejects", ignore_errors=True)
            if not any(self.root.iterdir()):
                self.root.rmdir()

    def own_files(self) -> list[Path]:
        """Files of this run's kind: its manifest, shards and rejects (not the lock)."""
        found = [self.manifest_path] if self.manifest_path.exists() else []
        for folder in [self.root, *(self.root / f for f in SHARD_FOLDERS)]:
            if folder.is_dir():
                found += sorted(p for p in folder.iterdir() if p.name.startswith(self.prefix))
        return found

    def is_empty(self) -> bool:
        if self.prefix == "part-":  # a single run owns the whole directory
            return not any(
                p for p in self.root.iterdir() if p != self.lock_path and not p.name.startswith(".")
            )
        return not self.own_files()

    def prepare(self, overwrite: bool, resume: bool) -> Manifest | None:
        """Make OUTPUT ready; return the manifest to resume from, if any."""
        remove_temp_files(self.root)
        if resume and self.manifest_path.exists():
            return Manifest.load(self.manifest_path)  # drop_unlisted once the settings match
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
        for path in self.own_files():
            path.unlink()
        for folder in SHARD_FOLDERS:
            if (self.root / folder).is_dir() and not any((self.root / folder).iterdir()):
                shutil.rmtree(self.root / folder)
        return None

    def drop_unlisted(self, manifest: Manifest) -> None:
        """A shard published just before a crash, but not yet in the manifest, is redone."""
        listed = {f["path"] for shard in manifest.shards for f in shard["files"].values()}
        for path in self.own_files():
            if path != self.manifest_path and str(path.relative_to(self.root)) not in listed:
                path.unlink()
