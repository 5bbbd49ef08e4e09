"""Peak resident memory of `minilm embed` against input size: streaming means it stays flat.

    python bench/memory.py [--small 20000] [--large 200000]

Writes two text files of short rows, embeds each in a fresh process with a tiny random BERT
(the model's size is not the point here; its activations are), and prints each run's peak
RSS (from wait4) and the ratio large / small. The target is within 15%.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from minilm_cli.testing import write_tiny_bert


def write_rows(path: Path, rows: int) -> None:
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(" ".join(words[(i + k) % len(words)] for k in range(3 + i % 9)) + f" {i}\n")


def peak_rss_mib(cmd: list[str]) -> tuple[float, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode:
        sys.exit(f"run failed ({proc.returncode}): {err}")
    return usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minilm-mem-"))
    model = write_tiny_bert(work / "model")
    results = {}
    for rows in (args.small, args.large):
        source = work / f"rows-{rows}.txt"
        write_rows(source, rows)
        cmd = [
            sys.executable,
            "-m",
            "minilm_cli.cli",
            "embed",
            str(source),
            "-o",
            str(work / f"out-{rows}"),
            "--model",
            str(model),
            "--device",
            "cpu",
            "--shard-rows",
            str(args.shard_rows),
            "--quiet",
        ]
        results[rows], _ = peak_rss_mib(cmd)
        print(f"{rows:>9,d} rows: peak RSS {results[rows]:7.1f} MiB")
    ratio = results[args.large] / results[args.small]
    print(f"ratio large/small: {ratio:.3f} ({'within' if ratio <= 1.15 else 'OVER'} the 15% bound)")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
