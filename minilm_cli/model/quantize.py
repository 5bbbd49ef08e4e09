"""The stored form of a vector: ``--truncate-dim`` and ``--dtype`` (float32, float16, int8, uint8,
binary, ubinary), applied to the model's float32 vectors just before they are written.

The formulas are sentence-transformers' ``quantize_embeddings``, reproduced exactly, so an
output can be compared with it bit for bit:

* int8 / uint8: per dimension, ``q = clip(floor((v - min) / step), 0, 255)`` with
  ``step = (max - min) / 255`` (1 where max == min), in float32; int8 stores ``q - 128``.
  ``ranges`` (2 x dim: the min row, then the max row) are fixed before the first shard
  (a streaming job cannot look at all its vectors first): calibrated on texts, or taken
  from an earlier output's manifest.
* binary / ubinary: ``np.packbits(v > 0)`` along each row, 8 dims a byte (the last byte
  padded with zero bits); binary stores the byte minus 128 as int8.

``--truncate-dim N`` keeps the first N dims and, when the model normalises, L2-normalises
them again (sentence-transformers' ``truncate_dim`` leaves them as cut; with
``normalize_embeddings=True`` it normalises after cutting, as here): cosine then stays a dot
product. It comes before quantization, so int8 ranges and binary bits are of the cut vector.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import PACKED_DTYPES, STORED_DTYPES, stored_dim

SCALAR = ("int8", "uint8")  # need per-dimension ranges


def truncate(vectors: np.ndarray, dim: int, normalize: bool) -> np.ndarray:
    """The first ``dim`` dims of each row, L2-normalised again when ``normalize`` (as torch's
    ``F.normalize``, eps 1e-12, which is what sentence-transformers and our pooling use)."""
    cut = np.ascontiguousarray(vectors[:, :dim], dtype=np.float32)
    if not normalize or not len(cut):
        return cut
    return torch.nn.functional.normalize(torch.from_numpy(cut), p=2, dim=1).numpy()


def quantize(vectors: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """float32 rows -> the stored array of ``dtype`` (see the module docstring)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if dtype in ("float32", "float16"):
        return vectors.astype(np.float16 if dtype == "float16" else np.float32, copy=False)
    if dtype in PACKED_DTYPES:
        bits = np.packbits(vectors > 0, axis=-1)
        return (bits - 128).astype(np.int8) if dtype == "binary" else bits
    if dtype not in SCALAR:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(STORED_DTYPES)}")
    if ranges is None:
        raise ValueError(f"dtype {dtype} needs ranges (2 x dim: min row, max row)")
    ranges = np.asarray(ranges, dtype=np.float32)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    q = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    return q.astype(np.uint8) if dtype == "uint8" else (q - 128).astype(np.int8)


class RangeTracker:
    """Per-dimension min and max over blocks of vectors, in bounded memory."""

    def __init__(self) -> None:
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        self.rows = 0

    def add(self, block: np.ndarray) -> None:
        if not len(block):
            return
        low, high = block.min(axis=0), block.max(axis=0)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)
        self.rows += len(block)

    def ranges(self) -> np.ndarray:
        assert self.low is not None and self.high is not None, "no vectors seen"
        return np.vstack((self.low, self.high)).astype(np.float32)


def calibrate(embedder: Any, blocks: Iterable[list[str]], dim: int, normalize: bool) -> RangeTracker:
    """The ranges of ``blocks`` of texts embedded by ``embedder`` (the run's own: same model,
    pooling, precision), truncated to ``dim`` as the run stores them."""
    tracker = RangeTracker()
    for texts in blocks:
        if texts:
            tracker.add(truncate(embedder.embed(texts), dim, normalize))
    return tracker


@dataclass
class StoredForm:
    """How a run stores its vectors; ``apply`` maps the model's float32 rows to it."""

    model_dim: int
    dtype: str = "float32"
    truncate_dim: int | None = None
    normalize: bool = False
    ranges: np.ndarray | None = None  # int8/uint8 only: (2, dim) float32

    @property
    def dim(self) -> int:
        """Float dims kept per row (after --truncate-dim)."""
        return self.truncate_dim or self.model_dim

    @property
    def width(self) -> int:
        """Values per stored row (bytes for binary: ``stored_dim``)."""
        return stored_dim(self.dim, self.dtype)

    @property
    def changes_vectors(self) -> bool:
        """Whether rows change before the writer (float16 is cast by the writer itself)."""
        return self.truncate_dim is not None or self.dtype not in ("float32", "float16")

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        if self.truncate_dim is not None:
            vectors = truncate(vectors, self.truncate_dim, self.normalize)
        return quantize(vectors, self.dtype, self.ranges)

    def settings(self) -> dict[str, Any]:
        """What the manifest records beside ``dtype`` (only what is set: a manifest without
        these keys was written untruncated and unquantized, and compares equal to one)."""
        out: dict[str, Any] = {"dim": self.dim}  # the vector's dims; binary stores them as bits
        if self.truncate_dim is not None:
            out["truncate_dim"] = self.truncate_dim
        if self.ranges is not None:
            out["ranges"] = [[float(x) for x in row] for row in self.ranges]  # float32 -> exact JSON
        return out
