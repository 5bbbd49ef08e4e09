"""Object stores (and any other fsspec file system) behind the ``Storage`` interface.

Design note: crash safety without rename
-----------------------------------------
Object stores have no atomic rename, so a shard cannot be written under a temp name and
renamed into place. Instead:

* A shard object is written straight to its final key. On S3 that is a multipart upload
  (``create(path)``): the parts are uploaded as the stream fills, and the object appears,
  whole and at once, only when ``commit()`` completes the upload. ``discard()`` aborts it,
  leaving no object and no pending upload. Other stores (gs://, az://, hf://, memory://)
  spool the bytes to a local temp file and upload them in one call on ``commit()``; each of
  those uploads also makes the object appear whole or not at all.
* An object that exists is therefore always complete, but it is not yet *part of the output*:
  the commit point is the manifest (its per-shard commit marker, rewritten with
  ``write_atomic``, a single PUT) that lists the shard. A shard not listed in the manifest is
  a leftover of a crashed run; readers ignore it, and ``--resume`` / ``--overwrite`` remove it.
  ``--resume`` after ``kill -9`` thus equals a clean run, as it does locally.

Design note: one writer per OUTPUT prefix
-----------------------------------------
``lock(path)`` creates a lease object holding ``{run_id, host, pid, heartbeat, ttl}``.

* Taking the lease is a conditional create: on S3 a PUT with ``If-None-Match: *`` (AWS S3
  since 2024-08; MinIO; moto >= 5 honours it on PutObject and CompleteMultipartUpload, which
  the tests rely on). On memory:// a process-wide mutex makes check-then-write atomic (the
  store lives in this process). On other stores (gs://, az://, hf://) the create is
  ``pipe_file(mode="create")`` where the fsspec implementation supports it, otherwise a
  check-then-write followed by a read-back of the run id (a narrow race, documented).
* A background thread refreshes the heartbeat every ``ttl / 4`` seconds, on S3 with
  ``If-Match: <our ETag>`` so a run that lost its lease (it was taken over after it stalled
  past the ttl) notices instead of overwriting the new holder; ``lock.lost`` then turns true.
* A lease whose heartbeat is older than its ttl, or whose holder is a dead pid on this host,
  is stale: the next run takes it over (on S3 with ``If-Match: <stale ETag>``, so of two runs
  racing for a stale lease exactly one wins). A dead run's lease never blocks ``--resume``
  for longer than the ttl (60 s by default; same host: at once).
* ``release()`` deletes the lease if it is still ours. A lease left behind would look held,
  so ``release(remove=False)`` removes it too.

Staleness compares the holder's heartbeat clock to ours: hosts are assumed NTP-synchronised
to well within the ttl.

Fingerprints: ``info`` returns ``mtime_ns`` from the store's last-modified time (S3: whole
seconds) and ``fingerprint`` from the ETag (S3, GCS, Azure) or, where a store has none, from
size + mtime. Compare ``fingerprint`` to tell whether an input changed: an object rewritten
within the same second with the same size keeps its mtime but not its ETag.

Secrets: no storage option value, key id, secret or token ever appears in an error message
(``redact``), and ``redact_url`` strips user info and credential-like query parameters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import posixpath
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..errors import InputError, MinilmError
from .base import FileInfo
from .lease import LEASE_TTL_S, LeaseLock, lease_is_stale
from .secrets import parse_storage_options, redact, redact_url, scheme_of
from .store_errors import error_code, translate
from .uploads import FsspecPendingFile, SpooledPendingFile

#: Which package serves each scheme, and how to install it. The package by name, not our
#: extra: minilm-cli is installed from a clone, where `minilm-cli[s3]` would look on PyPI.
EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "pip install s3fs (or '.[s3]' in a clone)"),
    "s3a": ("s3fs", "pip install s3fs (or '.[s3]' in a clone)"),
    "gs": ("gcsfs", "pip install gcsfs (or '.[gcs]' in a clone)"),
    "gcs": ("gcsfs", "pip install gcsfs (or '.[gcs]' in a clone)"),
    "hf": ("huggingface_hub", "pip install huggingface_hub (or '.[hf]' in a clone)"),
    "az": ("adlfs", "pip install adlfs"),
    "abfs": ("adlfs", "pip install adlfs"),
    "abfss": ("adlfs", "pip install adlfs"),
    "http": ("aiohttp", "pip install aiohttp"),
    "https": ("aiohttp", "pip install aiohttp"),
}
READ_ONLY = {"http", "https"}
S3_SCHEMES = {"s3", "s3a"}
READ_BLOCK = 4 * 2**20  # read-ahead block for open_read

_FS_CACHE: dict[tuple[str, str, int], Any] = {}
_FS_CACHE_LOCK = threading.Lock()


def filesystem(scheme: str, options: dict[str, Any]) -> Any:
    """The fsspec file system for ``scheme``; a missing package is one InputError line."""
    key = (scheme, json.dumps(options, sort_keys=True, default=str), os.getpid())
    with _FS_CACHE_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is not None:
            return fs
        import fsspec

        try:
            fs = fsspec.filesystem(scheme, **options)
        except ImportError:
            package, install = EXTRAS.get(scheme, (scheme, f"a package for {scheme}://"))
            raise InputError(f"{scheme}:// needs {package}, which is not installed: {install}") from None
        except ValueError as exc:
            if "Protocol not known" in str(exc) or "not known" in str(exc):
                raise InputError(f"unknown storage scheme {scheme}://") from None
            raise InputError(f"bad --storage-option for {scheme}://: {redact(str(exc), options)}") from None
        except TypeError as exc:
            raise InputError(f"bad --storage-option for {scheme}://: {redact(str(exc), options)}") from None
        _FS_CACHE[key] = fs
        return fs


_MEMORY_MUTEX = threading.Lock()
#: Store answers that mean "another writer's version is there": the condition failed.
_LOST_RACE = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class FsspecStorage:
    """Any fsspec URL: ``s3://bucket/key``, ``gs://``, ``az://``, ``hf://``, ``memory://``...

    Paths in and out are full URLs as the user wrote them (``s3://b/k``); directories are
    prefixes, so ``make_dirs`` and ``remove_empty_dir`` do nothing.
    """

    def __init__(self, scheme: str, options: dict[str, Any] | None = None) -> None:
        self.scheme = scheme.lower()
        self.options = dict(options or {})
        self._pid = os.getpid()
        self._fs = filesystem(self.scheme, self.options)
        self.is_s3 = self.scheme in S3_SCHEMES
        self.native_conditional = self.is_s3 or self.scheme == "memory"

    @property
    def fs(self) -> Any:
        """The fsspec file system, rebuilt in a forked child (async file systems such as
        s3fs are not fork-safe: their event loop stays in the parent)."""
        if self._pid != os.getpid():
            self._fs = filesystem(self.scheme, self.options)
            self._pid = os.getpid()
        return self._fs

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (spawned workers, Ray tasks) as scheme + options; rebuilt on arrival."""
        return (FsspecStorage, (self.scheme, self.options))

    # -- names

    def key(self, url: str) -> str:
        """The file system's own name for ``url`` (``bucket/key`` on S3)."""
        return self.fs._strip_protocol(os.fspath(url))

    def url(self, name: str) -> str:
        """Back from the file system's name to a URL in the user's spelling."""
        if "://" in name:
            return name
        return f"{self.scheme}://{name.lstrip('/')}"

    @contextlib.contextmanager
    def errors(self, url: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as exc:
            raise translate(exc, url, self.options) from None
        except (MinilmError, FileExistsError, IsADirectoryError, NotADirectoryError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001 - every store failure becomes one clean line
            raise translate(exc, url, self.options) from None

    def _fresh(self, url: str) -> None:
        """Forget cached listings: another process may have written since."""
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.key(url))

    # -- looking

    def info(self, path: str) -> FileInfo | None:
        self._fresh(path)
        try:
            with self.errors(path):
                d = self.fs.info(self.key(path))
        except FileNotFoundError:
            return None
        is_dir = d.get("type") == "directory"
        size = int(d.get("size") or 0) if not is_dir else 0
        mtime_ns = _mtime_ns(d)
        etag = d.get("ETag") or d.get("etag") or d.get("generation") or d.get("blob_id") or d.get("md5Hash")
        if etag:
            fingerprint = f"etag:{str(etag).strip(chr(34))}"
        else:
            fingerprint = f"size-mtime:{size}:{mtime_ns}"
        return FileInfo(size, mtime_ns, is_dir, None if is_dir else fingerprint)

    def exists(self, path: str) -> bool:
        return self.info(path) is not None

    def is_dir(self, path: str) -> bool:
        info = self.info(path)
        return info is not None and info.is_dir

    def list_dir(self, path: str) -> list[str]:
        """Names directly under a prefix, sorted; none when it does not exist."""
        self._fresh(path)
        try:
            with self.errors(path):
                entries = self.fs.ls(self.key(path), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = self.key(path).rstrip("/")
        names = {e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != base}
        return sorted(n for n in names if n)

    def walk_files(self, path: str) -> list[str]:
        """Every object below a prefix, sorted by URL."""
        self._fresh(path)
        try:
            with self.errors(path):
                found = self.fs.find(self.key(path).rstrip("/") + "/", detail=True)
        except FileNotFoundError:
            return []
        return sorted(self.url(n) for n, d in found.items() if d.get("type") != "directory")

    def glob(self, pattern: str) -> list[str]:
        self._fresh(pattern)
        with self.errors(pattern):
            found = self.fs.glob(self.key(pattern), detail=True)
        return sorted(self.url(n) for n, d in found.items() if d.get("type") != "directory")

    def real_path(self, path: str) -> str:
        """Stores have no symlinks: the URL, normalised (no trailing slash)."""
        return self.url(self.key(path)).rstrip("/")

    def rereadable(self, path: str) -> bool:
        return True  # an object reads the same every time

    def file_problem(self, path: str) -> str | None:
        info = self.info(path)
        if info is None:
            return "not found"
        if info.is_dir:
            return "is a directory"
        return None

    # -- reading

    def open_read(self, path: str) -> IO[bytes]:
        """Buffered and seekable (ranged GETs), so pyarrow reads Parquet row groups as needed."""
        with self.errors(path):
            return self.fs.open(self.key(path), "rb", block_size=READ_BLOCK, cache_type="readahead")

    def read_bytes(self, path: str) -> bytes:
        with self.errors(path):
            return self.fs.cat_file(self.key(path))

    def read_range(self, path: str, start: int, length: int) -> bytes:
        with self.errors(path):
            if start < 0:
                size = self.fs.size(self.key(path))
                start = max(0, size + start)
            return self.fs.cat_file(self.key(path), start=start, end=start + length)

    # -- writing

    def _writable(self, path: str) -> None:
        if self.scheme in READ_ONLY:
            raise InputError(f"{self.scheme}:// is read-only: cannot write {redact_url(path)}")

    def create(self, path: str) -> FsspecPendingFile | SpooledPendingFile:
        self._writable(path)
        if self.is_s3:
            return FsspecPendingFile(self, path)
        return SpooledPendingFile(self, path)

    def write_atomic(self, path: str, data: bytes) -> None:
        """One PUT: the object is replaced whole, or not at all."""
        self._writable(path)
        with self.errors(path):
            self.fs.pipe_file(self.key(path), data)

    def remove(self, path: str) -> None:
        try:
            with self.errors(path):
                self.fs.rm_file(self.key(path))
        except FileNotFoundError:
            pass

    def remove_empty_dir(self, path: str) -> None:
        """Prefixes vanish with their last object; memory:// keeps pseudo-dirs, so try it."""
        if self.scheme == "memory":
            with contextlib.suppress(Exception):
                self.fs.rmdir(self.key(path))

    def make_dirs(self, path: str) -> None:
        """Prefixes need no creating (a bucket must exist: that is checked on first write)."""

    def scratch(self) -> IO[bytes]:
        return tempfile.TemporaryFile()

    # -- conditional writes, for the lease

    def etag(self, path: str) -> str | None:
        info = self.info(path)
        return info.fingerprint if info else None

    def read_lease(self, path: str) -> tuple[dict[str, Any] | None, str | None]:
        """The lease at ``path`` and its fingerprint, or (None, None) when there is none."""
        self._fresh(path)
        try:
            with self.errors(path):
                info = self.fs.info(self.key(path))
                data = self.fs.cat_file(self.key(path))
        except FileNotFoundError:
            return None, None
        etag = info.get("ETag")
        fingerprint = f"etag:{str(etag).strip(chr(34))}" if etag else self.etag(path)
        try:
            lease = json.loads(data)
            if not isinstance(lease, dict):
                lease = {}
        except ValueError:
            lease = {}
        return lease, fingerprint

    def put_if_absent(self, path: str, data: bytes) -> str | None:
        """Create ``path`` only if nothing is there and return its fingerprint; None when
        something is (or another writer's conditional create raced ours: S3's 409)."""
        self._writable(path)
        if self.scheme == "memory":
            with _MEMORY_MUTEX:
                if self.fs.exists(self.key(path)):
                    return None
                self.fs.pipe_file(self.key(path), data)
                return self.etag(path)
        try:
            out = self.fs.pipe_file(self.key(path), data, mode="create")
            return _etag_of(out) or self.etag(path)
        except FileExistsError:
            return None
        except (TypeError, NotImplementedError):
            pass  # this store's fsspec has no exclusive create: check, then write
        except Exception as exc:  # noqa: BLE001 - sorted by the store's error code
            if error_code(exc) in _LOST_RACE:
                return None
            raise translate(exc, path, self.options) from None
        if self.exists(path):
            return None
        self.write_atomic(path, data)
        return self.etag(path)

    def put_if_match(self, path: str, data: bytes, fingerprint: str | None) -> str | None:
        """Replace ``path`` only if it is still the version ``fingerprint``; the new
        fingerprint, or None when another version is there (or none is)."""
        if self.is_s3 and fingerprint and fingerprint.startswith("etag:"):
            try:
                out = self.fs.pipe_file(self.key(path), data, IfMatch=f'"{fingerprint[5:]}"')
                return _etag_of(out) or self.etag(path)
            except FileNotFoundError as exc:
                if error_code(exc) == "NoSuchBucket":
                    raise translate(exc, path, self.options) from None
                return None  # the lease is gone: it is not ours to refresh
            except Exception as exc:  # noqa: BLE001 - sorted by the store's error code
                if error_code(exc) in _LOST_RACE:
                    return None  # 412: someone else's version is there now
                raise translate(exc, path, self.options) from None
        guard = _MEMORY_MUTEX if self.scheme == "memory" else contextlib.nullcontext()
        with guard:
            if self.etag(path) != fingerprint:
                return None
            self.write_atomic(path, data)
            return self.etag(path)

    def abort_uploads(self, prefix: str, owns: Callable[[str], bool] | None = None) -> int:
        """S3: abort the incomplete multipart uploads under ``prefix`` (a killed run's shard
        going up: invisible, but stored and billed until aborted). Only called by a run that
        has just taken over a dead run's lease. ``owns`` (a file name -> whether the dead
        run wrote it) keeps the abort to that run's names: other parts of a job array share
        the prefix and may be uploading a shard right now."""
        if not self.is_s3:
            return 0
        bucket, _, key = self.key(prefix).partition("/")
        key = key.rstrip("/") + "/"
        aborted = 0
        with contextlib.suppress(Exception):  # best effort: the shard objects never appeared
            listed = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
            for upload in listed.get("Uploads", []):
                if owns is not None and not owns(posixpath.basename(upload["Key"])):
                    continue
                self.fs.call_s3(
                    "abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted += 1
        return aborted

    # -- the lock

    def lock(
        self, path: str, ttl: float = LEASE_TTL_S, owns: Callable[[str], bool] | None = None
    ) -> LeaseLock:
        self._writable(path)
        return LeaseLock(self, path, ttl, owns)

    def lock_holder(self, path: str) -> str | None:
        """Who holds the lease at ``path`` ("PID on HOST", as local storage gives "PID"), or
        None when nobody does or the lease is stale."""
        lease, _ = self.read_lease(path)
        if lease is None or lease_is_stale(lease):
            return None
        return f"{lease.get('pid', '?')} on {lease.get('host', '?')}"


def _etag_of(response: Any) -> str | None:
    """The fingerprint of what a PUT just wrote, from its response (S3: the ETag header)."""
    etag = response.get("ETag") if isinstance(response, dict) else None
    return f"etag:{str(etag).strip(chr(34))}" if etag else None


def _mtime_ns(d: dict[str, Any]) -> int | None:
    for name in ("LastModified", "last_modified", "mtime", "updated", "created", "time"):
        v = d.get(name)
        if v is None:
            continue
        if isinstance(v, dt.datetime):
            if v.tzinfo is None:
                v = v.replace(tzinfo=dt.timezone.utc)
            return int(v.timestamp() * 1e9)
        if isinstance(v, (int, float)):
            return int(v * 1e9)
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                return int(dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1e9)
    return None


__all__ = [
    "FsspecStorage",
    "LeaseLock",
    "parse_storage_options",
    "redact",
    "redact_url",
    "scheme_of",
]
