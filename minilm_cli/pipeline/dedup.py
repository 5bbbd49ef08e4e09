"""Each distinct text through the model once (issue: incremental runs).

Two halves that see the same rows in the same order and so keep identical state:

  ``DedupPlanner``   a chunk stage on the reader thread: for each row of a chunk, "embed it"
                     (a new text) or "copy it" (a text met earlier in this chunk, or in an
                     earlier chunk of the same shard); only the new texts are tokenized.
  ``DedupExpander``  after the model, on the main thread: every row gets its vector back, a
                     copy of its first occurrence's bytes.

Both remember at most ``capacity`` texts, evicting the least recently used in the same order,
and both forget everything at a shard boundary: a resumed run starts at a shard boundary with
nothing remembered, exactly as the first run did there, so it forms the same batches and
writes the same bytes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..batching import Chunk

CAPACITY = 16_384  # distinct texts remembered per shard: ~25 MB of float32 vectors at dim 384


def text_key(text: str) -> bytes:
    """16 bytes that stand for a text (the exact code points, hashed)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass
class DedupPlan:
    """Which rows of a chunk go through the model, and where every row's vector comes from."""

    keys: list[bytes]  # per row
    unique_rows: list[int]  # rows whose text is embedded, in row order

    @property
    def texts_to_embed(self) -> int:
        return len(self.unique_rows)


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


class DedupPlanner:
    """The reader-thread half: a chunk stage placed before tokenizing."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.memory = _Memory(capacity)

    def __call__(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        for chunk in chunks:
            keys = [text_key(t) for t in chunk.texts]
            unique = [row for row, key in enumerate(keys) if not self.memory.see(key)]
            chunk.dedup = DedupPlan(keys, unique)
            if chunk.shard_end:
                self.memory.forget()
            yield chunk


class DedupExpander:
    """The main-thread half: vectors of the embedded rows in, one vector per row out."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.memory = _Memory(capacity)

    def __call__(self, chunk: Chunk, embedded: np.ndarray) -> np.ndarray:
        plan: DedupPlan | None = getattr(chunk, "dedup", None)
        if plan is None:
            return embedded
        out = np.empty((len(chunk), embedded.shape[1]), dtype=embedded.dtype)
        new = iter(range(len(plan.unique_rows)))
        for row, key in enumerate(plan.keys):
            if key in self.memory.known:
                out[row] = self.memory.known[key]
                self.memory.see(key)
            else:
                out[row] = embedded[next(new)]
                self.memory.see(key, out[row].copy())
        if chunk.shard_end:
            self.memory.forget()
        return out
