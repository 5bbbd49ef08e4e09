"""The throughput comparison on a GPU: model only, embed(), the whole pipeline, and sentence-transformers.

    python bench/gpu.py [--device cuda] [--rows 20000] [--rounds 3] [--host-workers auto,8]
    python bench/gpu.py --device cpu --rows 300 --rounds 1 --no-compile    # smoke run, so it cannot rot

Engines, each timed as the median of --rounds after one warm-up run:
- sentence-transformers fp32 (the cosine reference) and with fp16 weights, batch 32;
- `model only`: Embedder.run on chunks tokenized beforehand, per precision, with the default
  attention (on CUDA in fp16/bf16: varlen, no padding) and forced padded (MINILM_ATTENTION);
- `embed()`: tokenize then run, in memory, on one thread (no overlap);
- `run_job`: `minilm embed` in-process, JSONL file -> Parquet shards, per --host-workers count
  (read, check, tokenize and pad on host threads while the model runs).
Columns: rows/s, tokens/s, achieved TFLOP/s (about 21.5 MFLOP per real token for
MiniLM-L6-H384), its share of the device's dense peak where known, GPU utilisation over the
timed rounds, min cosine against sentence-transformers fp32. Then the issue's ratios: run_job
over model only (goal >= 0.7 on a GPU) and run_job over sentence-transformers fp16 (goal >= 10x).

GPU utilisation comes from NVML in this process (nvidia-ml-py) where it imports, else from ONE
long-running `nvidia-smi ... -lms 100` read line by line (never a fork per sample: forking
nvidia-smi ten times a second was the suspect when embed() measured a quarter of its outside
speed inside this bench); the header says which. --sampler picks one, to compare them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import load_texts  # noqa: E402

FLOP_PER_TOKEN = 21.5e6
# Dense tensor-core peaks, TFLOP/s, (fp16/bf16, fp32 without TF32), from the vendors' sheets.
PEAKS = {"H100": (989.0, 67.0), "H200": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3)}
SMI = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
ATTENTION_ENV = "MINILM_ATTENTION"


class Sampler:
    """GPU utilisation samples (time, percent) for the whole bench, from one source started once;
    ``mean(t0, t1)`` averages those taken inside a timed window."""

    def __init__(self, want: str, gpu_index: int) -> None:
        self.samples: list[tuple[float, float]] = []
        self.name, self.proc, self.stopped = "none", None, False
        if want in ("auto", "nvml") and self._start_nvml(gpu_index):
            return
        if want in ("auto", "smi"):
            self._start_smi(gpu_index)

    def _start_nvml(self, gpu_index: int) -> bool:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
            pynvml.nvmlDeviceGetUtilizationRates(handle)
        except Exception:  # noqa: BLE001 - no NVML: no NVIDIA GPU, or nvidia-ml-py missing
            return False

        def poll() -> None:
            while not self.stopped:
                self.samples.append(
                    (time.perf_counter(), float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                )
                time.sleep(0.1)

        threading.Thread(target=poll, daemon=True).start()
        self.name = "NVML in process, every 100 ms"
        return True

    def _start_smi(self, gpu_index: int) -> None:
        try:
            self.proc = subprocess.Popen(
                [*SMI, "-i", str(gpu_index)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError:  # no nvidia-smi
            return

        def read() -> None:
            for line in self.proc.stdout:
                try:
                    self.samples.append((time.perf_counter(), float(line.strip())))
                except ValueError:  # "[N/A]" or a warning line
                    pass

        threading.Thread(target=read, daemon=True).start()
        self.name = "one `nvidia-smi -lms 100` subprocess, read line by line"

    def mean(self, t0: float, t1: float) -> str:
        inside = [value for t, value in list(self.samples) if t0 <= t <= t1]
        return f"{statistics.mean(inside):.0f}%" if inside else "n/a"

    def close(self) -> None:
        self.stopped = True
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


def peak_for(device: str, precision: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, (half, single) in PEAKS.items():
        if key in name:
            return single if precision == "fp32" else half
    return None


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_engine(fn: Callable[[], object], device: str, rounds: int, sampler: Sampler):
    """Median seconds over ``rounds`` after a warm-up, the last output, and the GPU utilisation."""
    fn()  # warm-up (and compilation)
    times, out = [], None
    sync(device)
    start = time.perf_counter()
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out, sampler.mean(start, time.perf_counter())


def with_attention(mode: str | None, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with MINILM_ATTENTION=mode (None: the default), the environment restored after."""

    def run() -> object:
        before = os.environ.pop(ATTENTION_ENV, None)
        if mode is not None:
            os.environ[ATTENTION_ENV] = mode
        try:
            return fn()
        finally:
            os.environ.pop(ATTENTION_ENV, None)
            if before is not None:
                os.environ[ATTENTION_ENV] = before

    return run


def st_engines(args, texts: list[str]) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from minilm_cli.model import resolve_model

    path = resolve_model(None).path
    st = SentenceTransformer(path, device=args.device)
    st_half = SentenceTransformer(path, device=args.device, model_kwargs={"torch_dtype": torch.float16})

    def half() -> np.ndarray:
        out = st_half.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_tensor=True)
        return out.float().cpu()

    return {
        "sentence-transformers fp32 (batch 32)": (
            lambda: st.encode(texts, batch_size=32, normalize_embeddings=True),
            "fp32",
            "st",
            None,
        ),
        "sentence-transformers fp16 weights (batch 32)": (half, "fp16", "st", None),
    }


def model_engines(args, texts: list[str], precisions: list[str]) -> dict:
    """Embedder.run on chunks tokenized outside the timing: what the device path alone reaches."""
    from minilm_cli.model import Embedder

    engines = {}
    for precision in precisions:
        emb = Embedder(device=args.device, precision=precision)
        chunk = emb.tokenize(texts)
        run = lambda e=emb, c=chunk: e.run(c)  # noqa: E731
        modes = [None, "padded"] if emb.precision != "fp32" else [None]
        for mode in modes:
            label = emb.model.attention_mode() if mode is None else mode
            engines[f"minilm-cli {emb.precision}, model only, {label}"] = (
                with_attention(mode, run),
                emb.precision,
                "model",
                None,
            )
    return engines


def embed_engines(args, texts: list[str], precisions: list[str]) -> dict:
    from minilm_cli.model import Embedder

    engines = {}
    for precision in precisions:
        emb = Embedder(device=args.device, precision=precision)
        engines[f"minilm-cli {emb.precision}, embed() in memory"] = (
            lambda e=emb: e.embed(texts),
            emb.precision,
            "embed",
            None,
        )
    if not args.no_compile:
        emb = Embedder(device=args.device, compile=True)
        engines[f"minilm-cli {emb.precision} --compile, embed()"] = (
            lambda e=emb: e.embed(texts),
            emb.precision,
            "embed",
            None,
        )
    return engines


def job_engines(args, texts: list[str], precisions: list[str], work: Path) -> dict:
    """`minilm embed` in-process, JSONL -> Parquet, one engine per precision and host-worker count."""
    import json

    import pyarrow.parquet as pq

    from minilm_cli.config import EmbedConfig
    from minilm_cli.pipeline import build_embedder, run_job

    source = work / "rows.jsonl"
    with open(source, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(texts))
    engines = {}
    for precision in precisions:
        for spec in args.host_workers.split(","):
            workers = None if spec == "auto" else int(spec)
            out = work / f"out-{precision}-{spec}"
            cfg = EmbedConfig(
                inputs=[str(source)], output=str(out), device=args.device, precision=precision,
                id_column="id", overwrite=True, quiet=True, host_workers=workers,
            )  # fmt: skip
            embedder = build_embedder(cfg)

            def run(cfg=cfg, embedder=embedder) -> None:
                JOBS[cfg.output] = run_job(cfg, embedder=embedder, log=lambda m: None)

            def vectors(out=out, dim=embedder.dim) -> np.ndarray:
                """The shards' vectors in input order (read after the timing)."""
                table = pq.read_table(sorted(out.glob("**/*.parquet")), columns=["id", "embedding"])
                flat = table.column("embedding").combine_chunks().flatten().to_numpy()
                return flat.reshape(-1, dim)[np.argsort(table.column("id").to_numpy())]

            from minilm_cli.pipeline.host import host_workers as resolved

            n = resolved(workers, embedder.device)
            name = f"minilm-cli {embedder.precision}, run_job, {n} host workers" + (
                " (auto)" if workers is None else ""
            )
            engines[name] = (run, embedder.precision, "job", vectors)
            JOB_OUTPUTS[name] = cfg.output
    return engines


JOBS: dict = {}  # output -> the last JobResult (its stage seconds are printed after the table)
JOB_OUTPUTS: dict[str, str] = {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", default=None, help="default: fp16,bf16 on CUDA; fp32,bf16 elsewhere")
    parser.add_argument(
        "--host-workers", default="auto", help="run_job's --host-workers counts, e.g. auto,2,8"
    )
    parser.add_argument("--sections", default="st,model,embed,job", help="which engines to time")
    parser.add_argument("--sampler", default="auto", choices=("auto", "nvml", "smi", "none"))
    parser.add_argument("--no-compile", action="store_true", help="skip the --compile engine")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of one model-only run")
    args = parser.parse_args()

    import torch

    cuda = args.device.startswith("cuda")
    precisions = (args.precisions or ("fp16,bf16" if cuda else "fp32,bf16")).split(",")
    texts = [f"{text} {i}" for i, text in enumerate(load_texts(args.rows))]  # no repeats to dedup
    sections = args.sections.split(",")
    index = (torch.device(args.device).index or 0) if cuda else 0
    sampler = Sampler(args.sampler if cuda else "none", index)
    with tempfile.TemporaryDirectory(prefix="minilm-gpu-") as work:
        engines = {}
        builders = {
            "st": lambda: st_engines(args, texts),
            "model": lambda: model_engines(args, texts, precisions),
            "embed": lambda: embed_engines(args, texts, precisions),
            "job": lambda: job_engines(args, texts, precisions, Path(work)),
        }
        for section in sections:
            engines.update(builders[section]())
        try:
            rates = print_table(args, texts, engines, sampler)
        finally:
            sampler.close()
        print_jobs()
        print_ratios(rates, precisions)
    if args.profile:
        from minilm_cli.model import Embedder

        profile(Embedder(device=args.device, precision=precisions[0]), texts)


def print_table(args, texts: list[str], engines: dict, sampler: Sampler) -> dict[str, tuple[str, str, float]]:
    """One line per engine; returns name -> (kind, precision, rows/s)."""
    import torch

    from minilm_cli.model import Embedder

    tokens = Embedder(device="cpu", precision="fp32").tokenize(texts).real_tokens
    gpu = (
        f" ({torch.cuda.get_device_name(torch.device(args.device))})"
        if args.device.startswith("cuda")
        else ""
    )
    print(f"{len(texts)} rows, {tokens} real tokens, device {args.device}{gpu}, torch {torch.__version__}")
    print(f"GPU utilisation sampler: {sampler.name}; cores {os.cpu_count()}")
    columns = ("rows/s", "tokens/s", "TFLOP/s", "of peak", "GPU util", "min cos")
    print(f"{'engine':56s} " + " ".join(f"{c:>9s}" for c in columns))
    reference, rates = None, {}
    for name, (fn, precision, kind, collect) in engines.items():
        seconds, out, util = time_engine(fn, args.device, args.rounds, sampler)
        out = np.asarray(out if collect is None else collect(), dtype=np.float32)
        reference = out if reference is None else reference
        tflops = tokens / seconds * FLOP_PER_TOKEN / 1e12
        peak = peak_for(args.device, precision)
        share = f"{tflops / peak:.1%}" if peak else "n/a"
        cosine = float((out * reference).sum(axis=1).min())
        rates[name] = (kind, precision, len(texts) / seconds)
        print(
            f"{name:56s} {len(texts) / seconds:9.0f} {tokens / seconds:9.0f} {tflops:9.2f} "
            f"{share:>9s} {util:>9s} {cosine:9.5f}",
            flush=True,
        )
    return rates


def print_jobs() -> None:
    """Where each run_job engine's last run spent its time (stage seconds, summed over threads)."""
    for name, output in JOB_OUTPUTS.items():
        result = JOBS.get(output)
        if result is not None:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in result.stage_seconds.items())
            print(f"{name}: {result.seconds:.2f} s wall; stage seconds: {stages}")


def print_ratios(rates: dict[str, tuple[str, str, float]], precisions: list[str]) -> None:
    """The issue's two goals: end to end over model only, and over sentence-transformers fp16."""
    best = {}  # (kind, precision) -> best rows/s among that kind's engines
    for kind, precision, rate in rates.values():
        best[kind, precision] = max(rate, best.get((kind, precision), 0.0))
    for precision in precisions:
        job, model = best.get(("job", precision)), best.get(("model", precision))
        if job and model:
            print(f"{precision}: run_job / model only = {job / model:.2f} (goal >= 0.7 on a GPU)")
    st_half = best.get(("st", "fp16"))
    jobs = [rate for (kind, _), rate in best.items() if kind == "job"]
    if st_half and jobs:
        print(
            f"best run_job / sentence-transformers fp16 = {max(jobs) / st_half:.2f}x (goal >= 10x on a GPU)"
        )


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
