"""What a storage must offer; see the package docstring for the commit semantics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol


@dataclass(frozen=True)
class FileInfo:
    """What a resumed or appended run compares to tell whether an input changed."""

    size: int
    mtime_ns: int | None
    is_dir: bool = False
    #: What changes whenever the content does: ``etag:...`` on stores that have ETags,
    #: ``size-mtime:...`` elsewhere; None for directories and local files (compare mtime_ns).
    fingerprint: str | None = None


class PendingFile(Protocol):
    """A file being written: invisible under its final name until ``commit``."""

    path: str
    stream: IO[bytes]

    def commit(self) -> None: ...

    def discard(self) -> None: ...


class Lock(Protocol):
    """One writer at a time; released explicitly, and by the system when the holder dies."""

    def release(self, remove: bool = False) -> None: ...


class Storage(Protocol):
    def info(self, path: str) -> FileInfo | None: ...

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def list_dir(self, path: str) -> list[str]: ...

    def walk_files(self, path: str) -> list[str]: ...

    def glob(self, pattern: str) -> list[str]: ...

    def real_path(self, path: str) -> str: ...

    def rereadable(self, path: str) -> bool: ...

    def file_problem(self, path: str) -> str | None: ...

    def open_read(self, path: str) -> IO[bytes]: ...

    def read_bytes(self, path: str) -> bytes: ...

    def create(self, path: str) -> PendingFile: ...

    def write_atomic(self, path: str, data: bytes) -> None: ...

    def remove(self, path: str) -> None: ...

    def remove_empty_dir(self, path: str) -> None: ...

    def make_dirs(self, path: str) -> None: ...

    def lock(self, path: str, owns: Callable[[str], bool] | None = None) -> Lock:
        """The one-writer lock at ``path``; ``owns`` names the files its writer owns (file
        name -> bool), so that clean-up after a dead writer's lock is taken over stays with them."""
        ...

    def lock_holder(self, path: str) -> str | None:
        """Who holds the lock at ``path`` (a pid, or "?"), or None when nobody does.
        Looks without taking it or changing the file."""
        ...

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; a negative ``start`` counts from the end."""
        ...

    def scratch(self) -> IO[bytes]:
        """An anonymous local temp file (read + write, seekable), gone once closed: spools
        and sort runs, never output."""
        ...
