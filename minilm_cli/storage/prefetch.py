"""Read-ahead for sequential streams: a thread keeps up to ``depth`` blocks in flight so a
store with 50 ms per request does not stall the model. Memory is bounded: at most
``depth + 1`` blocks of ``block_size`` bytes per open stream.

For text formats (CSV/TSV/JSONL/txt, plain or compressed), which are read front to back.
Parquet needs seeks; it reads through ``open_read`` (ranged reads with a read-ahead cache).
"""

from __future__ import annotations

import io
import queue
import threading
from typing import IO

_END = object()


class Prefetcher(io.RawIOBase):
    """A read-only, forward-only stream over ``raw`` whose blocks are fetched ahead of use."""

    def __init__(self, raw: IO[bytes], block_size: int = 4 * 2**20, depth: int = 4) -> None:
        super().__init__()
        self.raw = raw
        self.block_size = block_size
        self.blocks: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.pending = memoryview(b"")
        self.position = 0
        self.error: BaseException | None = None
        self.done = False
        self.thread = threading.Thread(target=self._fill, name="minilm-prefetch", daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        try:
            while not self.stop.is_set():
                block = self.raw.read(self.block_size)
                if not block:
                    break
                while not self.stop.is_set():
                    try:
                        self.blocks.put(block, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
            self.error = exc
        finally:
            while not self.stop.is_set():
                try:
                    self.blocks.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if not self.pending:
            if self.done:
                return 0
            item = self.blocks.get()
            if item is _END:
                self.done = True
                if self.error is not None:
                    raise self.error
                return 0
            self.pending = memoryview(item)  # type: ignore[arg-type]
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        self.position += n
        return n

    def close(self) -> None:
        if self.closed:
            return
        self.stop.set()
        self.thread.join(timeout=5)
        try:
            self.raw.close()
        finally:
            super().close()


def prefetching(raw: IO[bytes], block_size: int = 4 * 2**20, depth: int = 4) -> IO[bytes]:
    """``raw`` read ahead in a thread, buffered for small reads and ``readline``."""
    return io.BufferedReader(Prefetcher(raw, block_size, depth), buffer_size=min(block_size, 1 << 20))  # type: ignore[return-value]
