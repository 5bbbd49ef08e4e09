"""The local file system: temp file + fsync + rename for commits, flock for the lock."""

from __future__ import annotations

import errno
import fcntl
import glob as globbing
import os
import stat
import tempfile
from collections.abc import Callable
from typing import IO

from ..errors import OutputInUse
from .base import FileInfo

TMP_SUFFIX = ".tmp"


def temp_name(path: str) -> str:
    """Hidden (dot-prefixed) so pyarrow.dataset, DuckDB globs and Polars skip it."""
    head, tail = os.path.split(os.fspath(path))
    return os.path.join(head, f".{tail}{TMP_SUFFIX}")


class LocalPendingFile:
    """A file written under its hidden temp name, renamed into place on commit."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        self.temp = temp_name(self.path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.stream: IO[bytes] = open(self.temp, "wb")

    def commit(self) -> None:
        if not os.path.exists(self.temp):
            # Someone removed our temp file while we wrote it: publishing nothing would
            # silently lose its rows, so this is an error, never an empty success.
            raise FileNotFoundError(2, "temp file vanished before commit", self.temp)
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self.temp, self.path)
        _fsync_dir(os.path.dirname(self.path) or ".")

    def discard(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass  # discarding after a failure must not fail again
        _remove(self.temp)


class LocalLock:
    """An flock on a lock file: the kernel drops it when the holder dies, even by kill -9."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputInUse(
                f"OUTPUT {os.path.dirname(path)} is in use by another run (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self, remove: bool = False) -> None:
        if self.fd is None:
            return
        if remove:
            try:
                _remove(self.path)  # while still held: no other run can be holding it
            except OSError:
                pass  # OUTPUT read-only now: a stale lock file is harmless, the flock goes anyway
        os.close(self.fd)  # closing drops the flock
        self.fd = None


class LocalStorage:
    """Paths on this machine's file systems."""

    def info(self, path: str) -> FileInfo | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return FileInfo(st.st_size, st.st_mtime_ns, os.path.isdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def list_dir(self, path: str) -> list[str]:
        """Names in a directory, sorted; none when it does not exist."""
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk_files(self, path: str) -> list[str]:
        """Every file below a directory, sorted by path."""
        return sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)

    def glob(self, pattern: str) -> list[str]:
        return sorted(p for p in globbing.glob(pattern, recursive=True) if os.path.isfile(p))

    def real_path(self, path: str) -> str:
        """The absolute path with every symlink resolved (for telling whether two paths meet)."""
        return os.path.realpath(path)

    def rereadable(self, path: str) -> bool:
        """Whether opening ``path`` twice reads the same bytes twice (not a FIFO or a device)."""
        try:
            return stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            return False

    def file_problem(self, path: str) -> str | None:
        """Why ``path`` cannot be read as an input file, or None when it can (a regular
        file, a FIFO or a character device such as ``/dev/stdin`` or ``<(...)``)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "dangling symlink" if os.path.islink(path) else "not found"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symlink loop"
            return f"cannot be read ({exc.strerror or exc})"
        if stat.S_ISDIR(st.st_mode):
            return "is a directory"
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            return "not a regular file"
        return None

    def open_read(self, path: str) -> IO[bytes]:
        return open(path, "rb")

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def create(self, path: str) -> LocalPendingFile:
        return LocalPendingFile(path)

    def write_atomic(self, path: str, data: bytes) -> None:
        pending = self.create(path)
        try:
            pending.stream.write(data)
            pending.commit()
        except BaseException:
            pending.discard()
            raise

    def remove(self, path: str) -> None:
        _remove(path)

    def remove_empty_dir(self, path: str) -> None:
        try:
            os.rmdir(path)
        except OSError:
            pass  # not empty, or already gone: either way nothing of ours is lost

    def make_dirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def lock(self, path: str, owns: Callable[[str], bool] | None = None) -> LocalLock:
        return LocalLock(os.fspath(path))  # ``owns``: a store's takeover clean-up; a flock needs none

    def lock_holder(self, path: str) -> str | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None  # no lock file: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)  # closing drops the shared lock, if it was taken
        return None

    def read_range(self, path: str, start: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(start, os.SEEK_END if start < 0 else os.SEEK_SET)
            return f.read(length)

    def scratch(self) -> IO[bytes]:
        return tempfile.TemporaryFile()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
