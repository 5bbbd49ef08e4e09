"""Incremental runs: what a nightly job pays for the rows it has already embedded.

    python bench/incremental.py [--rows 20000] [--new 0.1] [--dups 0.3]

Real English rows (bench/data/mixed.jsonl.gz, cycled with a row number so every row is a
distinct text) and the packaged all-MiniLM-L6-v2 on this CPU, each run a fresh `minilm embed`
process, timed end to end (model load included):

  1. night 1: the corpus (ROWS rows) into OUTPUT
  2. night 2 with --append: the same file plus a new file of ROWS x NEW rows
  3. night 2 with --reuse: a new OUTPUT from both files, reusing night 1's vectors (a copy of
     night 1's OUTPUT taken before step 2, so the new rows go through the model here too)
  4. a corpus where DUPS of the rows repeat other rows, with and without --no-dedup

Prints each wall time and the ratios the issue sets targets for (night 2 / night 1 <= 15%).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).parent / "data" / "mixed.jsonl.gz"


def texts(n: int, offset: int = 0) -> list[str]:
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        base = [json.loads(line)["text"] for line in f]
    return [f"{base[(offset + i) % len(base)]} ({offset + i})" for i in range(n)]


def write(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(r.replace("\n", " ") + "\n" for r in rows), encoding="utf-8")
    return path


def embed(*args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "minilm_cli.cli", "embed", *args, "--device", "cpu", "-q"],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        sys.exit(f"minilm embed {' '.join(args)} failed: {proc.stderr.strip()}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--new", type=float, default=0.1)
    parser.add_argument("--dups", type=float, default=0.3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minilm-incremental-"))
    try:
        data = work / "data"
        data.mkdir()
        write(data / "night1.txt", texts(args.rows))
        one = embed(str(data), "-o", str(work / "out"), "--append")
        shutil.copytree(work / "out", work / "night1")  # what --reuse reads: night 1 only
        write(data / "night2.txt", texts(int(args.rows * args.new), offset=args.rows))
        appended = embed(str(data), "-o", str(work / "out"), "--append")
        reused = embed(str(data), "-o", str(work / "reuse"), "--reuse", str(work / "night1"))
        print(f"night 1, {args.rows} rows:                    {one:7.1f} s")
        print(
            f"night 2, +{args.new:.0%} rows, --append:           {appended:7.1f} s  "
            f"{appended / one:6.1%} of night 1"
        )
        print(f"night 2, all rows, --reuse night 1:       {reused:7.1f} s  {reused / one:6.1%} of night 1")

        distinct = texts(int(args.rows * (1 - args.dups)))
        repeats = [distinct[i % len(distinct)] for i in range(args.rows - len(distinct))]
        write(work / "dups.txt", distinct + repeats)
        plain = embed(str(work / "dups.txt"), "-o", str(work / "plain"), "--no-dedup")
        dedup = embed(str(work / "dups.txt"), "-o", str(work / "dedup"))
        print(f"{args.dups:.0%} repeated rows, --no-dedup:          {plain:7.1f} s")
        print(
            f"{args.dups:.0%} repeated rows, dedup (default):     {dedup:7.1f} s  "
            f"{dedup / plain:6.1%} of --no-dedup"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
