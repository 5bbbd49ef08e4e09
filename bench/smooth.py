"""SmoothQuant on our own encoder (minilm_cli.model.bert.BertEncoder), for bench/int8.py.

SmoothQuant moves per-channel activation outliers into the weights: a Linear's input x is
divided by s (per input channel) and its weight columns multiplied by s, the same product;
x / s then quantizes with less error. s = max|x|^alpha / max|W|^(1 - alpha), from the input
maxima seen on calibration rows. Where each division goes in our encoder:
  - attention_out: folded, at no runtime cost, into the V rows of `qkv` (W_v and b_v divided
    by s): the attention context is linear in V;
  - qkv and intermediate: their input is a LayerNorm output that is also the residual, so the
    division cannot go into the LayerNorm's weight and bias; it is one multiply per token on
    384 channels before the Linear (`Smoothed`);
  - output (FFN out, fed by GELU): a multiply on 1,536 channels, or the Linear kept in fp32.
Then either every Linear (but a kept FFN out) becomes torch's dynamic int8 Linear (fbgemm),
per-channel weight scales, or the smoothed fp32 encoder is exported to ONNX (packed tokens, as
it runs in torch) and its MatMuls quantized by ONNX Runtime's quantize_dynamic.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from minilm_cli.model import int8
from minilm_cli.model.int8 import Smoothed, fold_into_v, smooth_scale

LINEARS = ("qkv", "attention_out", "intermediate", "output")


class MatMulLinear(nn.Module):
    """A Linear as MatMul + Add: the ONNX exporter writes a 2-D nn.Linear as Gemm, which ONNX
    Runtime's dynamic quantization does not quantize; MatMul it does."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight_t) + self.bias


def input_maxima(encoder: nn.Module, embedder, texts: list[str]) -> dict[str, torch.Tensor]:
    """max |input| per channel of every Linear, over the real tokens of ``texts``."""
    return int8.input_maxima(encoder, int8.calibration_run(embedder, texts))


def smoothed(encoder: nn.Module, maxima: dict[str, torch.Tensor], alpha: float, ffn_out: str) -> nn.Module:
    """A copy of ``encoder`` with SmoothQuant applied (still fp32, the same outputs up to
    rounding); ffn_out "runtime": smoothed by a multiply; else left unsmoothed."""
    model = copy.deepcopy(encoder)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            fold_into_v(layer, maxima[f"{i}.attention_out"], alpha)
            parts = ("qkv", "intermediate", "output") if ffn_out == "runtime" else ("qkv", "intermediate")
            for part in parts:
                linear = getattr(layer, part)
                scale = smooth_scale(maxima[f"{i}.{part}"], linear.weight, alpha)
                setattr(layer, part, Smoothed(linear, scale))
    return model


def export_onnx(model: nn.Module, path: Path) -> None:
    """Our encoder (fp32, Linears as MatMul + Add) to ONNX, dynamic batch and length."""
    model = copy.deepcopy(model)
    model.round_rows = False  # the graph must not bake in the example batch's row count
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, MatMulLinear(module))
    from throughput import export_hidden  # bench/ is on sys.path for the scripts that import us

    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2023, 102, 0]])
    export_hidden(model, path, ids, (ids != 0).long())


def quantize_onnx(
    fp32_path: Path, int8_path: Path, weights: str, reduce_range: bool = False, ffn_out: str = "same"
) -> None:
    """ONNX Runtime's quantize_dynamic of the MatMuls, per-channel weight scales. weights
    "QInt8": U8S8 kernels (uint8 activations, int8 weights), "QUInt8": U8U8; reduce_range:
    7-bit weights, which avoids the int16 saturation of VPMADDUBSW in the U8S8 kernels on
    AVX2 (ONNX Runtime's quantization docs). ffn_out: the FFN output projections
    (/layers.N/output/) quantized as the others ("same"), kept in "fp32", or "QUInt8"."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its pre-processing advice
    matmuls = [n.name for n in onnx.load(str(fp32_path)).graph.node if n.op_type == "MatMul"]
    ffn = [name for name in matmuls if "/output/" in name]

    def run(source: Path, target: Path, weight_type: str, exclude: list[str]) -> None:
        quantize_dynamic(
            str(source),
            str(target),
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType[weight_type],
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=exclude,
        )

    run(fp32_path, int8_path, weights, [] if ffn_out == "same" else ffn)
    if ffn_out not in ("same", "fp32"):  # a second pass over the FFN outs alone
        run(int8_path, int8_path, ffn_out, [name for name in matmuls if name not in ffn])


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning threads after a run: the next engine timed would lose the cores to them
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantized(model: nn.Module, keep_ffn_out: bool) -> nn.Module:
    """A copy with torch's dynamic int8 Linear (fbgemm), per-channel weight scales, on every
    Linear (but the FFN output projections, if kept)."""

    def is_ffn_out(name: str) -> bool:
        return name.split(".")[2:3] == ["output"]  # layers.N.output[.linear]

    return int8.dynamic_int8(copy.deepcopy(model), is_ffn_out if keep_ffn_out else None)


ORT_KINDS = {  # name -> quantize_onnx's settings
    "U8U8": {"weights": "QUInt8"},
    "U8S8": {"weights": "QInt8"},
    "U8S8 7-bit": {"weights": "QInt8", "reduce_range": True},
    "U8S8, FFN out fp32": {"weights": "QInt8", "ffn_out": "fp32"},
    "U8S8, FFN out U8U8": {"weights": "QInt8", "ffn_out": "QUInt8"},
}


def onnx_int8(fp32_path: Path, threads: int, kind: str):
    """ONNX Runtime's quantize_dynamic of the exported encoder's MatMuls (ORT_KINDS[kind],
    per-channel weight scales), then a session."""
    int8_path = fp32_path.with_name(f"{fp32_path.stem}-{kind.replace(' ', '').replace(',', '-')}.onnx")
    quantize_onnx(fp32_path, int8_path, **ORT_KINDS[kind])
    return session(int8_path, threads)
