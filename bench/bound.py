"""This machine's matmul limit for a BERT-shaped model, so throughput can be read as a fraction of it.

    python bench/bound.py            # print the peaks and the tokens/s bound, alone

`matmul_peaks` times `torch.nn.functional.linear` on the model's own Linear shapes (hidden x
hidden for Q, K, V and the attention output; hidden x intermediate and back for the FFN) at a
CPU batch's row count, in fp32 and bf16, and oneDNN's matmul on a packed weight where it runs
(the faster of the two is the peak: on an AMD EPYC with AVX-512 MKL's fp32 ran at 0.43x
oneDNN's), and int8 through what torch offers on a CPU: `torch._int_mm` and the fbgemm
dynamically quantized Linear (activations quantized per call, which a real int8 model pays
too). `tokens_bound` turns peaks into the tokens/s at which the model's Linear layers alone
would keep the cores busy: per token, 2 x in x out FLOP per Linear.
Attention scores (4 x length x hidden per token and layer) and elementwise work are not
counted; they are what an engine loses against the bound.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_hardware() -> str:
    flags = cpu_flags()
    if "amx_int8" in flags:
        return "AMX"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI"
    return "no VNNI (AVX2 multiply-add emulation)" if "avx2" in flags else "no VNNI"


def bf16_hardware() -> str:
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    return "no native bf16 (converted to fp32 in the kernels)"


def linear_shapes(config) -> list[tuple[int, int, int]]:
    """(in, out, count per layer) of the model's Linear layers."""
    h, i = int(config.hidden_size), int(config.intermediate_size)
    return [(h, h, 4), (h, i, 1), (i, h, 1)]


def flops_per_token(config) -> float:
    layers = int(config.num_hidden_layers)
    return float(sum(2 * k * n * c for k, n, c in linear_shapes(config)) * layers)


def _time(fn, min_seconds: float, min_reps: int = 3) -> float:
    fn()
    reps, elapsed = 0, 0.0
    times = []
    while elapsed < min_seconds or reps < min_reps:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        times.append(dt)
        elapsed += dt
        reps += 1
    return statistics.median(times)


def matmul_peaks(config, rows: int = 2048, min_seconds: float = 0.3) -> dict[str, dict]:
    """GFLOP/s per precision and shape: {"fp32": {(in, out): gflops, ...}, "bf16": ..., "int8": ...}."""
    import torch

    torch.manual_seed(0)
    peaks: dict[str, dict] = {"fp32": {}, "bf16": {}, "int8": {}, "int8 _int_mm": {}}
    for k, n, _ in linear_shapes(config):
        flop = 2.0 * rows * k * n
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            x, w, b = (
                torch.randn(rows, k, dtype=dtype),
                torch.randn(n, k, dtype=dtype),
                torch.randn(n, dtype=dtype),
            )
            seconds = _time(lambda x=x, w=w, b=b: torch.nn.functional.linear(x, w, b), min_seconds)
            packed = _packed_linear(x, w, b)  # oneDNN's blocked weight: faster than MKL on some CPUs
            if packed is not None:
                seconds = min(seconds, _time(packed, min_seconds))
            peaks[name][(k, n)] = flop / seconds / 1e9
        x = torch.randn(rows, k)
        try:
            qlinear = torch.ao.nn.quantized.dynamic.Linear(k, n, dtype=torch.qint8)
            peaks["int8"][(k, n)] = flop / _time(lambda q=qlinear, x=x: q(x), min_seconds) / 1e9
        except Exception:  # noqa: BLE001 - a torch without fbgemm/qnnpack: no int8 row
            peaks.pop("int8", None)
        # torch._int_mm has no fast CPU kernel everywhere: timed on 128 rows, one call
        a = torch.randint(-128, 127, (128, k), dtype=torch.int8)
        w8 = torch.randint(-128, 127, (k, n), dtype=torch.int8)
        try:
            seconds = _time(lambda a=a, w8=w8: torch._int_mm(a, w8), 0.0, min_reps=1)
            peaks["int8 _int_mm"][(k, n)] = 2.0 * 128 * k * n / seconds / 1e9
        except Exception:  # noqa: BLE001
            peaks.pop("int8 _int_mm", None)
    return peaks


def _packed_linear(x, w, b):
    """Our encoder's Linear as it runs where oneDNN has the dtype natively (weight packed once:
    minilm_cli.model.bert.Linear.pack), or None where oneDNN cannot run it."""
    import torch

    from minilm_cli.model.bert import Linear

    linear = Linear(w.shape[1], w.shape[0]).to(w.dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(b)
    try:
        linear.pack()
        linear(x)
    except Exception:  # noqa: BLE001 - a torch without oneDNN, or a dtype it lacks here
        return None

    def run():
        with torch.inference_mode():
            return linear(x)

    return run


def tokens_bound(config, peaks_for_precision: dict) -> float:
    """Tokens/s if every Linear ran at its measured peak and nothing else took time."""
    layers = int(config.num_hidden_layers)
    seconds = sum(2.0 * k * n * c / (peaks_for_precision[(k, n)] * 1e9) for k, n, c in linear_shapes(config))
    return 1.0 / (seconds * layers)


def main() -> None:
    from transformers import AutoConfig

    from minilm_cli.model import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(None).path)
    print(f"bf16: {bf16_hardware()}; int8: {int8_hardware()}")
    print(f"{flops_per_token(config) / 1e6:.2f} MFLOP per token in the Linear layers")
    for name, shapes in matmul_peaks(config).items():
        cells = "  ".join(f"{k}x{n}: {g:6.1f}" for (k, n), g in shapes.items())
        print(f"{name:13s} GFLOP/s  {cells}   bound {tokens_bound(config, shapes):8.0f} tokens/s")


if __name__ == "__main__":
    main()
