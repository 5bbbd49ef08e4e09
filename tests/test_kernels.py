"""`Embedder.info()["kernels"]`: which code runs the model, as `minilm info --json` and the manifest show."""

from __future__ import annotations

import pytest
import torch


def test_kernels_names_backend_isa_matmul_and_attention(tiny_model_dir: str) -> None:
    from minilm_cli.model import Embedder

    embedder = Embedder(model=tiny_model_dir, device="cpu", precision="fp32")
    kernels = embedder.info()["kernels"]
    assert isinstance(kernels, str)
    assert kernels.startswith(f"torch {torch.__version__.split('+')[0]} eager;")
    assert f"cpu {torch.backends.cpu.get_cpu_capability()}" in kernels
    assert "matmul fp32" in kernels and "attention sdpa" in kernels


def test_kernels_say_whether_bf16_is_native(tiny_model_dir: str) -> None:
    from minilm_cli.devices import cpu_has_native_bf16
    from minilm_cli.model import Embedder

    kernels = Embedder(model=tiny_model_dir, device="cpu", precision="bf16").kernels()
    assert "matmul bf16 (oneDNN, " in kernels
    assert ("(oneDNN, native" in kernels) == cpu_has_native_bf16()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kernels_name_the_packed_onednn_matmul_where_it_runs(tiny_model_dir: str, precision: str) -> None:
    from minilm_cli.model import Embedder
    from minilm_cli.model.bert import onednn_packs

    embedder = Embedder(model=tiny_model_dir, device="cpu", precision=precision)
    packed = onednn_packs(torch.float32 if precision == "fp32" else torch.bfloat16)
    assert embedder.model.onednn == packed
    kernels = embedder.kernels()
    assert ("packed weights, GELU fused" in kernels) == packed, kernels
    assert ("(MKL)" in kernels) == (precision == "fp32" and not packed and torch.backends.mkl.is_available())


@pytest.mark.parametrize("user_value", [None, "true", "false"])
def test_tokenizer_thread_pool_off_beside_a_cpu_model(tiny_model_dir: str, monkeypatch, user_value) -> None:
    """On a CPU the tokenizer's own threads would fight the model's; a value the user set stays."""
    import os

    from minilm_cli.model import embedder as model

    monkeypatch.setattr(model, "_USER_TOKENIZERS_PARALLELISM", user_value)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", user_value or "true")
    model.Embedder(tiny_model_dir, device="cpu", precision="fp32")
    assert os.environ["TOKENIZERS_PARALLELISM"] == (user_value or "false")
