"""The storage layer: the only code that opens, lists, fingerprints, commits, removes and locks.

Every reader and sink goes through a ``Storage``. Today there is one implementation, the
local file system (``LocalStorage``); an object-store implementation (fsspec) plugs in
behind the same interface, chosen by ``storage_for(location)`` from the URL's scheme.

Commit semantics, which the rest of the package relies on:
  ``create(path)`` returns a ``PendingFile``; bytes written to its ``stream`` are invisible
  under ``path`` until ``commit()``, which makes the whole file appear at once (locally:
  fsync, rename, fsync the directory; on a store: the completed upload). ``discard()``
  leaves nothing behind. So a reader never sees half a file under a final name.
"""

from __future__ import annotations

from .base import FileInfo, Lock, PendingFile, Storage
from .local import LocalStorage

_LOCAL = LocalStorage()


def storage_for(location: str | None = None) -> Storage:
    """The storage that serves ``location`` (a path; later also s3://, gs://, ... URLs)."""
    return _LOCAL


__all__ = ["FileInfo", "LocalStorage", "Lock", "PendingFile", "Storage", "storage_for"]
