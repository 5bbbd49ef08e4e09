"""Byte streams under the readers: decompression, byte ranges, stdin, and line splitting.

Every open goes through ``minilm_cli.storage``; nothing here seeks a stream it did not
open itself (FIFOs and ``<(...)`` stream), and nothing holds more than a block.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys
from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa

from ..storage import open_sequential, storage_for
from .rows import InputFile

READ_BLOCK_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"
_STDIN: list[Any] = []  # the one peekable stdin of this process (schema sampling peeks at it)


def open_binary(f: InputFile, prefetch: bool = False) -> IO[bytes]:
    """The input's bytes, decompressed. ``prefetch``: the whole file is read front to back,
    so on an object store blocks are fetched ahead in a thread (``open_sequential``)."""
    if f.is_stdin:
        return stdin_stream()
    raw = open_sequential(f.path) if prefetch else storage_for(f.path).open_read(f.path)
    if f.compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if f.compression == "bz2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if f.compression == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    if f.compression == "zstd":
        return pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd")  # type: ignore[return-value]
    return raw


def stdin_stream() -> Any:
    """sys.stdin as one buffered stream that can be peeked at without losing bytes."""
    stream = sys.stdin.buffer
    if _STDIN and _STDIN[0][0] is stream:
        return _STDIN[0][1]
    peekable = stream if hasattr(stream, "peek") else io.BufferedReader(stream)  # type: ignore[arg-type]
    _STDIN[:] = [(stream, peekable)]
    return peekable


def peek_stdin(limit: int = 65536) -> bytes:
    stream = stdin_stream()
    try:
        return bytes(stream.peek(limit)[:limit])
    except (AttributeError, OSError, ValueError):
        return b""


def stdin_format() -> str:
    """The format stdin is read in without --input-format: ``jsonl`` when its first byte past
    a UTF-8 BOM and any whitespace (blank lines, indentation) opens a JSON object, else ``txt``."""
    head = peek_stdin(4096)
    if head.startswith(BOM):
        head = head[len(BOM) :]
    return "jsonl" if head.lstrip().startswith(b"{") else "txt"


class ByteRange(io.RawIOBase):
    """The lines of a file whose first byte lies in [start, end), as a readable stream; with
    ``lines=False``, exactly the bytes [start, end) (the caller found the record starts)."""

    def __init__(self, path: str, start: int, end: int, lines: bool = True) -> None:
        self.path = path
        self.fh = storage_for(path).open_read(path)
        if start > 0:
            self.fh.seek(start - 1 if lines else start)
            if lines:
                self.fh.readline()  # on to the first line that starts at or after ``start``
        self.begin = self.fh.tell()
        self.end = end
        self.lines = lines
        self.done = False

    def lines_before(self) -> int:
        """Newlines before the range: its first line's number is this plus one."""
        count, left = 0, self.begin
        with storage_for(self.path).open_read(self.path) as f:
            while left > 0:
                block = f.read(min(READ_BLOCK_BYTES, left))
                count += block.count(b"\n")
                left -= len(block)
        return count

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        position = self.fh.tell()
        if self.done or position >= self.end:
            self.done = True
            return b""
        want = self.end - position if size is None or size < 0 else min(size, self.end - position)
        data = self.fh.read(want)
        if self.fh.tell() >= self.end or not data:
            if self.lines and data and not data.endswith(b"\n"):
                data += self.fh.readline()  # the last line started inside the range: finish it
            self.done = True
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.fh.close()
        super().close()


def iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Split a byte stream into lines without their ending, reading 1 MiB at a time.

    Universal newlines: ``\\n``, ``\\r\\n`` and a lone ``\\r`` each end a line."""
    rest = b""
    first = True
    while True:
        block = stream.read(READ_BLOCK_BYTES)
        if not block:
            break
        if first and block.startswith(BOM):
            block = block[3:]  # a UTF-8 byte order mark is not part of the first line
        first = False
        data = rest + block
        lines = data.splitlines(keepends=True)
        rest = lines.pop() if lines else b""
        if rest.endswith(b"\r\n") or (rest.endswith(b"\n")):
            lines.append(rest)
            rest = b""  # complete; a lone trailing \r may still be the first half of \r\n
        for line in lines:
            yield line.rstrip(b"\r\n")
    if rest:
        yield rest.rstrip(b"\r\n")
