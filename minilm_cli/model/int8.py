"""`--precision int8` on a CPU: our encoder's Linear layers as dynamic int8 (fbgemm), made
accurate enough to keep.

Plain dynamic quantization of every Linear (int8 weights per output channel, activations
quantized per batch with one scale) loses too much on this model: a mean cosine of 0.975 to
fp32 on real text, 0.914 at worst (bench/int8.py). Two things bring it back:
  - SmoothQuant (Xiao et al., 2023): a few input channels carry most of each activation's
    range. Dividing those channels by s and multiplying the weight's columns by s gives the
    same product with an activation that quantizes well. For the attention output projection
    the division folds into the V rows of the QKV weight (the context is linear in V), free;
    before the QKV and FFN-in projections it is one multiply per token (their input is also
    the residual, so it cannot fold into the LayerNorm).
  - The FFN output projection reads GELU outputs whose few large channels SmoothQuant cannot
    tame. Those channels (the 16 per layer with the largest maxima) stay in fp32 end to end
    (their FFN-in rows and FFN-out columns), as LLM.int8() does with outliers; the other
    1,520 run in int8.
The maxima come from a fixed calibration set shipped with the package (calibration.jsonl.gz),
so a model quantizes the same way every time. Activations are quantized with one scale per
batch, so a text's vector depends slightly on the batch it ran in (as with ONNX Runtime's
dynamic quantization): runs of the same input are still identical.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bert import BertEncoder, BertLayer, Layout

ALPHA = 0.8  # SmoothQuant's migration strength: the best of 0.5, 0.65, 0.8 in bench/int8.py
OUTLIER_CHANNELS = 16  # GELU channels per layer kept in fp32 (8 to 64 measured alike)
CALIBRATION = Path(__file__).with_name("calibration.jsonl.gz")
INT8_KERNELS = f"matmul int8 (fbgemm, dynamic; SmoothQuant {ALPHA}, {OUTLIER_CHANNELS} FFN channels fp32)"


def calibration_texts() -> list[str]:
    with gzip.open(CALIBRATION, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def calibration_run(embedder: Any, texts: list[str]) -> Callable[[nn.Module], None]:
    """What ``quantize_int8`` calls to calibrate: ``texts``, in the embedder's batches, through
    the encoder it is given."""
    chunk = embedder.tokenize(texts)

    def run(module: nn.Module) -> None:
        with torch.no_grad():
            for b in chunk.batches:
                module(torch.as_tensor(b.input_ids), torch.as_tensor(b.attention_mask))

    return run


class Smoothed(nn.Module):
    """x * inv_scale, then a Linear whose weight columns were multiplied by the scale."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor) -> None:
        super().__init__()
        with torch.no_grad():
            linear.weight.mul_(scale)
        self.linear = linear
        self.register_buffer("inv_scale", 1.0 / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


class SplitFeedForward(nn.Module):
    """The FFN with its outlier GELU channels in fp32 and the rest in (later int8) Linears.
    Intermediate channels are independent, so the two halves sum to the same result."""

    def __init__(self, layer: BertLayer, outliers: torch.Tensor) -> None:
        super().__init__()
        keep = torch.ones(layer.intermediate.out_features, dtype=torch.bool)
        keep[outliers] = False
        inner, outer = layer.intermediate.weight.detach(), layer.output.weight.detach()
        self.activation = layer.activation
        self.inner = _linear(inner[keep], layer.intermediate.bias.detach()[keep])
        self.outer = _linear(outer[:, keep], layer.output.bias.detach())
        self.register_buffer("fp32_inner_weight", inner[~keep].clone())
        self.register_buffer("fp32_inner_bias", layer.intermediate.bias.detach()[~keep].clone())
        self.register_buffer("fp32_outer_weight", outer[:, ~keep].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outliers = self.activation(F.linear(x, self.fp32_inner_weight, self.fp32_inner_bias))
        return self.outer(self.activation(self.inner(x))) + F.linear(outliers, self.fp32_outer_weight)


class QuantizedLayer(nn.Module):
    """A BertLayer whose FFN is split; attention is the layer's own (its Linears int8 later)."""

    def __init__(self, layer: BertLayer, outliers: torch.Tensor, ffn_scale: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("ffn_inv_scale", 1.0 / ffn_scale)
        with torch.no_grad():
            layer.intermediate.weight.mul_(ffn_scale)
        self.ffn = SplitFeedForward(layer, outliers)
        del layer.intermediate, layer.output  # now inside self.ffn

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        x = self.layer.attend(x, layout)
        return self.layer.output_norm(self.ffn(x * self.ffn_inv_scale) + x)


def quantize_int8(
    encoder: BertEncoder,
    run_calibration: Callable[[nn.Module], None],
    alpha: float = ALPHA,
    outliers: int = OUTLIER_CHANNELS,
    smooth_inputs: bool = True,
) -> nn.Module:
    """The encoder, changed in place and returned, ready for int8 inference on a CPU.
    ``run_calibration(module)`` runs the calibration texts through the fp32 encoder. The other
    arguments are for bench/int8.py's variants (smooth_inputs=False: no multiply before the
    QKV and FFN-in projections, only the free fold into V)."""
    maxima = input_maxima(encoder, run_calibration)
    with torch.no_grad():
        for i, layer in enumerate(encoder.layers):
            fold_into_v(layer, maxima[f"{i}.attention_out"], alpha)
            ffn_scale = torch.ones(layer.intermediate.in_features)
            if smooth_inputs:
                layer.qkv = Smoothed(layer.qkv, smooth_scale(maxima[f"{i}.qkv"], layer.qkv.weight, alpha))
                ffn_scale = smooth_scale(maxima[f"{i}.intermediate"], layer.intermediate.weight, alpha)
            channels = maxima[f"{i}.output"].topk(outliers).indices
            encoder.layers[i] = QuantizedLayer(layer, channels, ffn_scale)
    return dynamic_int8(encoder)


def fold_into_v(layer: BertLayer, act_max: torch.Tensor, alpha: float = ALPHA) -> None:
    """SmoothQuant for the attention output projection at no runtime cost: its input, the
    attention context, is linear in V, so V's rows take the division."""
    hidden = layer.attention_out.in_features
    s = smooth_scale(act_max, layer.attention_out.weight, alpha)
    with torch.no_grad():
        layer.attention_out.weight.mul_(s)
        layer.qkv.weight[2 * hidden :].div_(s[:, None])
        layer.qkv.bias[2 * hidden :].div_(s)


def input_maxima(encoder: BertEncoder, run: Callable[[nn.Module], None]) -> dict[str, torch.Tensor]:
    """max |input| per channel of every Linear, over the calibration tokens."""
    maxima: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, inputs, output) -> None:
            seen = inputs[0].detach().abs().amax(0)
            maxima[name] = torch.maximum(maxima[name], seen) if name in maxima else seen

        return record

    handles = [
        getattr(layer, part).register_forward_hook(hook(f"{i}.{part}"))
        for i, layer in enumerate(encoder.layers)
        for part in ("qkv", "attention_out", "intermediate", "output")
    ]
    try:
        run(encoder)
    finally:
        for handle in handles:
            handle.remove()
    return maxima


def smooth_scale(act_max: torch.Tensor, weight: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """SmoothQuant's per-input-channel s = max|x|^alpha / max|W|^(1 - alpha)."""
    w_max = weight.detach().abs().amax(0).clamp(min=1e-5)
    return (act_max.clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(min=1e-5)


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear


def dynamic_int8(encoder: nn.Module, keep: Callable[[str], bool] | None = None) -> nn.Module:
    """Every nn.Linear (but those whose name ``keep`` accepts) as fbgemm's dynamic int8 Linear,
    per-output-channel weight scales; in place."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    keep = keep or (lambda name: False)
    for module in encoder.modules():
        if isinstance(module, nn.Linear):
            module.__class__ = nn.Linear  # bert.Linear only skips init; quantize_dynamic wants the type
    linears: Iterable[str] = (
        n for n, m in encoder.named_modules() if isinstance(m, nn.Linear) and not keep(n)
    )
    with warnings.catch_warnings():
        # torch deprecates its quantized tensors in favour of torchao; torch is pinned here
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        quantize_dynamic(encoder, dict.fromkeys(linears, per_channel_dynamic_qconfig), inplace=True)
    left = [n for n, m in encoder.named_modules() if type(m) is nn.Linear and not keep(n)]
    if left:  # quantize_dynamic skips what it does not recognise, silently
        raise RuntimeError(f"Linear layers left unquantized: {left}")
    return encoder
