"""Writing an object whole: an S3 multipart upload completed on commit, or a spool uploaded at once."""

from __future__ import annotations

import contextlib
import io
import tempfile
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .remote import FsspecStorage

PART_SIZE = 8 * 2**20  # S3 multipart part size: memory held per open shard
SPOOL_MEMORY = 16 * 2**20  # non-S3 uploads: kept in memory up to this, then on local disk


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
