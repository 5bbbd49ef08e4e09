"""--pooling none: one vector per token, as sentence-transformers' token_embeddings.

A chunk's token vectors travel as one flat (tokens, dim) matrix with a row index, never as a
list of small arrays: the sink writes Arrow lists and .npy files straight from it. Every
token the model saw is kept, [CLS] and [SEP] included, as ``encode(output_value=
"token_embeddings")`` returns them; special tokens have the character span (0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..batching import TokenizedChunk

POOLING_NONE = "none"


@dataclass
class TokenVectors:
    """Per-token features of some rows, in row order: row i's tokens are
    ``vectors[offsets[i]:offsets[i + 1]]``, with their ids and (start, end) character spans."""

    vectors: np.ndarray  # (tokens, dim) float32, never normalised, never pooled
    offsets: np.ndarray  # (rows + 1,) int64, offsets[0] == 0
    token_ids: np.ndarray  # (tokens,) int32
    spans: np.ndarray  # (tokens, 2) int32: character offsets into the original text

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def tokens(self) -> int:
        return len(self.vectors)

    @staticmethod
    def empty(dim: int) -> TokenVectors:
        return TokenVectors(
            np.zeros((0, dim), np.float32),
            np.zeros(1, np.int64),
            np.zeros(0, np.int32),
            np.zeros((0, 2), np.int32),
        )


def real_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, length, dim) -> (real tokens, dim), row after row, padding dropped (on the device)."""
    return hidden[mask.bool()].float()


def token_vectors(chunk: TokenizedChunk, flat: np.ndarray) -> TokenVectors:
    """``flat``: the real tokens of every batch, batch after batch (``real_tokens``), back in the
    chunk's row order, with each row's ids and character spans."""
    order = np.concatenate([b.rows for b in chunk.batches])
    lengths = chunk.lengths.astype(np.int64)
    offsets = chunk.ids.offsets  # FlatIds: where each row's tokens start, in row order
    in_flat = np.zeros(len(lengths), np.int64)  # where each row's tokens begin in ``flat``
    in_flat[order] = np.concatenate(([0], np.cumsum(lengths[order])[:-1]))
    gather = np.repeat(in_flat - offsets[:-1], lengths) + np.arange(offsets[-1])
    ids = chunk.ids.values.astype(np.int32, copy=False)  # FlatIds: every row's ids end to end
    if chunk.spans is not None:
        spans = np.concatenate(chunk.spans).astype(np.int32).reshape(-1, 2)
    else:
        spans = np.zeros((len(ids), 2), np.int32)
    return TokenVectors(flat[gather], offsets, ids, spans)


def encoding_spans(encoding: object, special: list[bool] | None = None) -> np.ndarray:
    """A `tokenizers` Encoding's (start, end) character offsets into the text it encoded,
    (0, 0) for its special tokens ([CLS], [SEP])."""
    spans = np.asarray(encoding.offsets, dtype=np.int32).reshape(-1, 2)  # type: ignore[attr-defined]
    mask = np.asarray(special if special is not None else encoding.special_tokens_mask, dtype=bool)  # type: ignore[attr-defined]
    spans[mask] = 0
    return spans
