"""`Embedder.info()["kernels"]`: which code runs the model, as `minilm info --json` and the manifest show."""

from __future__ import annotations

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
    from minilm_cli.model import Embedder, cpu_has_native_bf16

    kernels = Embedder(model=tiny_model_dir, device="cpu", precision="bf16").kernels()
    assert "matmul bf16 (oneDNN, " in kernels
    assert ("native)" in kernels) == cpu_has_native_bf16()
