"""Peak resident memory of `minilm embed` against input size: streaming means it stays flat.

    python bench/memory.py [--small 20000] [--large 200000] [--mixed-small 6000]
                           [--mixed-large 60000] [--precision auto[,fp32...]] [--cases short,mixed]

Two cases, each embedded at a small and a large row count, each run in a fresh process with
a tiny random BERT (the model's size is not the point here; its activations and kernels are):

  - short: a text file of short uniform rows (3 to 11 words);
  - mixed: JSONL of real text, bench/data/mixed.jsonl.gz (WordNet glosses and fortunes, mean
    ~23 tokens, tail to 256) at --max-length 256, reshuffled on every pass through the file,
    so batches keep meeting new packed token counts and padded shapes, as a real input does
    (a kernel library that keeps something per new shape grows here, not on short rows).

Every row ends in its number, so deduplication does not shrink the work. Prints each run's
peak RSS (from wait4) and, per case and precision, the ratio large / small. The target is
within 15% (issue 22: mixed rows in the default precision, on every CPU).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from minilm_cli.testing import write_tiny_bert

CORPUS = Path(__file__).resolve().parent / "data" / "mixed.jsonl.gz"
CASES = ("short", "mixed")


def write_short_rows(path: Path, rows: int) -> Path:
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box".split()
    path = path.with_suffix(".txt")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(" ".join(words[(i + k) % len(words)] for k in range(3 + i % 9)) + f" {i}\n")
    return path


def write_mixed_rows(path: Path, rows: int) -> Path:
    corpus = [json.loads(line)["text"] for line in gzip.open(CORPUS, "rt", encoding="utf-8")]
    path = path.with_suffix(".jsonl")
    with open(path, "w", encoding="utf-8") as f:
        i = 0
        for shuffle in range(-(-rows // len(corpus))):
            for k in np.random.default_rng(shuffle).permutation(len(corpus))[: rows - i]:
                f.write(json.dumps({"text": f"{corpus[k]} {i}"}) + "\n")
                i += 1
    return path


def peak_rss_mib(cmd: list[str]) -> float:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode:
        sys.exit(f"run failed ({proc.returncode}): {err}")
    return usage.ru_maxrss / 1024


def run_case(
    case: str, sizes: tuple[int, int], precision: str, work: Path, model: Path, args: argparse.Namespace
) -> float:
    """Both sizes of one case in one precision; prints and returns the ratio large / small."""
    results = {}
    for rows in sizes:
        write = write_mixed_rows if case == "mixed" else write_short_rows
        source = write(work / f"{case}-{rows}", rows)
        cmd = [
            sys.executable,
            "-m",
            "minilm_cli.cli",
            "embed",
            str(source),
            "-o",
            str(work / f"out-{case}-{precision}-{rows}"),
        ]
        cmd += ["--model", str(model), "--device", "cpu", "--precision", precision]
        cmd += ["--shard-rows", str(args.shard_rows), "--quiet"]
        if case == "mixed":
            cmd += ["--max-length", "256"]
        if args.chunk_size:
            cmd += ["--chunk-size", str(args.chunk_size)]
        results[rows] = peak_rss_mib(cmd)
        print(f"{rows:>9,d} rows: peak RSS {results[rows]:7.1f} MiB")
    ratio = results[sizes[1]] / results[sizes[0]]
    bound = "within" if ratio <= 1.15 else "OVER"
    print(f"ratio large/small: {ratio:.3f} ({bound} the 15% bound) [{case}, {precision}]")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=20_000, help="short rows, small run")
    parser.add_argument("--large", type=int, default=200_000, help="short rows, large run")
    parser.add_argument("--mixed-small", type=int, default=6_000, help="mixed rows, small run")
    parser.add_argument("--mixed-large", type=int, default=60_000, help="mixed rows, large run")
    parser.add_argument("--shard-rows", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, help="as embed's --chunk-size (default: embed's)")
    parser.add_argument(
        "--precision", default="auto", help="as embed's --precision, or several: auto,fp32 (default: auto)"
    )
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: short, mixed")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if not cases or set(cases) - set(CASES):
        parser.error(f"--cases takes {', '.join(CASES)}")
    import torch

    from minilm_cli.devices import choose_precision

    precisions = [p for p in args.precision.split(",") if p]
    for precision in precisions:
        print(f"precision {precision} -> {choose_precision(precision, torch.device('cpu'))}")
    work = Path(tempfile.mkdtemp(prefix="minilm-mem-"))
    try:
        model = write_tiny_bert(work / "model", max_positions=256)
        sizes = {"short": (args.small, args.large), "mixed": (args.mixed_small, args.mixed_large)}
        for case in cases:
            for precision in precisions:
                print(f"{case} rows, {precision}:")
                run_case(case, sizes[case], precision, work, model, args)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
