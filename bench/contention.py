"""The default thread count against --threads 1 and 2, on a quiet machine and with one core busy.

    python bench/contention.py [--rows 1000] [--rounds 2] [--precision auto]

Each run is `minilm embed` in a fresh process on the mixed corpus (bench/data/mixed.jsonl.gz),
real packaged model; its speed is the rows/s of its summary line (model load excluded).
"busy": a spinning process pinned to core 0, started by the benchmark before the run and
stopped after it; "late": the same spinner started LATE_S seconds into the run (the model has
loaded and batches run: a core taken mid-run). Rounds alternate the order of the conditions
and of the configurations (default, 1, 2), so a neighbour's load on a shared machine falls on
all of them alike; medians are printed. The goal (issue 22): with a busy core the default
>= 0.9 of the faster of --threads 1 and 2; quiet speed unchanged.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "data" / "mixed.jsonl.gz"
CONFIGS = {"default": [], "--threads 1": ["--threads", "1"], "--threads 2": ["--threads", "2"]}
SPIN = "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"
LATE_S = 3.0
CONDITIONS = ("quiet", "busy", "late")


def write_rows(path: Path, rows: int) -> Path:
    texts = [json.loads(line)["text"] for line in gzip.open(CORPUS, "rt", encoding="utf-8")]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(json.dumps({"text": f"{texts[i % len(texts)]} {i}"}) + "\n")
    return path


def embed(source: Path, out: Path, flags: list[str], precision: str, condition: str) -> tuple[float, str]:
    """rows/s of one run, and the end of its summary line (where a tuned thread count shows)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "minilm_cli.cli", "embed", str(source), "-o", str(out)]
    cmd += ["--device", "cpu", "--precision", precision, "--no-dedup", *flags]
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if condition == "busy" else None
    try:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        if condition == "late":
            try:
                proc.wait(LATE_S)
            except subprocess.TimeoutExpired:
                spinner = subprocess.Popen([sys.executable, "-c", SPIN])
        stderr = proc.communicate()[1]
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if proc.returncode:
        sys.exit(f"run failed ({proc.returncode}): {stderr[-500:]}")
    summary = [line for line in stderr.splitlines() if "rows/s" in line][-1]
    rate = float(re.search(r"([\d.]+) rows/s", summary).group(1))
    tail = summary.split("rows/s")[-1]  # a thread count the tuner changed ends the line
    at = tail.find(" threads (")
    return rate, tail[tail.rfind("; ", 0, at) + 2 :] if at >= 0 else ""


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="of quiet,busy,late")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two cores or more")
    conditions = [c for c in args.conditions.split(",") if c in CONDITIONS]
    work = Path(tempfile.mkdtemp(prefix="minilm-contention-"))
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        source = write_rows(work / "rows.jsonl", args.rows)
        for round_ in range(args.rounds):
            order = conditions if round_ % 2 == 0 else conditions[::-1]
            for condition in order:
                names = list(CONFIGS) if round_ % 2 == 0 else list(CONFIGS)[::-1]
                for name in names:
                    rate, tuned = embed(source, work / "out", CONFIGS[name], args.precision, condition)
                    rates.setdefault((condition, name), []).append(rate)
                    line = f"round {round_} {condition:5s} {name:12s} {rate:7.1f} rows/s {tuned}"
                    print(line, flush=True)
    finally:
        shutil.rmtree(work)
    print(f"\nmedian rows/s, {args.rows} mixed rows, {args.rounds} rounds, precision {args.precision}")
    print(f"{'':8s}" + "".join(f"{name:>14s}" for name in CONFIGS) + f"{'default/best':>14s}")
    for condition in conditions:
        med = {name: statistics.median(rates[(condition, name)]) for name in CONFIGS}
        best = max(med["--threads 1"], med["--threads 2"])
        row = "".join(f"{med[name]:14.1f}" for name in CONFIGS)
        print(f"{condition:8s}{row}{med['default'] / best:13.2f}x")


if __name__ == "__main__":
    main()
