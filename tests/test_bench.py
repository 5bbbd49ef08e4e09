"""The benchmarks still run (smoke runs on the CPU, tiny sizes): they cannot rot unnoticed.

Speed is not asserted here; the figures come from full runs, in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=BENCH.parent
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_throughput_bench_prints_both_tables():
    out = _run(str(BENCH / "throughput.py"), "--quick", "--rounds", "1")
    assert "sentence-transformers fp32 (batch 32)" in out and "minilm-cli defaults" in out
    assert "minilm embed (run_job)" in out
    assert "minilm embed --dtype binary" in out and "bytes_per_row" in out
    assert "engine, mixed corpus" in out and "engine, long corpus" in out
    assert "matmul peak of this machine" in out and "bound" in out
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        assert "ONNX Runtime rows skipped" in out
    else:
        assert "ONNX Runtime int8" in out
    assert out.count("x\n") >= 9  # a ratio closes every row: 4+ engines per corpus, 3 end to end


@pytest.mark.slow
def test_gpu_bench_runs_on_cpu():
    out = _run(str(BENCH / "gpu.py"), "--device", "cpu", "--rows", "32", "--rounds", "1", "--no-compile")
    assert "TFLOP/s" in out and "GPU utilisation sampler: none" in out
    engines = ("sentence-transformers fp16", "model only, padded", "embed() in memory", "run_job, 1 host")
    for engine in engines:
        assert engine in out
    assert "bf16: run_job / model only = " in out and "sentence-transformers fp16 = " in out


@pytest.mark.slow
def test_varlen_bench_runs_on_cpu():
    out = _run(
        str(BENCH / "varlen.py"), "--device", "cpu", "--rows", "64", "--rounds", "1", "--precisions", "fp32"
    )
    assert "fp32      padded" in out and "fp32      varlen" in out and "vs padded" in out


@pytest.mark.slow
def test_host_bench_prints_the_limit_and_a_row_per_run():
    args = [
        "--rows",
        "300",
        "--long-rows",
        "20",
        "--workers",
        "0,2",
        "--formats",
        "jsonl",
        "--chunk-size",
        "100",
    ]
    out = _run(str(BENCH / "host.py"), *args)
    assert out.count("TOKENIZER LIMIT") == 2  # mixed and long
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["mixed"], ["long"])]
    assert len(rows) == 2 * 2 * 2  # corpora x models x worker counts
    assert all(float(r[6]) > 0 for r in rows)  # of_limit


@pytest.mark.slow
def test_memory_bench_stays_within_its_bound():
    """Ten times the rows, about the same peak RSS: the bound the benchmark states (15%)."""
    out = _run(
        str(BENCH / "memory.py"),
        "--cases",
        "short",
        "--small",
        "2000",
        "--large",
        "20000",
        "--shard-rows",
        "5000",
    )
    line = next(line for line in out.splitlines() if line.startswith("ratio large/small:"))
    ratio = float(line.split()[2])
    assert ratio <= 1.15, out


@pytest.mark.slow
def test_memory_bench_mixed_rows_stay_within_the_bound():
    """Mixed-length real text in the default precision, 6,000 and 60,000 rows (about a minute):
    new kernel shapes, tokenizer and Parquet writer buffers must not grow with the input
    (issue 22), on every CPU: bf16 where it is native, fp32 elsewhere (MKL kept something per
    packed row count until the rows were rounded: 1.13-1.16 before, docs/PERFORMANCE.md)."""
    out = _run(str(BENCH / "memory.py"), "--cases", "mixed")
    line = next(line for line in out.splitlines() if line.startswith("ratio large/small:"))
    assert "[mixed, auto]" in line and "60,000 rows" in out, out
    assert float(line.split()[2]) <= 1.15, out


@pytest.mark.slow
def test_incremental_bench_prints_every_case():
    out = _run(str(BENCH / "incremental.py"), "--rows", "40")
    for case in ("night 1", "--append", "--reuse night 1", "--no-dedup", "dedup (default)"):
        assert case in out, out


@pytest.mark.slow
def test_int8_bench_prints_accuracy_speed_and_verdicts():
    pytest.importorskip("onnxruntime")
    args = ["--rows", "8", "--long-rows", "2", "--speed-rows", "8", "--rounds", "1", "--alphas", "0.8"]
    only = "U8U8$|FFN out fp32|FFN out 16 ch|--precision int8"
    out = _run(str(BENCH / "int8.py"), *args, "--splits", "16", "--only", only)
    for name in (
        "minilm-cli --precision int8",
        "torch SQ a=0.8, FFN out 16 ch fp32",
        "torch SQ a=0.8, FFN out fp32",
        "ORT ours SQ a=0.8 U8U8",
        "ONNX Runtime int8 (reference)",
    ):
        assert out.count(name) == 3, out  # accuracy, speed and verdict rows
    assert "verdict per variant" in out and "x ORT int8" in out
