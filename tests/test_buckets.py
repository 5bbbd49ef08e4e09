"""Bounded shapes (minilm_cli/model/bert.py: bucket, bucketed_layout, rounded_rows, use_dtype).

oneDNN keeps a primitive per new matrix shape, and MKL (fp32) and fbgemm (int8) something per
row count, so on a CPU the encoder rounds the packed token count up to a multiple of
PIECE_ROWS in every precision, and in bf16/fp16 the padded attention shape up to a small ladder
of rungs too. The padding rows must never change a real row's output, and the weights are
stored in bf16 once, with LayerNorm in fp32 and no autocast around the model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from minilm_cli.model import Embedder, bert
from minilm_cli.model.bert import ATTENTION_RUNGS, PIECE_ROWS, bucket, pieces


def _mixed_texts(rows: int, seed: int = 0) -> list[str]:
    """Texts of 1 to ~120 words, most short, as real text is: many packed token counts."""
    rng = np.random.default_rng(seed)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    lengths = np.minimum(rng.geometric(1 / 12, rows), 120)
    return [" ".join(rng.choice(words, n)) + f" {i}" for i, n in enumerate(lengths)]


@pytest.mark.parametrize(
    ("n", "rungs", "expected"),
    [
        (1, 16, 1),
        (31, 16, 31),
        (32, 16, 32),
        (33, 16, 34),
        (101, 16, 104),
        (1000, 16, 1024),
        (1025, 16, 1088),
    ],
)
def test_bucket_rounds_up_to_the_ladder(n: int, rungs: int, expected: int) -> None:
    assert bucket(n, rungs) == expected


@pytest.mark.parametrize("rungs", [4, ATTENTION_RUNGS, 16])
def test_bucket_wastes_under_one_rung_and_has_few_values_per_octave(rungs: int) -> None:
    values = [bucket(n, rungs) for n in range(1, 70_000)]
    assert all(v >= n and (v - n) * rungs < n for n, v in zip(range(1, 70_000), values))
    for low in (64, 512, 4096, 32768):
        assert len({v for v in values[low - 1 : 2 * low - 1]}) <= rungs + 1


def _record_shapes(model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> tuple[set, set]:
    """Every packed row count the first Linear sees, and every (batch, length) attention runs on."""
    rows: set[int] = set()
    attention: set[tuple[int, int]] = set()
    model.layers[0].qkv.register_forward_pre_hook(lambda module, args: rows.add(args[0].shape[0]))
    real_sdpa = bert.F.scaled_dot_product_attention

    def sdpa(q, k, v, **kwargs):
        attention.add((q.shape[0], q.shape[2]))
        return real_sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(bert.F, "scaled_dot_product_attention", sdpa)
    return rows, attention


def _embed_in_pieces(embedder: Embedder, texts: list[str], piece: int = 40) -> None:
    """One call per piece: each its own chunk, so its own batches and packed token counts."""
    for start in range(0, len(texts), piece):
        embedder.embed(texts[start : start + piece])


def test_bf16_sees_only_bucketed_shapes(tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = Embedder(model=tiny_model_dir, device="cpu", precision="bf16", max_length=128)
    rows, attention = _record_shapes(embedder.model, monkeypatch)
    _embed_in_pieces(embedder, _mixed_texts(1200))
    assert rows and all(n % PIECE_ROWS == 0 for n in rows), sorted(rows)
    # each Linear's matmuls: power-of-two pieces, a handful of shapes however many row counts
    shapes = {size for n in rows for size in pieces(n)}
    assert len(rows) > len(shapes) and shapes <= {PIECE_ROWS << k for k in range(8)}, sorted(shapes)
    assert all(bucket(b, ATTENTION_RUNGS) == b and bucket(n, ATTENTION_RUNGS) == n for b, n in attention)
    # the same texts in fp32: the rows rounded as well, the attention shapes its own
    plain = Embedder(model=tiny_model_dir, device="cpu", precision="fp32", max_length=128)
    plain_rows, plain_attention = _record_shapes(plain.model, monkeypatch)
    _embed_in_pieces(plain, _mixed_texts(1200))
    assert plain_rows and all(n % PIECE_ROWS == 0 for n in plain_rows), sorted(plain_rows)
    assert any(bucket(n, ATTENTION_RUNGS) != n for _, n in plain_attention)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_packed_rows_are_rounded_in_every_precision(
    tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """MKL's fp32 GEMM and fbgemm's int8 one keep something per row count (a long mixed run
    climbed by 30 and 130 MiB): the packed rows reach them in multiples of PIECE_ROWS only, and
    the vectors are those of the exact row count, bit for bit."""
    texts = _mixed_texts(300, seed=2)
    embedder = Embedder(model=tiny_model_dir, device="cpu", precision=precision, max_length=128)
    exact = Embedder(model=tiny_model_dir, device="cpu", precision=precision, max_length=128)
    seen: list[int] = []
    first = embedder.model.layers[0]
    linear = first.layer.attention_out if precision == "int8" else first.attention_out
    linear.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    got = embedder.embed(texts)
    assert seen and all(n % PIECE_ROWS == 0 for n in seen), sorted(seen)
    monkeypatch.setattr(bert, "rounded_rows", lambda layout: layout)
    expected = exact.embed(texts)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [(32, (32,)), (96, (64, 32)), (1504, (1024, 256, 128, 64, 32)), (2048, (2048,)), (40, (32, 8))],
)
def test_pieces_are_the_binary_digits_of_the_row_count(rows: int, expected: tuple[int, ...]) -> None:
    assert pieces(rows) == expected and sum(expected) == rows


def test_a_linear_in_pieces_equals_one_matmul() -> None:
    """Each piece is its own matmul over the same weight: rows are independent, so equal."""
    torch.manual_seed(0)
    linear = bert.Linear(48, 80).to(torch.bfloat16)
    nn.init.normal_(linear.weight)
    nn.init.normal_(linear.bias)
    x = torch.randn(1504, 48, dtype=torch.bfloat16)
    calls = []
    real_addmm = torch.addmm
    with torch.inference_mode(), pytest.MonkeyPatch.context() as mp:
        whole = linear(x)
        linear.piecewise = True
        mp.setattr(torch, "addmm", lambda *a, **k: calls.append(a[1].shape[0]) or real_addmm(*a, **k))
        got = linear(x)
    assert calls == [1024, 256, 128, 64, 32]
    torch.testing.assert_close(got.float(), whole.float(), rtol=0.01, atol=0.05)


def test_padding_rows_never_change_real_rows(tiny_model_dir: str) -> None:
    """fp32 with the buckets forced on against fp32 as it runs: equal to float rounding."""
    texts = _mixed_texts(400, seed=1)
    plain = Embedder(model=tiny_model_dir, device="cpu", precision="fp32", max_length=128)
    expected = plain.embed(texts)
    plain.model.bucketed = True
    got = plain.embed(texts)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_only_low_precision_buckets_its_attention(tiny_model_dir: str) -> None:
    """The attention ladder moves fp32's last bit (SDPA blocks differently), and resume and the
    reference tests compare fp32 bytes; fp32's exact attention shapes measured flat, so only
    bf16/fp16 take the ladder."""
    assert not Embedder(model=tiny_model_dir, device="cpu", precision="fp32").model.bucketed
    assert Embedder(model=tiny_model_dir, device="cpu", precision="bf16").model.bucketed


def test_bf16_weights_are_stored_once_and_run_without_autocast(tiny_model_dir: str) -> None:
    embedder = Embedder(model=tiny_model_dir, device="cpu", precision="bf16")
    linears = [m for m in embedder.model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in embedder.model.modules() if isinstance(m, nn.LayerNorm)]
    assert linears and all(p.dtype == torch.bfloat16 for m in linears for p in m.parameters())
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    seen = []
    layer = embedder.model.layers[0]
    layer.register_forward_pre_hook(
        lambda m, args: seen.append((torch.is_autocast_enabled("cpu"), args[0].dtype))
    )
    norm_inputs = []
    layer.attention_norm.register_forward_pre_hook(lambda m, args: norm_inputs.append(args[0].dtype))
    vectors = embedder.embed(_mixed_texts(50))
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()
    assert seen and all(not autocast and dtype == torch.float32 for autocast, dtype in seen)
    assert norm_inputs and set(norm_inputs) == {torch.float32}
