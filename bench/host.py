"""The host pipeline against this machine's tokenizer limit, with a model that costs ~nothing.

    python bench/host.py [--rows 40000] [--long-rows 4000] [--workers 0,1,2,0r] [--model tiny,zeros]
                         [--overflow truncate|split|mean] [--max-length 256]

What it measures: `minilm embed` end to end (run_job, in-process: read, check, tokenize, pad,
model call, write) with a near-free model, at --max-length 256 (--overflow split/mean: long
texts become windows, tokenized on the host workers too), so what is left is the host's
work: `tiny` is the random BERT of `minilm_cli.testing` (hidden 32, 2 layers) on one torch
thread (a hidden-32 network gains nothing from a second one, and torch's spinning pool on a
shared core would be measured instead of the host); `zeros` is the same Embedder whose model
call returns zeros of its dim (the batches are still planned and padded). Both use the real
packaged tokenizer (30,522 ids).

Beside it, in the same run, the TOKENIZER LIMIT: the packaged tokenizer alone on the same
texts, all cores (TOKENIZERS_PARALLELISM=true), in pieces of --chunk-size: `encode_batch` (the
limit the goals name) and `encode_batch_fast` (no character offsets; what the pipeline calls
where the library has it). of_limit = pipeline tokens/s over encode_batch's. The ratio travels
between machines; rows/s do not (and on a shared machine, neither is steady: compare rows of
one run).

Corpora (as bench/throughput.py): mixed = bench/data/mixed.jsonl.gz (mean ~23 tokens, tail to
256), long = paragraphs of 100..256 tokens joined from it; each row numbered (no repeats to
deduplicate). Each is written as JSONL and as Parquet, and run per --host-workers count (0 =
tokenize on the reader thread; N = N tokenizing threads; a trailing "r" also turns on the
tokenizer's own parallelism). Per stage: seconds as `stage_seconds` records them (summed over
threads, so they can add up to more than the wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import load_texts, long_texts  # noqa: E402

STAGES = ("read", "check", "tokenize", "pad", "model", "write")


def write_inputs(work: Path, name: str, texts: list[str]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = work / f"{name}.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": text}) + "\n" for text in texts)
    parquet = work / f"{name}.parquet"
    pq.write_table(pa.table({"text": texts}), parquet, row_group_size=8192)
    return {"jsonl": jsonl, "parquet": parquet}


def tokenizer_limit(tokenizer, texts: list[str], chunk: int, rounds: int, method: str) -> tuple[float, int]:
    """Best seconds over ``rounds`` of ``method`` on all cores, and the tokens it made."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    encode = getattr(tokenizer, method)
    best, tokens = float("inf"), 0
    for _ in range(rounds):
        t = time.perf_counter()
        tokens = sum(len(e) for i in range(0, len(texts), chunk) for e in encode(texts[i : i + chunk]))
        best = min(best, time.perf_counter() - t)
    return best, tokens


def zeros_run(dim: int):
    def run(chunk, on_batch=None) -> np.ndarray:
        return np.zeros((len(chunk.ids), dim), dtype=np.float32)

    return run


def run_pipeline(source: Path, model_dir: Path, out: Path, spec: str, model: str, args: argparse.Namespace):
    import dataclasses

    from minilm_cli.config import EmbedConfig
    from minilm_cli.pipeline import build_embedder, run_job

    # (an EmbedConfig from before --host-workers runs with its reader-thread tokenizer: A/B runs)
    known = {f.name for f in dataclasses.fields(EmbedConfig)}
    workers = {"host_workers": int(spec.rstrip("r"))} if "host_workers" in known else {}
    cfg = EmbedConfig(
        inputs=[str(source)],
        output=str(out),
        model=str(model_dir),
        device="cpu",
        precision="fp32",
        max_length=args.max_length,
        chunk_size=args.chunk_size,
        overflow=args.overflow,
        overwrite=True,
        quiet=True,
        threads=1,
        **workers,
    )
    embedder = build_embedder(cfg)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if spec.endswith("r") else "false"
    if model == "zeros":
        embedder.run = zeros_run(embedder.dim)
    best = None
    for _ in range(args.rounds):
        result = run_job(cfg, embedder=embedder, log=lambda m: None)
        if best is None or result.seconds < best.seconds:
            best = result
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=40_000, help="rows of the mixed corpus")
    parser.add_argument("--long-rows", type=int, default=4_000, help="paragraphs of the long corpus")
    parser.add_argument(
        "--workers", default="0,1,2,0r", help="--host-workers counts (r: tokenizer's pool on)"
    )
    parser.add_argument("--model", default="tiny,zeros", help="tiny, zeros or both")
    parser.add_argument("--formats", default="jsonl,parquet")
    parser.add_argument("--corpora", default="mixed,long")
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=1, help="best of this many runs per row")
    parser.add_argument("--overflow", default="truncate", help="the runs' --overflow (split, mean)")
    parser.add_argument("--max-length", type=int, default=256, help="--max-length of the pipeline runs")
    args = parser.parse_args()

    from minilm_cli.model.loading import load_tokenizer
    from minilm_cli.model.source import resolve_model
    from minilm_cli.testing import write_tiny_bert

    work = Path(tempfile.mkdtemp(prefix="minilm-host-"))
    try:
        model_dir = write_tiny_bert(work / "model", max_seq_length=256, max_positions=256)
        tokenizer, _ = load_tokenizer(resolve_model(None).path, 256)
        print(
            f"cores {os.cpu_count()}; tiny BERT (hidden 32) with the packaged tokenizer "
            f"({tokenizer.get_vocab_size()} ids); max-length {args.max_length}; "
            f"overflow {args.overflow}; chunk {args.chunk_size}"
        )
        wanted = args.corpora.split(",")
        corpora = {}
        if "mixed" in wanted:
            corpora["mixed"] = load_texts(args.rows)
        if "long" in wanted:
            corpora["long"] = long_texts(args.long_rows, tokenizer)
        for name, texts in corpora.items():
            texts = [f"{t} {i}" for i, t in enumerate(texts)]
            inputs = write_inputs(work, name, texts)
            print_limit_and_runs(name, texts, inputs, tokenizer, model_dir, work, args)
    finally:
        shutil.rmtree(work)


def print_limit_and_runs(name, texts, inputs, tokenizer, model_dir, work, args) -> None:
    rounds = max(args.rounds, 2)
    seconds, tokens = tokenizer_limit(tokenizer, texts, args.chunk_size, rounds, "encode_batch")
    fast, _ = tokenizer_limit(tokenizer, texts, args.chunk_size, rounds, "encode_batch_fast")
    limit = tokens / seconds
    print(
        f"\n{name}: {len(texts)} rows, {tokens} tokens; TOKENIZER LIMIT (all cores) encode_batch "
        f"{len(texts) / seconds:,.0f} rows/s = {limit:,.0f} tokens/s; encode_batch_fast "
        f"{len(texts) / fast:,.0f} rows/s = {tokens / fast:,.0f} tokens/s"
    )
    print(
        f"{'corpus':6s} {'model':5s} {'input':8s} {'workers':>7s} {'rows/s':>9s} {'tokens/s':>10s} "
        f"{'of_limit':>8s} " + " ".join(f"{s:>8s}" for s in STAGES)
    )
    for model in args.model.split(","):
        for fmt in args.formats.split(","):
            for spec in args.workers.split(","):
                r = run_pipeline(inputs[fmt], model_dir, work / "out", spec, model, args)
                rate = r.tokens / r.seconds
                cells = " ".join(f"{r.stage_seconds.get(s, 0.0):8.2f}" for s in STAGES)
                print(
                    f"{name:6s} {model:5s} {fmt:8s} {spec:>7s} {r.rows / r.seconds:9,.0f} {rate:10,.0f} "
                    f"{rate / limit:8.2f} {cells}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
