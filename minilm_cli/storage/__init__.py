"""The storage layer: the only code that opens, lists, fingerprints, commits, removes and locks.

Every reader and sink goes through a ``Storage``, chosen by ``storage_for(location)`` from
the URL's scheme: a plain path or ``file://`` is the local file system (``LocalStorage``);
anything else with ``scheme://`` (s3, gs, az, hf, https, memory, ...) is ``FsspecStorage``
(``remote.py``, whose docstring explains crash safety without rename and the lease lock).

Commit semantics, which the rest of the package relies on:
  ``create(path)`` returns a ``PendingFile``; bytes written to its ``stream`` are invisible
  under ``path`` until ``commit()``, which makes the whole file appear at once (locally:
  fsync, rename, fsync the directory; on a store: the completed upload). ``discard()``
  leaves nothing behind. So a reader never sees half a file under a final name.
"""

from __future__ import annotations

import json
import os
import threading
from typing import IO, Any

from .base import FileInfo, Lock, PendingFile, Storage
from .identity import input_key, normalize_url
from .local import LocalStorage
from .prefetch import prefetching
from .remote import FsspecStorage, parse_storage_options, redact, redact_url, scheme_of

_LOCAL = LocalStorage()
_DEFAULT_OPTIONS: dict[str, Any] = {}
_REMOTE: dict[tuple[str, str], FsspecStorage] = {}
_REMOTE_LOCK = threading.Lock()


def configure_storage(options: dict[str, Any] | None) -> None:
    """Set the process-wide ``--storage-option`` values every later ``storage_for`` uses."""
    global _DEFAULT_OPTIONS
    _DEFAULT_OPTIONS = dict(options or {})


def storage_options() -> dict[str, Any]:
    """The process-wide options (for engines that rebuild storages in worker processes)."""
    return dict(_DEFAULT_OPTIONS)


def is_remote(location: str | os.PathLike[str] | None) -> bool:
    """Whether ``location`` is served by an fsspec store rather than the local file system."""
    scheme = scheme_of(location)
    return scheme is not None and scheme != "file"


def local_path(location: str | os.PathLike[str]) -> str:
    """``file:///x`` as ``/x``; a plain path unchanged."""
    text = os.fspath(location)
    return text[len("file://") :] if scheme_of(text) == "file" else text


class FileURLStorage:
    """``file://`` URLs on the local file system: the URL prefix is dropped, then
    ``LocalStorage`` (flock, rename) does the work; names it returns are plain paths."""

    def __getattr__(self, name: str) -> Any:
        method = getattr(_LOCAL, name)
        if not callable(method):
            return method

        def call(path: Any = None, *args: Any, **kwargs: Any) -> Any:
            if path is None:
                return method(*args, **kwargs)
            return method(local_path(path), *args, **kwargs)

        return call


_FILE_URLS = FileURLStorage()


def storage_for(
    location: str | os.PathLike[str] | None = None, options: dict[str, Any] | None = None
) -> Storage:
    """The storage that serves ``location``: a plain path, ``file://`` or None is local; any
    other ``scheme://`` is an fsspec store built with ``options`` (default: the process-wide
    ones from ``configure_storage``). A missing package is one InputError line."""
    scheme = scheme_of(location)
    if scheme is None:
        return _LOCAL
    if scheme == "file":
        return _FILE_URLS  # type: ignore[return-value]
    opts = _DEFAULT_OPTIONS if options is None else options
    key = (scheme, json.dumps(opts, sort_keys=True, default=str))
    with _REMOTE_LOCK:
        store = _REMOTE.get(key)
        if store is None:
            store = _REMOTE[key] = FsspecStorage(scheme, opts)
        return store


def open_sequential(location: str | os.PathLike[str]) -> IO[bytes]:
    """A stream read front to back (text formats): on a store, blocks are fetched ahead in a
    thread so request latency overlaps the model's work; locally, the plain file."""
    store = storage_for(location)
    raw = store.open_read(os.fspath(location))
    return prefetching(raw) if is_remote(location) else raw


def arrow_filesystem(locations: list[str]) -> tuple[Any, list[str]]:
    """A pyarrow file system and the paths on it, for ``pyarrow.dataset.dataset(paths,
    filesystem=fs)`` (and so DuckDB/Polars through Arrow) over local paths or one store."""
    import pyarrow.fs as pafs

    remote = [p for p in locations if is_remote(p)]
    if not remote:
        return pafs.LocalFileSystem(), [local_path(p) for p in locations]
    schemes = {scheme_of(p) for p in locations}
    if len(schemes) != 1:
        raise ValueError(f"one store at a time, not {sorted(map(str, schemes))}")
    store = storage_for(remote[0])
    assert isinstance(store, FsspecStorage)
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(store.fs))
    return fs, [store.key(p) for p in locations]


__all__ = [
    "FileInfo",
    "FsspecStorage",
    "LocalStorage",
    "arrow_filesystem",
    "open_sequential",
    "prefetching",
    "Lock",
    "PendingFile",
    "Storage",
    "configure_storage",
    "input_key",
    "is_remote",
    "local_path",
    "normalize_url",
    "parse_storage_options",
    "redact",
    "redact_url",
    "scheme_of",
    "storage_for",
    "storage_options",
]
