"""The part that ``ray.embed_dataset`` and ``spark.embed_dataframe`` share: a column of a
user's batch checked and embedded, rejected values given a reason instead of a vector."""

from __future__ import annotations

from typing import Any

import numpy as np

from .sources import check_text


def embed_values(
    embedder: Any, values: list[Any], encoding_errors: str
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(vectors, embedded, reasons): one float32 row per value (zeros where rejected), whether
    each value was embedded, and why not where it was not (as the local engine's checks say).
    The embedded texts are length-sorted and batched together by ``embedder.embed``."""
    texts, reasons = [], []
    for value in values:
        text, reason = check_text(value, encoding_errors)
        reasons.append(reason)
        if reason is None:
            texts.append(text)
    good = np.array([r is None for r in reasons], dtype=bool)
    full = np.zeros((len(reasons), embedder.dim), dtype=np.float32)
    full[good] = embedder.embed(texts)
    return full, good, reasons
