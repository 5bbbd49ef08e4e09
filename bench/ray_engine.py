"""The Ray Data engine against the local engine on one machine: what Ray adds.

    python bench/ray_engine.py [--rows 4000] [--concurrency 1]

Writes the benchmark corpus to a JSONL file and runs `minilm embed` on it as a user would
(a fresh process each, model load and, for Ray, cluster start included), then prints each
run's wall time, the rows/s of its own summary line (embedding and writing only), and the ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import load_texts  # noqa: E402


def run(cmd: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    found = re.search(r"([\d.]+) s, (\d+) rows/s", proc.stderr)
    return wall, float(found.group(2)) if found else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minilm-ray-"))
    source = work / "corpus.jsonl"
    source.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in load_texts(args.rows)), encoding="utf-8"
    )
    base = [sys.executable, "-m", "minilm_cli.cli", "embed", str(source), "--device", "cpu"]
    runs = {
        "local engine": base + ["-o", str(work / "local")],
        f"ray engine (concurrency {args.concurrency})": base
        + ["-o", str(work / "ray"), "--engine", "ray", "--concurrency", str(args.concurrency)],
    }
    print(f"{args.rows} rows, one process per run (start-up included in wall)")
    print(f"{'engine':32s} {'wall s':>8s} {'rows/s (wall)':>14s} {'rows/s (summary)':>17s}")
    first = None
    for name, cmd in runs.items():
        wall, summary = run(cmd)
        first = first or wall
        print(f"{name:32s} {wall:8.1f} {args.rows / wall:14.0f} {summary:17.0f}   wall x{wall / first:.2f}")


if __name__ == "__main__":
    main()
