"""The throughput comparison on a GPU: precisions, torch.compile, FLOP bound, utilisation.

    python bench/gpu.py [--device cuda] [--rows 20000] [--rounds 3]
    python bench/gpu.py --device cpu --rows 300 --rounds 1     # smoke run, so it cannot rot

For each engine: rows/s, tokens/s, achieved TFLOP/s (about 21.5 MFLOP per real token for
MiniLM-L6-H384: 2 x 22M weights, plus attention), its share of the device's dense peak where
the device is known, GPU utilisation sampled through NVML while it ran, and min cosine
against sentence-transformers fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import load_texts  # noqa: E402

FLOP_PER_TOKEN = 21.5e6
# Dense tensor-core peaks, TFLOP/s, (fp16/bf16, fp32 without TF32), from the vendors' sheets.
PEAKS = {"H100": (989.0, 67.0), "H200": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3)}


class Utilisation(threading.Thread):
    """Samples the GPU's utilisation every 100 ms while a run is timed, through NVML in this
    process. (Running nvidia-smi instead forks this process ten times a second; with it, embed()
    measured about a quarter of its speed outside the bench. That the forks are the cause is a
    guess not yet checked on a GPU: docs/PERFORMANCE.md.)"""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.running = True
        try:
            import pynvml

            pynvml.nvmlInit()
            self.read = lambda h=pynvml.nvmlDeviceGetHandleByIndex(0): (
                pynvml.nvmlDeviceGetUtilizationRates(h).gpu
            )
        except Exception:  # noqa: BLE001 - no NVML (no NVIDIA GPU, or nvidia-ml-py missing)
            self.read = None

    def run(self) -> None:
        while self.running and self.read is not None:
            self.samples.append(float(self.read()))
            time.sleep(0.1)

    def stop(self) -> str:
        self.running = False
        return f"{statistics.mean(self.samples):.0f}%" if self.samples else "n/a"


def peak_for(device: str, precision: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, (half, single) in PEAKS.items():
        if key in name:
            return single if precision == "fp32" else half
    return None


def run_engine(fn, device: str, rounds: int) -> tuple[float, np.ndarray, str]:
    import torch

    fn()  # warm-up (and compilation)
    util = Utilisation()
    util.start()
    times, out = [], None
    for _ in range(rounds):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), np.asarray(out, dtype=np.float32), util.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of one model-only run")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from minilm_cli.model import Embedder, resolve_model

    texts = load_texts(args.rows)
    path = resolve_model(None).path
    st = SentenceTransformer(path, device=args.device)
    st_half = SentenceTransformer(path, device=args.device, model_kwargs={"torch_dtype": torch.float16})
    half = "fp16" if args.device.startswith(("cuda", "mps")) else "bf16"
    engines = {
        "sentence-transformers fp32 (batch 32)": (
            lambda: st.encode(texts, batch_size=32, normalize_embeddings=True),
            "fp32",
        ),
        "sentence-transformers fp16 weights (batch 32)": (
            lambda: (
                st_half.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_tensor=True)
                .float()
                .cpu()
            ),
            "fp16",
        ),
    }
    for precision in ("fp32", half, "bf16", "auto"):
        emb = Embedder(device=args.device, precision=precision)
        engines[f"minilm-cli {precision} -> {emb.precision}"] = (lambda e=emb: e.embed(texts), emb.precision)
    # The same engines with tokenizing taken out: what the device path alone reaches (in a
    # pipeline run, tokenizing overlaps it on its own thread).
    for precision in ("fp32", half):
        emb = Embedder(device=args.device, precision=precision)
        chunk = emb.tokenize(texts)
        engines[f"minilm-cli {emb.precision}, model only"] = (lambda e=emb, c=chunk: e.run(c), emb.precision)
    if not args.no_compile:
        emb = Embedder(device=args.device, compile=True)
        engines[f"minilm-cli {emb.precision} --compile"] = (lambda e=emb: e.embed(texts), emb.precision)

    tokens = Embedder(device="cpu", precision="fp32").tokenize(texts).real_tokens
    print(
        f"{len(texts)} rows, {tokens} real tokens, device {args.device}"
        + (
            f" ({torch.cuda.get_device_name(torch.device(args.device))})"
            if args.device.startswith("cuda")
            else ""
        )
    )
    reference = None
    columns = ("rows/s", "tokens/s", "TFLOP/s", "of peak", "GPU util", "min cos", "ratio")
    header = f"{'engine':48s} " + " ".join(f"{c:>9s}" for c in columns)
    print(header)
    base = None
    for name, (fn, precision) in engines.items():
        seconds, out, util = run_engine(fn, args.device, args.rounds)
        reference = out if reference is None else reference
        base = base or len(texts) / seconds
        tflops = tokens / seconds * FLOP_PER_TOKEN / 1e12
        peak = peak_for(args.device, precision)
        share = f"{tflops / peak:.1%}" if peak else "n/a"
        cosine = float((out * reference).sum(axis=1).min())
        print(
            f"{name:48s} {len(texts) / seconds:9.0f} {tokens / seconds:9.0f} {tflops:9.2f} "
            f"{share:>9s} {util:>9s} {cosine:9.5f} {len(texts) / seconds / base:8.2f}x",
            flush=True,
        )
    if args.profile:
        profile(Embedder(device=args.device, precision=half), texts)


def profile(emb, texts: list[str]) -> None:
    """Where one model-only pass spends host and device time (torch.profiler, top operators)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    chunk = emb.tokenize(texts)
    emb.run(chunk)
    activities = [ProfilerActivity.CPU]
    if emb.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        emb.run(chunk)
        if emb.device.type == "cuda":
            torch.cuda.synchronize()
    averages = prof.key_averages()
    for key in ("self_cpu_time_total", "self_device_time_total"):
        print(f"\nprofile, {emb.precision}, model only, sorted by {key}:")
        print(averages.table(sort_by=key, row_limit=14, max_name_column_width=48))


if __name__ == "__main__":
    main()
