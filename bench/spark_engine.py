"""The Spark engine (local Spark) against the local engine on one machine: what Spark adds.

    python bench/spark_engine.py [--rows 4000] [--master local[2]]

Rows: the local engine; the Spark engine's parts mode (the file read by the tasks, one part per
task) and its driver mode (the same file on stdin: read and tokenized on the driver).
Writes the benchmark corpus to a JSONL file, then, for each engine in this one process: a
start-up run on 256 rows (the local engine: model load; Spark: session start, Python workers
and their model load, timed apart), then the measured run on all rows with everything warm;
the local engine once more at the end (the load on a shared machine moves).
Prints start-up seconds, the measured run's wall seconds and rows/s, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from throughput import load_texts  # noqa: E402

WARM_UP = 256  # rows: several batches, so every local[2] worker starts and loads the model


def embed(source: Path, out: Path, extra: list[str], stdin: bool = False) -> float:
    """One run; ``stdin``: the file is piped in, which keeps the Spark engine in driver mode."""
    from click.testing import CliRunner

    from minilm_cli.cli import main

    started = time.perf_counter()
    read = ["-", "--input-format", "jsonl"] if stdin else [str(source)]
    args = ["embed", *read, "-o", str(out), "--device", "cpu", "--precision", "fp32", "-q", *extra]
    result = CliRunner().invoke(main, args, input=source.read_bytes() if stdin else None)
    if result.exit_code:
        sys.exit(f"failed ({result.exit_code}): {' '.join(args)}\n{result.output[-2000:]}")
    return time.perf_counter() - started


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minilm-spark-"))
    texts = load_texts(args.rows)
    small, full = write_jsonl(work / "small.jsonl", texts[:WARM_UP]), write_jsonl(work / "full.jsonl", texts)

    rows = {}
    startup = embed(small, work / "local-small", [])
    rows["local engine"] = (startup, embed(full, work / "local", []))

    from minilm_cli.spark import spark_session

    started = time.perf_counter()
    spark_session(args.master)
    session = time.perf_counter() - started
    spark = ["--engine", "spark"]
    workers = embed(small, work / "spark-small", spark)
    rows[f"spark parts ({args.master})"] = (session + workers, embed(full, work / "spark", spark))
    rows[f"spark driver ({args.master})"] = (0.0, embed(full, work / "spark-driver", spark, stdin=True))
    # once more after Spark: on a shared machine the load moves, and this shows by how much
    rows["local engine, again"] = (startup, embed(full, work / "local-again", []))

    print(f"{args.rows} rows, CPU, fp32; start-up: a {WARM_UP}-row run (Spark: {session:.1f} s session")
    print(f"+ {workers:.1f} s first job: Python workers, their model load); measured: the next run, warm")
    print(f"{'engine':28s} {'start-up s':>10s} {'run s':>8s} {'rows/s':>8s}")
    base = None
    for name, (start, run) in rows.items():
        base = base or args.rows / run
        rate = args.rows / run
        print(f"{name:28s} {start:10.1f} {run:8.1f} {rate:8.0f}   x{rate / base:.2f}")


if __name__ == "__main__":
    main()
