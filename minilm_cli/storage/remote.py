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
import io
import json
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

from ..errors import InputError, MinilmError, OutputConflict
from .base import FileInfo

#: Which package serves each scheme, and the extra (or package) that installs it.
EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "pip install 'minilm-cli[s3]'"),
    "s3a": ("s3fs", "pip install 'minilm-cli[s3]'"),
    "gs": ("gcsfs", "pip install 'minilm-cli[gcs]'"),
    "gcs": ("gcsfs", "pip install 'minilm-cli[gcs]'"),
    "hf": ("huggingface_hub", "pip install 'minilm-cli[hf]'"),
    "az": ("adlfs", "pip install adlfs"),
    "abfs": ("adlfs", "pip install adlfs"),
    "abfss": ("adlfs", "pip install adlfs"),
    "http": ("aiohttp", "pip install aiohttp"),
    "https": ("aiohttp", "pip install aiohttp"),
}
READ_ONLY = {"http", "https"}
S3_SCHEMES = {"s3", "s3a"}
PART_SIZE = 8 * 2**20  # S3 multipart part size: memory held per open shard
READ_BLOCK = 4 * 2**20  # read-ahead block for open_read
SPOOL_MEMORY = 16 * 2**20  # non-S3 uploads: kept in memory up to this, then on local disk
LEASE_TTL_S = 60.0

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SENSITIVE_NAME = re.compile(r"(sig|token|key|secret|pass|credential|auth|session)", re.I)
_KEY_ID = re.compile(r"\b(AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)


def scheme_of(location: str | os.PathLike[str] | None) -> str | None:
    """The URL scheme (lower case), or None for a plain path."""
    if location is None:
        return None
    m = _SCHEME.match(os.fspath(location))
    return m.group(1).lower() if m else None


# -- secrets


def redact_url(url: str) -> str:
    """``url`` without user info and with credential-like query values replaced by ***."""
    url = os.fspath(url)
    m = _SCHEME.match(url)
    if not m:
        return url
    rest = url[m.end() :]
    before_query = rest.split("?", 1)[0]
    userinfo, at, _ = before_query.rpartition("@")
    # user:password@host (a password may hold an unencoded '/'); hf://repo@revision is no user info
    if at and (":" in userinfo or "/" not in userinfo):
        rest = "***@" + rest[len(userinfo) + 1 :]
    netloc, slash, path = rest.partition("/")
    path, q, query = path.partition("?")
    if q:
        parts = []
        for item in query.split("&"):
            name, eq, _ = item.partition("=")
            parts.append(f"{name}=***" if eq and _SENSITIVE_NAME.search(name) else item)
        query = "&".join(parts)
    return f"{m.group(0)}{netloc}{slash}{path}{q}{query}"


def _secret_values(options: dict[str, Any] | None) -> list[str]:
    values: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, str) and len(v) >= 4:
            values.append(v)

    walk(options or {})
    values += [os.environ[n] for n in _SECRET_ENV if len(os.environ.get(n, "")) >= 4]
    return sorted(set(values), key=len, reverse=True)


def redact(text: str, options: dict[str, Any] | None = None) -> str:
    """``text`` with every storage-option value, secret environment value, URL credential
    and AWS key id replaced by ***."""
    for value in _secret_values(options):
        text = text.replace(value, "***")
    text = _KEY_ID.sub("***", text)
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), text)


# -- options


def parse_storage_options(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """``--storage-option KEY=VALUE`` (repeatable) as fsspec keyword arguments.

    true/false become booleans, integers and floats numbers, everything else stays text.
    A dotted key nests: ``client_kwargs.region_name=eu-west-1``. Errors name the key,
    never the value (it may be a secret).
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            shown = key if eq else "(no '=')"
            raise InputError(f"--storage-option expects KEY=VALUE, got {shown!s}")
        target = out
        *parents, leaf = key.split(".")
        for p in parents:
            nested = target.setdefault(p, {})
            if not isinstance(nested, dict):
                raise InputError(f"--storage-option {key}: {p} is given both as a value and as a group")
            target = nested
        target[leaf] = _parse_value(raw)
    return out


def _parse_value(raw: str) -> Any:
    low = raw.strip().lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


# -- errors


def _error_code(exc: BaseException) -> str | None:
    """The store's error code (``NoSuchBucket``, ``AccessDenied``...) behind ``exc``, if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
        e = e.__cause__ or e.__context__
    return None


_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "403",
}


def translate(exc: BaseException, url: str, options: dict[str, Any] | None = None) -> BaseException:
    """One line the CLI can print for a store error: InputError (exit 2) for what the user must
    fix (credentials, bucket, missing extra), MinilmError (exit 1) for the store failing.
    FileNotFoundError for a missing object passes through (callers decide what that means)."""
    if isinstance(exc, MinilmError):
        return exc
    where = redact_url(url)
    code = _error_code(exc)
    if code in _CREDENTIAL_CODES or (code is None and isinstance(exc, PermissionError)):
        return InputError(
            f"access denied to {where}: check the credentials (environment, profile or "
            f"--storage-option) [{code or 'PermissionError'}]"
        )
    if code == "NoSuchBucket":
        return InputError(f"bucket not found: {_bucket_url(url)}")
    if code is None and _chain_has(exc, ("NoCredentialsError", "PartialCredentialsError")):
        return InputError(f"no credentials found for {where}: set them in the environment or a profile")
    if isinstance(exc, FileNotFoundError):
        return exc
    detail = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, options)
    return MinilmError(f"storage error on {where}: {type(exc).__name__}: {detail}")


def _chain_has(exc: BaseException, names: tuple[str, ...]) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in names:
            return True
        e = e.__cause__ or e.__context__
    return False


def _bucket_url(url: str) -> str:
    m = _SCHEME.match(url)
    if not m:
        return url
    return m.group(0) + url[m.end() :].split("/", 1)[0]


# -- the file system


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


class UploadStream(io.RawIOBase):
    """The write side of a multipart upload. Store failures during ``write`` (a part going up)
    surface as the same one-line errors as everywhere else. Closing uploads the last part but
    completes nothing: only ``FsspecPendingFile.commit`` makes the object appear."""

    def __init__(self, storage: FsspecStorage, path: str, f: Any) -> None:
        super().__init__()
        self.storage, self.path, self.f = storage, path, f

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        with self.storage.errors(self.path):
            return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        if not self.f.closed:
            with self.storage.errors(self.path):
                self.f.flush()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self.f.closed:
                with self.storage.errors(self.path):
                    self.f.close()  # the last part goes up; without autocommit nothing appears
        finally:
            super().close()

    def __del__(self) -> None:
        """Garbage-collected without commit or discard (a run that failed, or is exiting):
        upload nothing. Closing here would push the buffered part, and with the store down
        that is minutes of retries after the error line, at exit."""
        with contextlib.suppress(Exception):
            self.f.closed = True  # the S3File's own finaliser then does nothing either
        with contextlib.suppress(Exception):
            io.RawIOBase.close(self)


class FsspecPendingFile:
    """S3: a multipart upload to the final key, completed on commit, aborted on discard."""

    def __init__(self, storage: FsspecStorage, path: str) -> None:
        self.path = path
        self.storage = storage
        with storage.errors(path):
            self.upload: Any = storage.fs.open(
                storage.key(path), "wb", autocommit=False, block_size=PART_SIZE
            )
        self.stream: IO[bytes] = UploadStream(storage, path, self.upload)  # type: ignore[assignment]
        self.done = False

    def commit(self) -> None:
        if self.done:
            raise ValueError(f"{self.path}: already committed or discarded")
        self.stream.close()
        with self.storage.errors(self.path):
            self.upload.commit()  # completes the multipart upload: the whole object appears now
        self.done = True

    def discard(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.upload.discard()  # aborts the multipart upload: no object, no pending parts
        except Exception:  # noqa: BLE001 - discarding after a failure must not fail again
            pass
        self.upload.closed = True  # its buffer is gone: closing again must not try to upload
        with contextlib.suppress(Exception):
            self.stream.close()


class SpooledPendingFile:
    """Other stores: bytes spooled locally, uploaded in one call on commit."""

    def __init__(self, storage: FsspecStorage, path: str) -> None:
        self.path = path
        self.storage = storage
        self.stream: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # type: ignore[assignment]
        self.done = False

    def commit(self) -> None:
        if self.done:
            raise ValueError(f"{self.path}: already committed or discarded")
        spool: Any = self.stream
        spool.flush()
        spool.seek(0)
        with self.storage.errors(self.path):
            with self.storage.fs.open(self.storage.key(self.path), "wb") as out:
                while chunk := spool.read(PART_SIZE):
                    out.write(chunk)
        spool.close()
        self.done = True

    def discard(self) -> None:
        self.done = True
        with contextlib.suppress(Exception):
            self.stream.close()


class LeaseLock:
    """A lease object: conditional create, heartbeat thread, stale takeover. See the module
    docstring for which store gets which guarantee."""

    def __init__(self, storage: FsspecStorage, path: str, ttl: float = LEASE_TTL_S) -> None:
        self.storage = storage
        self.path = path
        self.ttl = ttl
        self.run_id = uuid.uuid4().hex
        self.lost = False
        self.etag: str | None = None
        self._stop = threading.Event()
        self._beating = threading.Lock()  # one conditional refresh at a time (thread or caller)
        self._thread: threading.Thread | None = None
        self._acquire()
        self._thread = threading.Thread(target=self._beat, name="minilm-lease", daemon=True)
        self._thread.start()

    def _body(self) -> bytes:
        doc = {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
            "ttl": self.ttl,
        }
        return json.dumps(doc, sort_keys=True).encode()

    def _acquire(self) -> None:
        st = self.storage
        for _ in range(3):
            created = st.put_if_absent(self.path, self._body())
            if created:
                self.etag = created
                if st.native_conditional or self._still_ours():
                    return
                break
            lease, etag = st.read_lease(self.path)
            if lease is None:
                continue  # released between our put and our read: try again
            if not lease_is_stale(lease):
                raise OutputConflict(
                    f"OUTPUT {redact_url(_parent(self.path))} is in use by another run ({describe(lease)})"
                )
            replaced = st.put_if_match(self.path, self._body(), etag)
            if replaced:
                self.etag = replaced
                if st.native_conditional or self._still_ours():
                    # a dead run's unfinished multipart uploads under OUTPUT are ours to abort
                    st.abort_uploads(_parent(self.path))
                    return
                break
        raise OutputConflict(f"OUTPUT {redact_url(_parent(self.path))} is being taken by another run")

    def _still_ours(self) -> bool:
        lease, _ = self.storage.read_lease(self.path)
        return bool(lease) and lease.get("run_id") == self.run_id

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4) and not self.lost:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a missed beat is retried; the ttl allows several
                continue

    def refresh(self) -> None:
        """Beat now (the thread does every ttl / 4; a caller may before something long).
        Sets ``lost`` when another run has taken the lease over."""
        with self._beating:
            if self.lost or self._stop.is_set():
                return
            fingerprint = self.storage.put_if_match(self.path, self._body(), self.etag)
            if fingerprint:
                self.etag = fingerprint
            else:
                self.lost = True  # taken over after we stalled past the ttl

    def release(self, remove: bool = True) -> None:
        """Stop the heartbeat and delete the lease if it is still ours. A lease left behind
        would look held until it went stale, so it is removed whatever ``remove`` says."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            if not self.lost and self._still_ours():
                self.storage.remove(self.path)


def lease_is_stale(lease: dict[str, Any], now: float | None = None) -> bool:
    now = time.time() if now is None else now
    try:
        beat, ttl = float(lease["heartbeat"]), float(lease.get("ttl", LEASE_TTL_S))
    except (KeyError, TypeError, ValueError):
        return True  # not a lease we understand (a torn write cannot happen; a foreign file can)
    if now - beat > ttl:
        return True
    if lease.get("host") == socket.gethostname():
        pid = lease.get("pid")
        if isinstance(pid, int) and pid > 0 and pid != os.getpid():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True  # its holder died on this machine: no need to wait out the ttl
            except PermissionError:
                return False
    return False


def describe(lease: dict[str, Any]) -> str:
    return f"pid {lease.get('pid', '?')} on {lease.get('host', '?')}"


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


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
            if _error_code(exc) in _LOST_RACE:
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
                if _error_code(exc) == "NoSuchBucket":
                    raise translate(exc, path, self.options) from None
                return None  # the lease is gone: it is not ours to refresh
            except Exception as exc:  # noqa: BLE001 - sorted by the store's error code
                if _error_code(exc) in _LOST_RACE:
                    return None  # 412: someone else's version is there now
                raise translate(exc, path, self.options) from None
        guard = _MEMORY_MUTEX if self.scheme == "memory" else contextlib.nullcontext()
        with guard:
            if self.etag(path) != fingerprint:
                return None
            self.write_atomic(path, data)
            return self.etag(path)

    def abort_uploads(self, prefix: str) -> int:
        """S3: abort the incomplete multipart uploads under ``prefix`` (a killed run's shard
        going up: invisible, but stored and billed until aborted). Only called by a run that
        has just taken over a dead run's lease, so none of them is a live writer's."""
        if not self.is_s3:
            return 0
        bucket, _, key = self.key(prefix).partition("/")
        key = key.rstrip("/") + "/"
        aborted = 0
        with contextlib.suppress(Exception):  # best effort: the shard objects never appeared
            listed = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
            for upload in listed.get("Uploads", []):
                self.fs.call_s3(
                    "abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted += 1
        return aborted

    # -- the lock

    def lock(self, path: str, ttl: float = LEASE_TTL_S) -> LeaseLock:
        self._writable(path)
        return LeaseLock(self, path, ttl)

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
