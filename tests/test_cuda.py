"""The CUDA paths, run wherever a GPU is visible (CI has none: there they are skipped).

They check what a CPU cannot: the same vectors on the GPU as on the CPU, half precision close
to fp32, page-locked host batches, no device-to-host wait inside a batch, and the CLI on cuda.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli, embeddings

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def texts(sample_texts: list[str]) -> list[str]:
    """Real glosses, short and long, plus one text far past 256 tokens."""
    return [*sample_texts[:400], " ".join(sample_texts[:80]), "A"]


@pytest.fixture(scope="module")
def cpu_fp32(real_model_dir: str, texts: list[str]) -> np.ndarray:
    from minilm_cli.model import Embedder

    return Embedder(real_model_dir, device="cpu", precision="fp32").embed(texts)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def test_fp32_on_cuda_matches_the_cpu(real_model_dir: str, texts: list[str], cpu_fp32) -> None:
    from minilm_cli.model import Embedder

    gpu = Embedder(real_model_dir, device="cuda", precision="fp32").embed(texts)
    assert gpu.dtype == np.float32 and gpu.shape == cpu_fp32.shape
    assert np.abs(gpu - cpu_fp32).max() < 1e-4


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16"])
def test_half_precision_on_cuda_is_close_to_fp32(
    real_model_dir: str, texts: list[str], cpu_fp32, precision: str
) -> None:
    from minilm_cli.model import Embedder

    embedder = Embedder(real_model_dir, device="cuda", precision=precision)
    assert embedder.precision in ("bf16", "fp16")
    assert min_cosine(embedder.embed(texts), cpu_fp32) >= 0.999


def test_sentence_transformers_on_cuda_agrees(real_model_dir: str, texts: list[str]) -> None:
    from sentence_transformers import SentenceTransformer

    from minilm_cli.model import Embedder

    reference = SentenceTransformer(real_model_dir, device="cuda").encode(
        texts, batch_size=32, normalize_embeddings=True
    )
    ours = Embedder(real_model_dir, device="cuda", precision="fp32").embed(texts)
    assert np.abs(ours - reference).max() < 1e-4


def test_batching_does_not_change_vectors_on_cuda(real_model_dir: str, texts: list[str]) -> None:
    from minilm_cli.model import Embedder

    together = Embedder(real_model_dir, device="cuda", precision="fp32").embed(texts[:64])
    small = Embedder(real_model_dir, device="cuda", precision="fp32", batch_size=3)
    alone = np.stack([small.embed(t) for t in texts[:64]])
    assert min_cosine(together, alone) >= 0.99999


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_attends_without_padding(
    real_model_dir: str, texts: list[str], cpu_fp32, precision: str, monkeypatch
) -> None:
    """fp16/bf16 on CUDA default to the varlen path (bert.attention_mode), which gives what
    the padded path gives."""
    from minilm_cli.model import Embedder
    from minilm_cli.model.bert import ATTENTION_ENV, flash_varlen

    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    embedder = Embedder(real_model_dir, device="cuda", precision=precision)
    assert embedder.model.attention_mode() == "varlen"
    probe = torch.empty(0, device="cuda", dtype=embedder.model.linear_dtype)
    assert ("flash varlen" in embedder.kernels()) == (flash_varlen(probe) is not None)
    varlen = embedder.embed(texts)
    monkeypatch.setenv(ATTENTION_ENV, "padded")
    padded = embedder.embed(texts)
    assert min_cosine(varlen, padded) >= 0.9999
    assert min_cosine(varlen, cpu_fp32) >= 0.999


def test_fp32_varlen_on_cuda_matches_the_cpu(
    real_model_dir: str, texts: list[str], cpu_fp32, monkeypatch
) -> None:
    """Forced varlen in fp32: SDPA on nested jagged tensors (the memory-efficient kernel)."""
    from minilm_cli.model import Embedder
    from minilm_cli.model.bert import ATTENTION_ENV

    monkeypatch.setenv(ATTENTION_ENV, "varlen")
    gpu = Embedder(real_model_dir, device="cuda", precision="fp32").embed(texts)
    assert np.abs(gpu - cpu_fp32).max() < 1e-4


@pytest.mark.parametrize(
    ("precision", "attention"), [("auto", ""), ("fp16", ""), ("bf16", "padded"), ("fp32", "varlen")]
)
def test_batches_are_pinned_and_run_without_waiting_for_the_gpu(
    real_model_dir: str, texts: list[str], precision: str, attention: str, monkeypatch
) -> None:
    """A batch's copies are async and nothing inside the forward pass makes the host wait:
    torch raises on any synchronising call while sync-debug mode is "error". Both attention
    paths (the default in half precision is varlen; fp32 varlen is the nested-jagged one)."""
    from minilm_cli.model import Embedder
    from minilm_cli.model.bert import ATTENTION_ENV

    monkeypatch.setenv(ATTENTION_ENV, attention)
    embedder = Embedder(real_model_dir, device="cuda", precision=precision)
    chunk = embedder.tokenize(texts)
    assert chunk.batches
    for b in chunk.batches:
        assert b.input_ids.is_pinned() and b.attention_mask.is_pinned() and b.positions.is_pinned()
    embedder.run(chunk)  # warm-up: cuBLAS handles and workspaces
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            outputs = [embedder._run_batch(b) for b in chunk.batches]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sum(len(o) for o in outputs) == len(texts)


def test_tokenizer_thread_pool_on_when_the_model_is_on_the_gpu(real_model_dir: str, monkeypatch) -> None:
    """With the model on a GPU, the cores are free for tokenizing, which is the bottleneck."""
    from minilm_cli.model import embedder as model

    monkeypatch.setattr(model, "_USER_TOKENIZERS_PARALLELISM", None)
    model.Embedder(real_model_dir, device="cuda")
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    model.Embedder(real_model_dir, device="cpu")
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_cli_embed_on_cuda_equals_the_cpu_run(tmp_path: Path, real_model_dir: str) -> None:
    source = REPO / "sample_data" / "glosses.txt"
    runs = {}
    for device in ("cpu", "cuda", "cuda,cuda"):
        out = tmp_path / device.replace(",", "-")
        args = ["embed", str(source), "-o", str(out), "--model", real_model_dir, "--device", device]
        result = cli([*args, "--precision", "fp32", "--shard-rows", "500"])
        assert result.exit_code == 0, result.output
        runs[device] = embeddings(out)
    cpu_ids, cpu_vectors = runs["cpu"]
    for device in ("cuda", "cuda,cuda"):
        ids, vectors = runs[device]
        assert ids == cpu_ids
        assert np.abs(vectors - cpu_vectors).max() < 1e-4


def test_overflow_mean_on_cuda(tmp_path: Path, real_model_dir: str) -> None:
    """Long documents go through the window path, which builds its own batches."""
    from minilm_cli.model import Embedder

    doc = " ".join((REPO / "sample_data" / "glosses.txt").read_text(encoding="utf-8").split()[:1500])
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"id": "d1", "text": doc}) + "\n")
    vectors = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        args = ["embed", str(source), "-o", str(out), "--model", real_model_dir, "--device", device]
        result = cli([*args, "--precision", "fp32", "--overflow", "mean"])
        assert result.exit_code == 0, result.output
        vectors[device] = embeddings(out)[1]
    assert np.abs(vectors["cuda"] - vectors["cpu"]).max() < 1e-4
    assert Embedder(real_model_dir, device="cuda").device.type == "cuda"


def test_info_names_the_gpu_and_cublas(real_model_dir: str) -> None:
    result = cli(["info", "--json", "--model", real_model_dir, "--device", "cuda"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["device"].startswith("cuda")
    assert torch.cuda.get_device_name(0) in data["kernels"] and "cuBLAS" in data["kernels"]
