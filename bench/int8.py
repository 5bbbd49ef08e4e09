"""Is an int8 CPU mode good enough to ship? Accuracy and speed of int8 variants, in one process.

    python bench/int8.py [--rows 400] [--long-rows 40] [--speed-rows 160] [--rounds 2]

Variants (all torch.ao dynamic quantization: int8 weights, activations quantized per call):
  - per-tensor: quantize_dynamic on every Linear (torch's default qconfig),
  - per-channel: the same with per-channel weight scales,
  - per-channel, FFN out in fp32: the FFN output projections (the most sensitive layers) kept,
  - per-channel + SmoothQuant: activation outliers of the Linears fed by a LayerNorm moved
    into the weights (alpha 0.5, per-channel maxima from calibration rows that are not
    evaluated), FFN out kept in fp32.
Bars (issue 12): mean cosine >= 0.997 and min >= 0.985 against fp32 on real text, Spearman on
a human-rated similarity set within 0.01 of fp32, >= 1.3x our bf16 and at least as fast as
ONNX Runtime int8. The human-rated sets are SimLex-999 and WordSim-353 (word pairs: the only
human-rated similarity data found offline, shipped in gensim's test data; pip install
gensim --no-deps): rows skipped with a note when gensim is not installed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import corpus_rows, long_texts, onnx_embed, onnx_engines  # noqa: E402

FFN_OUT = "output.dense"  # encoder.layer.N.output.dense: 1536 -> 384


def human_sets() -> dict[str, list[tuple[str, str, float]]]:
    spec = importlib.util.find_spec("gensim")  # find, not import: only its data files are read
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(spec.submodule_search_locations[0]) / "test" / "test_data"
    sets = {}
    for name, file in (("SimLex-999", "simlex999.txt"), ("WordSim-353", "wordsim353.tsv")):
        rows = []
        for line in (folder / file).read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if line.startswith("#") or len(parts) < 3:
                continue
            rows.append((parts[0], parts[1], float(parts[2])))
        sets[name] = rows
    return sets


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _is_ffn_out(name: str) -> bool:
    return name.endswith(FFN_OUT) and ".attention." not in name


def quantized(model, per_channel: bool, keep_ffn_out: bool):
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec = {
        name: qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not (keep_ffn_out and _is_ffn_out(name))
    }
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


class Smoothed(torch.nn.Module):
    """x / s, then a Linear whose weight columns were multiplied by s: the same product."""

    def __init__(self, linear, inv_scale):
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale)

    def forward(self, x):
        return self.linear(x * self.inv_scale)


def smoothquant(model, embedder, calibration: list[str], alpha: float = 0.5):
    """Smooth the Linears fed by a LayerNorm (Q, K, V, FFN in), then quantize per-channel, FFN out kept."""
    import torch

    model = copy.deepcopy(model)
    targets = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and (name.endswith(("query", "key", "value")) or name.endswith("intermediate.dense"))
    }
    maxima: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            seen = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            maxima[name] = torch.maximum(maxima[name], seen) if name in maxima else seen

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in targets.items()]
    chunk = embedder.tokenize(calibration)
    with torch.inference_mode():
        for b in chunk.batches:
            model(input_ids=torch.as_tensor(b.input_ids), attention_mask=torch.as_tensor(b.attention_mask))
    for h in handles:
        h.remove()
    for name, linear in targets.items():
        w_max = linear.weight.detach().abs().amax(0).clamp(min=1e-5)
        scale = (maxima[name].clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(min=1e-5)
        with torch.no_grad():
            linear.weight.mul_(scale)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, Smoothed(linear, 1.0 / scale))
    return quantized(model, per_channel=True, keep_ffn_out=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--long-rows", type=int, default=40)
    parser.add_argument("--speed-rows", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from minilm_cli.model import Embedder

    source = corpus_rows()
    calibration = source[-256:]  # never evaluated
    fp32 = Embedder(device="cpu", precision="fp32")
    texts = source[: args.rows] + long_texts(args.long_rows, fp32.tokenizer)
    base = fp32.model
    variants = {
        "int8 per-tensor, all Linear": quantized(base, per_channel=False, keep_ffn_out=False),
        "int8 per-channel, all Linear": quantized(base, per_channel=True, keep_ffn_out=False),
        "int8 per-channel, FFN out fp32": quantized(base, per_channel=True, keep_ffn_out=True),
        "int8 per-channel + SmoothQuant, FFN out fp32": smoothquant(base, fp32, calibration),
    }
    embedders = {}
    for name, model in variants.items():
        e = copy.copy(fp32)  # same tokenizer and settings; its own model
        e.model = e._forward = model
        embedders[name] = e

    sets = human_sets()
    if not sets:
        print("note: gensim not installed: no human-rated similarity set; Spearman not measured")
    reference = fp32.embed(texts)

    def word_scores(e) -> dict[str, float]:
        out = {}
        for set_name, rows in sets.items():
            a, b = e.embed([r[0] for r in rows]), e.embed([r[1] for r in rows])
            out[set_name] = spearman((a * b).sum(1), np.array([r[2] for r in rows]))
        return out

    ref_scores = word_scores(fp32)
    print(
        f"accuracy on {len(texts)} rows of real text ({args.rows} mixed + {args.long_rows} long) against fp32"
    )
    print("  fp32 Spearman: " + ", ".join(f"{k} {v:.4f}" for k, v in ref_scores.items()))
    accuracy = {}
    for name, e in embedders.items():
        out = e.embed(texts)
        cos = (out * reference).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1))
        scores = word_scores(e)
        accuracy[name] = (float(cos.mean()), float(cos.min()), scores)
        deltas = ", ".join(f"{k} {v:.4f} ({v - ref_scores[k]:+.4f})" for k, v in scores.items())
        print(f"  {name:46s} mean cos {cos.mean():.5f}  min cos {cos.min():.5f}  Spearman {deltas}")

    # speed: interleaved rounds, mixed rows, against our fp32 (the default here), bf16 and ONNX Runtime int8
    speed_texts = source[: args.speed_rows]
    chunk = fp32.tokenize(speed_texts)
    engines = {"minilm-cli fp32": lambda: fp32.run(chunk)}
    bf16 = Embedder(device="cpu", precision="bf16")
    engines["minilm-cli bf16"] = lambda: bf16.run(chunk)
    onnx = onnx_engines(
        Path(tempfile.mkdtemp(prefix="minilm-onnx-")), fp32.source.path, torch.get_num_threads()
    )
    if isinstance(onnx, str):
        print(f"note: {onnx}")
    else:
        engines["ONNX Runtime int8"] = lambda: onnx_embed(onnx["int8"], chunk, fp32.dim)
    for name, e in embedders.items():
        engines[name] = lambda e=e: e.run(chunk)
    warm = fp32.tokenize(speed_texts[:: max(1, len(speed_texts) // 24)])
    for e in (fp32, bf16, *embedders.values()):
        e.run(warm)
    times: dict[str, list[float]] = {n: [] for n in engines}
    for _ in range(args.rounds):
        for name, fn in engines.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {n: statistics.median(v) for n, v in times.items()}
    print(
        f"\nspeed on {len(speed_texts)} mixed rows ({chunk.padded_tokens} padded tokens), "
        f"median of {args.rounds} interleaved rounds; ratios are time(other) / time(engine)"
    )
    ort = med.get("ONNX Runtime int8")
    for name, seconds in med.items():
        vs_ort = f"  x ORT int8 {ort / seconds:5.2f}" if ort else ""
        print(
            f"  {name:46s} {seconds:7.2f} s  x fp32 {med['minilm-cli fp32'] / seconds:5.2f}  "
            f"x bf16 {med['minilm-cli bf16'] / seconds:5.2f}{vs_ort}"
        )
    print("\nverdict per variant (mean>=0.997, min>=0.985, |dSpearman|<=0.01, >=1.3x bf16, >= ORT int8):")
    for name, (mean, low, scores) in accuracy.items():
        checks = {
            "mean": mean >= 0.997,
            "min": low >= 0.985,
            "spearman": bool(scores) and all(abs(v - ref_scores[k]) <= 0.01 for k, v in scores.items()),
            "x1.3 bf16": med["minilm-cli bf16"] / med[name] >= 1.3,
            "ORT int8": ort is not None and med[name] <= ort,
        }
        failed = [k for k, ok in checks.items() if not ok]
        print(f"  {name:46s} {'PASS' if not failed else 'fails: ' + ', '.join(failed)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
