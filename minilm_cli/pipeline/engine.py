"""Engines: where the model runs. Every engine turns the same stages into embedded chunks.

``LocalEngine`` runs the stages before the model on a reader thread and the model on the
calling (main) thread. The Ray engine (minilm_cli.ray) runs the model on Ray actors. The
device workers (minilm_cli.workers) run one LocalEngine per device, each in its process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from ..batching import Chunk
from ..model import Embedder
from .stages import Stages
from .threads import Producer


class Engine(Protocol):
    name: str

    def embedded_chunks(
        self, stages: Stages, first_row: int, first_record: int
    ) -> Iterator[tuple[Chunk, Any]]:
        """(chunk, its embeddings in row order), chunk after chunk, in input order."""
        ...

    def runtime(self) -> dict[str, Any]:
        """Where and how the model ran, for the manifest."""
        ...


class LocalEngine:
    """The reader thread's chunks through the model, on this (the main) thread."""

    name = "local"

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def embedded_chunks(
        self, stages: Stages, first_row: int, first_record: int
    ) -> Iterator[tuple[Chunk, np.ndarray]]:
        reader = Producer(lambda: stages.chunks(first_row, first_record), "minilm-reader")
        try:
            for chunk in reader:
                t = time.perf_counter()
                embedded = (
                    self.embedder.run(chunk.tokens, on_batch=stages.on_batch)
                    if chunk.tokens
                    else self.embedder.empty()
                )
                stages.timers["model"] += time.perf_counter() - t
                yield chunk, embedded
        finally:
            reader.close()

    def runtime(self) -> dict[str, Any]:
        return embedder_runtime(self.embedder, self.name)


def embedder_runtime(embedder: Embedder, engine: str) -> dict[str, Any]:
    """How a run (or this resumed part of it) ran; not compared on --resume."""
    import platform
    from importlib.metadata import version

    import torch

    info = embedder.info()
    return {
        "engine": engine,
        "device": info["device"],
        "precision": info["precision"],
        "compile": info["compile"],
        "batch_tokens": info["batch_tokens"],
        "batch_size": info["batch_size"],
        "kernels": info.get("kernels"),
        "threads": embedder.threads_note(),
        "torch": torch.__version__,
        "transformers": version("transformers"),  # without importing it: seconds per process
        "python": platform.python_version(),
    }
