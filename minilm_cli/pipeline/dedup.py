"""Each distinct text through the model once, and texts an earlier output already holds not at all.

Two halves that see the same rows in the same order and so keep identical state:

  ``RowPlanner``    a chunk stage on the reader thread: each row's text key; then for each row
                    "copy" (a text met earlier in this chunk, or in an earlier chunk of the same
                    shard), "reuse" (a text found in a --reuse output: its stored vector), or
                    "embed"; only the texts to embed are tokenized.
  ``RowExpander``   after the model, on the main thread: every row gets its vector, a byte copy
                    of its first occurrence's (or of the earlier output's).

Both remember at most ``capacity`` texts, evicting the least recently used in the same order,
and both forget everything at a shard boundary: a resumed run starts at a shard boundary with
nothing remembered, exactly as the first run did there, so it forms the same batches and
writes the same bytes. ``capacity`` 0 is --no-dedup.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..batching import Chunk
from ..output.keyindex import DEDUP_CAPACITY

CAPACITY = DEDUP_CAPACITY  # distinct texts remembered per shard: ~25 MB of float32 vectors at dim 384


def text_keys(texts: list[str]) -> np.ndarray:
    """rows x 2 uint64: 16 bytes of blake2b over each text's exact code points."""
    digests = b"".join(
        hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts
    )
    return np.frombuffer(digests, dtype="<u8").reshape(-1, 2)


def token_keys(rows: list[np.ndarray]) -> np.ndarray:
    """rows x 2 uint64 over token ids (windows: the model sees ids, not a substring)."""
    digests = b"".join(hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows)
    return np.frombuffer(digests, dtype="<u8").reshape(-1, 2)


@dataclass
class DedupPlan:
    """Which rows of a chunk go through the model, and where every row's vector comes from."""

    unique_rows: list[int]  # rows whose text is embedded, in row order
    reused: dict[int, np.ndarray] = field(default_factory=dict)  # row -> vector of an earlier output
    reused_rows: int = 0  # rows whose vector is an earlier output's (looked up, or a copy of one)


class _Memory:
    """The LRU of keys both halves keep; ``see`` says whether a key was already known."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.known: OrderedDict[bytes, object] = OrderedDict()

    def see(self, key: bytes, value: object = None) -> bool:
        if key in self.known:
            self.known.move_to_end(key)
            return True
        self.known[key] = value
        if len(self.known) > self.capacity:
            self.known.popitem(last=False)
        return False

    def forget(self) -> None:
        self.known.clear()


class RowPlanner:
    """The reader-thread half: a chunk stage placed before tokenizing."""

    def __init__(self, capacity: int = CAPACITY, reuse: object | None = None) -> None:
        self.memory = _Memory(capacity)
        self.reuse = reuse  # pipeline.reuse.ReuseIndex, or None

    def __call__(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        for chunk in chunks:
            yield self.plan(chunk, text_keys(chunk.texts))

    def plan(self, chunk: Chunk, keys: np.ndarray) -> Chunk:
        """Decide, row by row, copy, reuse or embed; ``keys`` stand for what the model would see."""
        chunk.keys = keys
        found = self.reuse.lookup(keys) if self.reuse is not None else {}
        plan = DedupPlan([])
        for row, key in enumerate(keys):
            k = key.tobytes()
            if k in self.memory.known:
                plan.reused_rows += bool(self.memory.known[k])  # a copy: of a reused row, or not
                self.memory.see(k)
                continue
            self.memory.see(k, row in found)
            if row in found:
                plan.reused[row] = found[row]
                plan.reused_rows += 1
            else:
                plan.unique_rows.append(row)
        chunk.dedup = plan
        if chunk.shard_end:
            self.memory.forget()
        return chunk


class RowExpander:
    """The main-thread half: vectors of the embedded rows in, one vector per row out."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.memory = _Memory(capacity)

    def __call__(self, chunk: Chunk, embedded: np.ndarray) -> np.ndarray:
        plan: DedupPlan | None = chunk.dedup
        if plan is None or chunk.keys is None:
            return embedded
        dim = embedded.shape[1] if len(embedded) else _dim(plan, embedded)
        out = np.empty((len(chunk), dim), dtype=np.float32)
        new = iter(range(len(plan.unique_rows)))
        for row, key in enumerate(chunk.keys):
            k = key.tobytes()
            if k in self.memory.known:
                out[row] = self.memory.known[k]
                self.memory.see(k)
                continue
            out[row] = plan.reused[row] if row in plan.reused else embedded[next(new)]
            self.memory.see(k, out[row].copy())
        if chunk.shard_end:
            self.memory.forget()
        return out


class TruncatedRows:
    """How many rows of a chunk had their text truncated, copies and reused rows included:
    `truncated` describes the rows written, whatever their vector's source. A tokenized row
    says so itself; a copy's text is its first occurrence's, remembered by key for the shard
    (as the planner remembers texts); a reused row, or a copy whose first occurrence was
    forgotten, is tokenized just to ask (``overflows``, on a bounded prefix of the text)."""

    def __init__(self, capacity: int, overflows: Callable[[list[str]], list[bool]]) -> None:
        self.memory = _Memory(capacity)
        self.overflows = overflows

    def count(self, chunk: Chunk) -> int:
        plan: DedupPlan = chunk.dedup
        assert chunk.keys is not None
        tokenized = dict(zip(plan.unique_rows, chunk.tokens.overflowed if chunk.tokens else []))
        flags = [False] * len(chunk)
        ask: dict[bytes, list[int]] = {}  # key -> its rows, for texts nobody here has tokenized
        for row, key in enumerate(chunk.keys):
            k = key.tobytes()
            if row in tokenized:
                flags[row] = tokenized[row]
            elif k in self.memory.known:
                flags[row] = bool(self.memory.known[k])
            else:
                ask.setdefault(k, []).append(row)
                continue
            self.memory.see(k, flags[row])
        if ask:
            answers = self.overflows([chunk.texts[rows[0]] for rows in ask.values()])
            for (k, rows), flag in zip(ask.items(), answers):
                for row in rows:
                    flags[row] = flag
                self.memory.see(k, flag)
        if chunk.shard_end:
            self.memory.forget()
        return sum(flags)


def _dim(plan: DedupPlan, embedded: np.ndarray) -> int:
    if plan.reused:
        return len(next(iter(plan.reused.values())))
    return embedded.shape[1]
