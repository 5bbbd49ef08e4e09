"""oneDNN's packed-weight matmul for our Linear layers on a CPU (minilm_cli/model/bert.py:
Linear.pack, onednn_packs, BertEncoder.use_onednn).

Where oneDNN runs the dtype natively, every Linear's weight is reordered once into oneDNN's
blocked layout, GELU runs inside the FFN's first matmul, and the rows go in power-of-two
pieces (bounded primitives). The vectors must be those of the plain matmul to float rounding.
fp32 packing is chosen only on AVX-512, but it runs anywhere, so these tests force it where
the CPU would not choose it: the path is checked on every CI machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minilm_cli.model import Embedder, bert

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _linear(inputs: int, outputs: int, dtype: torch.dtype = torch.float32) -> bert.Linear:
    torch.manual_seed(0)
    linear = bert.Linear(inputs, outputs)
    torch.nn.init.normal_(linear.weight, std=0.1)
    torch.nn.init.normal_(linear.bias)
    return linear.to(dtype)


@pytest.mark.parametrize("rows", [32, 96, 1504, 2048])
@pytest.mark.parametrize("activation", ["none", "gelu", "relu"])
def test_a_packed_linear_equals_the_plain_matmul_and_activation(rows: int, activation: str) -> None:
    linear = _linear(48, 80)
    x = torch.randn(rows, 48)
    with torch.inference_mode():
        expected = F.linear(x, linear.weight, linear.bias)
        expected = {"none": expected, "gelu": F.gelu(expected), "relu": F.relu(expected)}[activation]
        linear.pack(activation)
        got = linear(x)
    assert linear.weight.numel() == 0 and linear.weight.dtype == torch.float32  # the dense copy is gone
    assert got.shape == (rows, 80)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_packed_linear_runs_its_rows_in_power_of_two_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN keeps a primitive per shape: it must only meet the ladder's row counts."""
    linear = _linear(16, 24)
    linear.pack()
    seen = []
    real = torch.ops.mkldnn._linear_pointwise

    class Ops:
        @staticmethod
        def _linear_pointwise(x, *args):
            seen.append(x.shape[0])
            return real(x, *args)

    monkeypatch.setattr(bert.torch.ops, "mkldnn", Ops)
    with torch.inference_mode():
        linear(torch.randn(1504, 16))
    assert seen == [1024, 256, 128, 64, 32]


def test_the_choice_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 packs on AVX-512 only (on AVX2 MKL measured faster); bf16 where oneDNN has it natively."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not bert.onednn_packs(torch.float32)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert bert.onednn_packs(torch.float32)
    assert bert.onednn_packs(torch.bfloat16) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not bert.onednn_packs(torch.float32) and not bert.onednn_packs(torch.bfloat16)


def _texts(rows: int = 200) -> list[str]:
    rng = np.random.default_rng(3)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    return [" ".join(rng.choice(words, int(n))) for n in np.minimum(rng.geometric(1 / 10, rows), 100)]


def _pair(tiny_model_dir: str, precision: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Embedder, Embedder]:
    """The same model packed (forced on) and plain (forced off)."""
    monkeypatch.setattr(bert, "onednn_packs", lambda dtype: True)
    packed = Embedder(model=tiny_model_dir, device="cpu", precision=precision, max_length=128)
    monkeypatch.setattr(bert, "onednn_packs", lambda dtype: False)
    plain = Embedder(model=tiny_model_dir, device="cpu", precision=precision, max_length=128)
    assert packed.model.onednn and not plain.model.onednn
    return packed, plain


def test_the_packed_fp32_encoder_gives_the_plain_vectors(tiny_model_dir: str, monkeypatch) -> None:
    packed, plain = _pair(tiny_model_dir, "fp32", monkeypatch)
    assert all(layer.intermediate.fused == "gelu" for layer in packed.model.layers)
    texts = _texts()
    got, expected = packed.embed(texts), plain.embed(texts)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.abs(expected).max() > 0.05  # real vectors, not zeros


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bf16 in oneDNN here")
def test_the_packed_bf16_encoder_gives_the_plain_vectors(tiny_model_dir: str, monkeypatch) -> None:
    packed, plain = _pair(tiny_model_dir, "bf16", monkeypatch)
    texts = _texts()
    got, expected = packed.embed(texts), plain.embed(texts)
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999, cosine.min()


def test_compile_and_int8_never_pack(tiny_model_dir: str, monkeypatch) -> None:
    """inductor writes its own matmuls; int8 replaces the Linears with fbgemm's."""
    monkeypatch.setattr(bert, "onednn_packs", lambda dtype: True)
    int8 = Embedder(model=tiny_model_dir, device="cpu", precision="int8")
    assert not int8.model.onednn
    encoder = Embedder(model=tiny_model_dir, device="cpu", precision="fp32").model
    fresh = bert.BertEncoder(encoder.shape, encoder.word_embeddings.num_embeddings, 2)
    fresh.prepare_compile()
    assert not fresh.use_onednn() and not fresh.onednn
