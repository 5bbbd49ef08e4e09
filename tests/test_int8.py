"""--precision int8 (minilm_cli/model/int8.py): accurate against fp32 on real text, CPU only, refused
where it cannot apply."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, cli, manifest
from torch import nn

from minilm_cli.devices import choose_precision
from minilm_cli.errors import InputError
from minilm_cli.model import Embedder
from minilm_cli.model.bert import Layout, load_bert
from minilm_cli.model.int8 import OUTLIER_CHANNELS, QuantizedLayer, calibration_texts
from minilm_cli.model.loading import read_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def held_out(sample_texts: list[str]) -> list[str]:
    """Real text the calibration never saw: the sample glosses, plus paragraphs of them."""
    calibration = set(calibration_texts())
    texts = [t for t in sample_texts if t not in calibration]
    paragraphs = [" ".join(texts[i : i + 12]) for i in range(0, 240, 12)]
    return texts + paragraphs


@pytest.mark.real_model
def test_int8_keeps_the_accuracy_bars_against_fp32(real_model_dir: str, held_out: list[str]) -> None:
    fp32 = Embedder(real_model_dir, device="cpu", precision="fp32").embed(held_out)
    int8 = Embedder(real_model_dir, device="cpu", precision="int8").embed(held_out)
    cosine = (fp32 * int8).sum(axis=1)  # both normalised
    assert len(held_out) > 300
    assert cosine.mean() >= 0.997
    assert cosine.min() >= 0.985


@pytest.mark.real_model
def test_int8_runs_are_repeatable(real_model_dir: str, held_out: list[str]) -> None:
    a = Embedder(real_model_dir, device="cpu", precision="int8").embed(held_out[:100])
    b = Embedder(real_model_dir, device="cpu", precision="int8").embed(held_out[:100])
    assert np.array_equal(a, b)


def test_split_feed_forward_is_the_same_sum_before_quantizing(real_model_dir: str) -> None:
    """The fp32 algebra alone (smoothing scale, outlier channels apart) changes nothing."""
    folder = Path(real_model_dir)
    layer = load_bert(read_config(str(folder)), folder / "model.safetensors").layers[0]
    reference = load_bert(read_config(str(folder)), folder / "model.safetensors").layers[0]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 384, generator=generator)
    layout = Layout.plain(torch.arange(50), torch.ones(5, 1, 1, 10, dtype=torch.bool))
    scale = torch.rand(384, generator=generator) + 0.5
    split = QuantizedLayer(layer, torch.arange(OUTLIER_CHANNELS) * 7, scale)
    with torch.inference_mode():
        assert torch.allclose(split(x, layout), reference(x, layout), atol=1e-4)


def test_every_linear_is_int8_and_outliers_stay_fp32(tiny_model_dir: str) -> None:
    embedder = Embedder(tiny_model_dir, device="cpu", precision="int8")
    assert embedder.precision == "int8"
    assert not [name for name, m in embedder.model.named_modules() if type(m) is nn.Linear]
    ffn = embedder.model.layers[0].ffn
    assert ffn.fp32_inner_weight.shape[0] == OUTLIER_CHANNELS
    assert "matmul int8 (fbgemm" in embedder.kernels()
    vectors = embedder.embed(["a short text", "another, somewhat longer text about cats"])
    assert vectors.shape == (2, embedder.dim) and np.isfinite(vectors).all()


def test_cli_embed_int8_records_it(tmp_path: Path, tiny_model_dir: str) -> None:
    out = tmp_path / "out"
    args = ["embed", str(REPO / "sample_data" / "glosses.txt"), "-o", str(out), "--model", tiny_model_dir]
    result = cli([*args, "--device", "cpu", "--precision", "int8"])
    assert result.exit_code == 0, result.output
    doc = manifest(out)
    assert doc["settings"]["precision"] == doc["runtime"]["precision"] == "int8"
    assert "matmul int8 (fbgemm" in doc["runtime"]["kernels"]
    assert doc["totals"]["rows"] == 300
    assert "quantize" not in result.stderr  # torch's deprecation notice is not the user's business


def test_int8_is_refused_off_the_cpu() -> None:
    with pytest.raises(InputError, match="CPU only"):
        choose_precision("int8", torch.device("cuda"))
    with pytest.raises(InputError, match="CPU only"):
        choose_precision("int8", torch.device("mps"))


def test_int8_with_compile_is_one_line_exit_2(tmp_path: Path, tiny_model_dir: str) -> None:
    args = ["embed", str(REPO / "sample_data" / "glosses.txt"), "-o", str(tmp_path / "out")]
    result = cli([*args, "--model", tiny_model_dir, "--device", "cpu", "--precision", "int8", "--compile"])
    assert_one_line_error(result, 2, "--compile", "int8")


def test_int8_on_a_model_our_encoder_does_not_run_is_refused(tmp_path: Path, tiny_model_dir: str) -> None:
    folder = tmp_path / "relative"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"  # transformers runs it, we do not
    (folder / "config.json").write_text(json.dumps(config))
    result = cli(["info", "--model", str(folder), "--device", "cpu", "--precision", "int8"])
    assert_one_line_error(result, 2, "int8", "plain BERT")
