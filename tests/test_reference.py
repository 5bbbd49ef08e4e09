"""The packaged all-MiniLM-L6-v2 gives what sentence-transformers and plain transformers give."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.real_model

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
TOL = 1e-5
MAX_LENGTH = 256
DIM = 384


@pytest.fixture(scope="module")
def glosses() -> list[str]:
    return [r["text"] for r in pq.read_table(SAMPLE / "glosses.parquet").to_pylist()]


@pytest.fixture(scope="module")
def texts(glosses: list[str]) -> list[str]:
    """64 real sentences of mixed length, one of them far past 256 tokens (truncated)."""
    picked = sorted(glosses[:200], key=len)
    mixed = picked[:20] + picked[-20:] + glosses[200:221]  # shortest, longest, and some as they come
    long_text = " ".join(glosses[100:140])
    return [*mixed, long_text, "ok", "A"]


@pytest.fixture(scope="module")
def sentence_transformer(real_model_dir: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(real_model_dir, device="cpu")


@pytest.fixture(scope="module")
def st_reference(sentence_transformer, texts: list[str]) -> np.ndarray:
    assert sentence_transformer.max_seq_length == MAX_LENGTH
    return sentence_transformer.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=32)


@pytest.fixture(scope="module")
def embedder_fp32():
    from minilm_cli.model import Embedder

    return Embedder(model=None, device="cpu", precision="fp32")


def hf_loop(model_dir: str, texts: list[str], normalize: bool = True, pooling: str = "mean") -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 16):
            batch = [texts[j] for j in order[i : i + 16]]
            enc = tok(batch, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if pooling == "cls":  # sentence-transformers' pooling_mode_cls_token
                pooled = hidden[:, 0]
            elif pooling == "max":  # pooling_mode_max_tokens: padding can never be the max
                pooled = torch.where(mask.bool(), hidden, torch.full_like(hidden, float("-inf"))).amax(1)
            else:
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out.append(pooled)
    result = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
    result[order] = torch.cat(out).numpy()
    return result


def test_the_long_text_is_truncated(sentence_transformer, texts: list[str], embedder_fp32) -> None:
    lengths = [len(ids) for ids in sentence_transformer.tokenizer(texts)["input_ids"]]
    assert max(lengths) > MAX_LENGTH  # the truncation path really is exercised
    assert sum(n > MAX_LENGTH for n in lengths) == 1
    assert embedder_fp32.tokenize(texts).truncated == 1


def test_fp32_equals_sentence_transformers(embedder_fp32, texts: list[str], st_reference: np.ndarray) -> None:
    ours = embedder_fp32.embed(texts)
    assert ours.dtype == np.float32
    assert ours.shape == (len(texts), DIM)
    assert np.abs(ours - st_reference).max() <= TOL


def test_fp32_is_independent_of_batch_composition(
    embedder_fp32, texts: list[str], st_reference: np.ndarray
) -> None:
    one_by_one = np.concatenate([embedder_fp32.embed([t]) for t in texts[::7]])
    assert np.abs(one_by_one - st_reference[::7]).max() <= TOL


def test_default_precision_is_close_to_fp32(texts: list[str], st_reference: np.ndarray) -> None:
    from minilm_cli.model import Embedder

    embedder = Embedder(model=None, device="cpu")  # precision auto
    assert embedder.precision in ("bf16", "fp32")
    ours = embedder.embed(texts)
    cos = (ours * st_reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(st_reference, axis=1))
    assert cos.min() >= 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)


def test_bf16_is_close_to_fp32(texts: list[str], st_reference: np.ndarray) -> None:
    """bf16 asked for explicitly (native or not on this CPU): min cosine 0.9999 against fp32."""
    from minilm_cli.model import Embedder

    ours = Embedder(model=None, device="cpu", precision="bf16").embed(texts)
    cos = (ours * st_reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(st_reference, axis=1))
    assert cos.min() >= 0.9999


def test_fp32_equals_plain_transformers(real_model_dir: str, embedder_fp32, texts: list[str]) -> None:
    reference = hf_loop(real_model_dir, texts)
    assert np.abs(embedder_fp32.embed(texts) - reference).max() <= TOL


def test_no_normalize_equals_plain_transformers(real_model_dir: str, texts: list[str]) -> None:
    from minilm_cli.model import Embedder

    embedder = Embedder(model=None, device="cpu", precision="fp32", normalize=False)
    sample = texts[::4]
    reference = hf_loop(real_model_dir, sample, normalize=False)
    ours = embedder.embed(sample)
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0)  # really not normalised
    assert np.abs(ours - reference).max() <= TOL * np.abs(reference).max()


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_other_poolings_equal_plain_transformers(real_model_dir: str, texts: list[str], pooling: str) -> None:
    from minilm_cli.model import Embedder

    embedder = Embedder(model=None, device="cpu", precision="fp32", pooling=pooling)
    sample = texts[::3]
    ours = embedder.embed(sample)
    reference = hf_loop(real_model_dir, sample, pooling=pooling)
    mean = hf_loop(real_model_dir, sample)
    assert np.abs(ours - reference).max() <= TOL
    assert np.abs(ours - mean).max() > 100 * TOL  # really another pooling than mean


def test_cli_end_to_end_matches_sentence_transformers(
    tmp_path: Path, sentence_transformer, glosses: list[str], real_model_dir: str
) -> None:
    from click.testing import CliRunner

    from minilm_cli.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["embed", str(SAMPLE / "glosses.parquet"), "-o", str(out), "--precision", "fp32"]
    )
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column("id").to_pylist() == list(range(len(glosses)))
    ours = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    reference = sentence_transformer.encode(
        glosses, normalize_embeddings=True, convert_to_numpy=True, batch_size=64
    )
    assert ours.shape == (len(glosses), DIM)
    assert np.abs(ours - reference).max() <= TOL

    manifest = json.loads((out / "manifest.json").read_text())
    settings = manifest["settings"]
    weights = Path(real_model_dir) / "model.safetensors"
    assert settings["model"] == {
        "name": "sentence-transformers/all-MiniLM-L6-v2",
        "source": "packaged",
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert (settings["dim"], settings["max_length"], settings["pooling"], settings["normalize"]) == (
        DIM,
        MAX_LENGTH,
        "mean",
        True,
    )
    assert settings["precision"] == "fp32"
    assert manifest["totals"]["rows"] == len(glosses)
