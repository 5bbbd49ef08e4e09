"""--overflow split against truncate on long documents, and peak RSS of a 10 MB single line.

    python bench/windows.py [--docs 32] [--words 1200] [--rounds 2] [--line-mb 10] [--model DIR]

Part 1 (throughput, in one process, model loaded once): the same corpus of long documents
through `run_job` with --overflow truncate and --overflow split, alternating, median of
--rounds. Prints embedded tokens per second for each (the model's work: truncate embeds the
first --max-length tokens of each document, split every window) and split / truncate.
The target is split within 10% of truncate.

Part 2 (memory): `minilm embed --overflow split` in a fresh process on one text line of
--line-mb megabytes, and on a one-line file for the baseline; peak RSS from wait4. A tiny
random BERT runs the model there (its activations are not the point; the windows are).
--stub-model replaces the model's forward pass by zeros (reading, windowing, chunking,
batching and writing all run; on a busy CPU the tiny model alone takes minutes on 10 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_docs(path: Path, docs: int, words: int) -> None:
    vocab = (REPO / "sample_data" / "glosses.txt").read_text(encoding="utf-8").split()
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choices(vocab, k=words))}) + "\n")


def throughput(args: argparse.Namespace, work: Path) -> None:
    from minilm_cli.config import EmbedConfig
    from minilm_cli.model import Embedder
    from minilm_cli.pipeline import run_job

    source = work / "docs.jsonl"
    write_docs(source, args.docs, args.words)
    embedder = Embedder(model=args.model, device=args.device, precision=args.precision)
    rates: dict[str, list[float]] = {"truncate": [], "split": []}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for mode in rates:
            out = str(work / f"out-{mode}")
            cfg = EmbedConfig([str(source)], out, overflow=mode, overwrite=True, quiet=True)
            start = time.perf_counter()
            result = run_job(cfg, embedder=embedder)
            seconds = time.perf_counter() - start
            if round_:
                rates[mode].append(result.tokens / seconds)
            print(
                f"  round {round_} {mode:8s} {result.rows:6d} rows {result.tokens:8d} tokens "
                f"{seconds:6.1f} s {result.tokens / seconds:8.0f} tokens/s",
                file=sys.stderr,
            )
    truncate, split = (statistics.median(rates[m]) for m in ("truncate", "split"))
    info = embedder.info()
    print(f"corpus: {args.docs} documents of {args.words} words; device {info['device']} {info['precision']}")
    print(f"truncate {truncate:9.0f} tokens/s")
    print(f"split    {split:9.0f} tokens/s   ({split / truncate:.1%} of truncate)")


RUN = "import sys; from minilm_cli.cli import main; sys.argv[0] = 'minilm'; main()"
STUB = (
    "import sys, numpy as np, minilm_cli.model as m; "
    "m.Embedder.run = lambda self, c, on_batch=None: np.zeros((len(c.ids), self.dim), np.float32); "
    "from minilm_cli.cli import main; sys.argv[0] = 'minilm'; main()"
)


def peak_rss_mib(cmd: list[str]) -> float:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"run failed: {err}")
    return usage.ru_maxrss / 1024


def memory(args: argparse.Namespace, work: Path) -> None:
    from minilm_cli.testing import write_tiny_bert

    model = write_tiny_bert(work / "tiny")
    vocab = (REPO / "sample_data" / "glosses.txt").read_text(encoding="utf-8").split()
    rng = random.Random(1)
    big = work / "line.txt"
    with open(big, "w", encoding="utf-8") as f:
        size = 0
        while size < args.line_mb * 1_000_000:
            chunk = " ".join(rng.choices(vocab, k=10_000)) + " "
            f.write(chunk)
            size += len(chunk.encode())
        f.write("\n")
    small = work / "small.txt"
    small.write_text("one short line\n", encoding="utf-8")
    for name, source in (("one short line", small), (f"{args.line_mb:g} MB single line", big)):
        cmd = [sys.executable, "-c", STUB if args.stub_model else RUN, "embed", str(source)]
        cmd += ["-o", str(work / name[:3]), "--overwrite"]
        cmd += ["--model", str(model), "--overflow", "split", "--device", "cpu", "--precision", "fp32", "-q"]
        start = time.perf_counter()
        rss = peak_rss_mib(cmd)
        print(f"peak RSS {rss:7.1f} MiB  {name} ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--words", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--line-mb", type=float, default=10)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--stub-model", action="store_true", help="memory: zeros for the forward pass")
    parser.add_argument("--skip", choices=["throughput", "memory"], default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minilm-windows-"))
    if args.skip != "throughput":
        throughput(args, work)
    if args.skip != "memory":
        memory(args, work)


if __name__ == "__main__":
    main()
