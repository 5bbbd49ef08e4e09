"""Where the records of a CSV (or quoted TSV) start, in bytes, as the whole-file reader sees them.

A job array cuts an uncompressed file into byte ranges, and a quoted cell may hold newlines,
so a line start is not a record start. ``record_starts`` scans the file from its first byte
with the rules of Python's ``csv`` module as ``delimited.py`` uses it (excel dialect,
``strict=False``): a quote opens a quoted field only at a field start; inside, ``""`` is a
quote and the first lone quote closes it; outside, ``\\r\\n``, ``\\r`` or ``\\n`` ends the
record. These bytes are ASCII, so they mean the same in UTF-8 whatever the other bytes are.
Every part of an array finds the same starts, so their records tile the file exactly once.

The scan is block by block (bounded memory). Line breaks inside quoted fields are found by
quote parity with numpy where every quote of the block opens a field at a field start or
closes one before a delimiter, a line end or another quote (the usual file: pyarrow, pandas
and csv.writer write nothing else), else with one ``bytes.find`` per quote; the records of a
block are then counted with ``bytes.count`` and walked one by one only in the block that
holds a wanted offset. About 20 MB/s on a fully quoted file, 50 MB/s without quotes (a
loaded 2-core machine; the csv module parses the same quoted file at about 8 MB/s).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..storage import storage_for
from .streams import BOM, READ_BLOCK_BYTES

_TERMINATOR = re.compile(rb"\r\n|\r|\n")
_BLANK_AFTER = re.compile(rb"\n(?=\n)")  # a terminator followed by a blank line


@dataclass(frozen=True)
class Start:
    """The first record that starts at or after a byte offset."""

    offset: int  # its first byte (the file's size when no record starts there or later)
    rows_before: int  # non-blank records before it, the header included (as the reader numbers rows)


def record_starts(path: str, targets: list[int], delimiter: str, quoting: bool, size: int) -> list[Start]:
    """For each offset in ``targets`` (ascending), the first record starting at or after it."""
    scanner = _Scanner(delimiter.encode("ascii"), quoting, sorted(targets))
    with storage_for(path).open_read(path) as fh:
        held = b""
        first = True
        while scanner.pending:
            block = fh.read(READ_BLOCK_BYTES)
            data = held + block
            if first:
                first = False
                while block and len(data) < len(BOM):  # a short read: enough to see a BOM
                    block = fh.read(READ_BLOCK_BYTES)
                    data += block
                if data.startswith(BOM):  # not part of the header's first field
                    scanner.base, data = len(BOM), data[len(BOM) :]
            if not block:
                scanner.feed(data)
                break
            # Hold back a trailing quote or \r: the next byte decides what it means ("" or \r\n).
            cut = len(data.rstrip(b'"\r'))
            held = data[cut:]
            if cut:
                scanner.feed(data[:cut])
    return scanner.finish(size)


class _Scanner:
    def __init__(self, delimiter: bytes, quoting: bool, targets: list[int]) -> None:
        self.quoting = quoting
        self.field_ends = set(delimiter + b"\r\n")  # a quote after one of these opens a field
        self.ends_or_quote = np.frombuffer(delimiter + b'\r\n"', np.uint8)
        self.targets = targets
        self.found: list[Start] = []
        self.base = 0  # the file's offset of the next byte fed
        self.inside = False  # inside a quoted field
        self.field_start = True  # the next byte starts a field
        self.at_start = True  # the next byte starts a record
        self.header = True  # the next record is the file's first: it starts at byte 0, BOM or not
        self.rows = 0

    @property
    def pending(self) -> bool:
        return len(self.found) < len(self.targets)

    def feed(self, data: bytes) -> None:
        """The next bytes of the file; they never end between a quote or \\r and the byte after it."""
        if not data:
            return
        # One byte of context, so that a quote at the block's start sees what came before it;
        # buf[i] is the file's byte self.base + i - 1.
        buf = (b"\n" if self.field_start else b"x") + data
        outside = self._blank_quoted(buf) if self.quoting else buf
        self.field_start = not self.inside and buf[-1] in self.field_ends
        if self.pending and self.targets[len(self.found)] <= self.base + len(data):
            self._walk(outside)
        else:
            self._count(outside)
        self.base += len(data)

    def _blank_quoted(self, buf: bytes) -> bytes:
        """``buf`` with every line break inside a quoted field overwritten: what is left of
        \\r and \\n ends records."""
        fast = self._blank_by_parity(buf)
        return fast if fast is not None else self._blank_by_walking(buf)

    def _blank_by_parity(self, buf: bytes) -> bytes | None:
        """The usual block, at numpy speed: if every quote opens a field at a field start, or
        closes one just before a delimiter, a line end or another quote (``""``), then the quotes
        alternate open, close, open, ... and a byte is inside a quoted field exactly when an odd
        number of quotes (counting from outside) come before it. Else None (a quote inside an
        unquoted field is text, which parity cannot tell)."""
        arr = np.frombuffer(buf, np.uint8)
        quotes = np.flatnonzero(arr == 0x22)
        skew = 1 if self.inside else 0  # the block's first quote closes a field
        role = (np.arange(quotes.size) + skew) % 2
        openers, closers = quotes[role == 0], quotes[role == 1]
        if not np.isin(arr[openers - 1], self.ends_or_quote).all():
            return None
        after = closers[closers + 1 < arr.size] + 1  # a quote at the very end (EOF) closes
        if not np.isin(arr[after], self.ends_or_quote).all():
            return None
        breaks = np.flatnonzero((arr == 0x0A) | (arr == 0x0D))
        breaks = breaks[breaks > 0]  # not the context byte
        inside = (np.searchsorted(quotes, breaks) + skew) % 2 == 1
        self.inside = (quotes.size + skew) % 2 == 1
        if not inside.any():
            return buf
        blanked = arr.copy()
        blanked[breaks[inside]] = ord("q")
        return blanked.tobytes()

    def _blank_by_walking(self, buf: bytes) -> bytes:
        """Any block, one ``find`` per quote; quoted fields without line breaks stay as they are."""
        spans: list[tuple[int, int]] = []
        pos, end, find = 1, len(buf), buf.find
        while pos < end:
            if self.inside:
                q = find(b'"', pos)
                while q != -1 and q + 1 < end and buf[q + 1] == 0x22:  # "" is a quote
                    q = find(b'"', q + 2)
                close = end if q == -1 else q + 1
                if buf.find(b"\n", pos, close) != -1 or buf.find(b"\r", pos, close) != -1:
                    spans.append((pos, close))
                if q == -1:
                    break  # the quoted field goes on into the next block
                pos, self.inside = close, False
            q = find(b'"', pos)
            while q != -1 and buf[q - 1] not in self.field_ends:  # inside an unquoted field: text
                q = find(b'"', q + 1)
            if q == -1:
                break
            pos, self.inside = q + 1, True
        if not spans:
            return buf
        blanked = bytearray(buf)
        for lo, hi in spans:
            blanked[lo:hi] = b"q" * (hi - lo)
        return bytes(blanked)

    def _count(self, buf: bytes) -> None:
        """No target in this block: count the non-blank records that start in it."""
        lines = buf[1:].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self.at_start:
            self._candidate(self.base, lines[:1])
        ends_open = lines.endswith(b"\n")  # the next record starts after this block
        self.rows += lines.count(b"\n") - len(_BLANK_AFTER.findall(lines)) - ends_open
        self.at_start = ends_open

    def _walk(self, buf: bytes) -> None:
        """A target lies in this block: every record start, in order."""
        offset, end = self.base - 1, len(buf)
        if self.at_start:
            self._candidate(offset + 1, buf[1:2])
        for m in _TERMINATOR.finditer(buf, 1):
            p = m.end()
            if p < end:
                self._candidate(offset + p, buf[p : p + 1])
        self.at_start = buf[-1] in (0x0A, 0x0D)

    def _candidate(self, offset: int, first: bytes) -> None:
        """A record starts at ``offset``; ``first`` is its first byte (a terminator: a blank line)."""
        if self.header:
            offset, self.header = 0, False
        while self.pending and self.targets[len(self.found)] <= offset:
            self.found.append(Start(offset, self.rows))
        if first not in (b"\r", b"\n"):
            self.rows += 1
        self.at_start = False

    def finish(self, size: int) -> list[Start]:
        """The targets that no record starts at or after: the end of the file."""
        while self.pending:
            self.found.append(Start(size, self.rows))
        return self.found
