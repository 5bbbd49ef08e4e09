"""Throughput of minilm-cli against sentence-transformers, in one process, on real text.

    python bench/throughput.py [--rows 4000] [--rounds 3] [--device cpu]

Table 1 (engine): the same texts through
  - sentence-transformers `encode` at its defaults (fp32, batch 32): the reference,
  - sentence-transformers `encode` with the model in bf16 (the fairest rival on a bf16 CPU),
  - our Embedder at its defaults,
alternating, after a warm-up; the median of --rounds. Min cosine is against the fp32
sentence-transformers embeddings.

Table 2 (end to end, file to file): read a JSONL file, embed, write Parquet:
  - sentence-transformers: pyarrow read + encode + pyarrow write (what a user would script),
  - `minilm embed` in-process (run_job, model loaded once beforehand, as in a long job).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "mixed.jsonl.gz"


def load_texts(rows: int) -> list[str]:
    texts = [json.loads(line)["text"] for line in gzip.open(CORPUS, "rt", encoding="utf-8")]
    while len(texts) < rows:
        texts += texts
    return texts[:rows]


def st_padding_efficiency(texts: list[str], lengths: np.ndarray, batch: int = 32) -> float:
    """sentence-transformers sorts by character length (not tokens), then pads each batch of 32."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    padded = sum(
        len(part) * lengths[part].max()
        for part in (order[i : i + batch] for i in range(0, len(order), batch))
    )
    return float(lengths.sum()) / padded


def timed(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def engine_table(texts: list[str], device: str, rounds: int, compile: bool = False) -> list[dict]:
    import torch
    from sentence_transformers import SentenceTransformer

    from minilm_cli.model import Embedder, resolve_model

    path = resolve_model(None).path
    st = SentenceTransformer(path, device=device)
    st_bf16 = SentenceTransformer(path, device=device, model_kwargs={"torch_dtype": torch.bfloat16})
    ours = Embedder(device=device)
    tok = ours.tokenize(texts)
    tokens = tok.real_tokens
    engines = {
        "sentence-transformers fp32 (batch 32)": lambda: st.encode(
            texts, batch_size=32, normalize_embeddings=True
        ),
        "sentence-transformers bf16 (batch 32)": lambda: np.asarray(
            st_bf16.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_tensor=True)
            .float()
            .cpu()
        ),
        f"minilm-cli defaults ({ours.precision})": lambda: ours.embed(texts),
    }
    if compile:  # the warm-up below pays the compilation, as a long job would once
        compiled = Embedder(device=device, compile=True)
        engines[f"minilm-cli --compile ({compiled.precision})"] = lambda: compiled.embed(texts)
    for fn in engines.values():  # warm-up: every kernel and shape once
        fn()
    results = {name: [] for name in engines}
    outputs = {}
    for _ in range(rounds):  # alternate, so drift in machine speed hits all alike
        for name, fn in engines.items():
            seconds, outputs[name] = timed(fn, 1)
            results[name].append(seconds)
    reference = outputs["sentence-transformers fp32 (batch 32)"]
    st_eff = st_padding_efficiency(texts, tok.lengths)
    rows = []
    for name, times in results.items():
        seconds = statistics.median(times)
        cosine = (np.asarray(outputs[name], dtype=np.float32) * reference).sum(axis=1)
        eff = tok.real_tokens / tok.padded_tokens if name.startswith("minilm") else st_eff
        rows.append(
            {
                "engine": name,
                "seconds": seconds,
                "rows_per_s": len(texts) / seconds,
                "tokens_per_s": tokens / seconds,
                "padding_eff": eff,
                "min_cosine": float(cosine.min()),
            }
        )
    return rows


def end_to_end_table(texts: list[str], device: str, rounds: int) -> list[dict]:
    import pyarrow as pa
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    from minilm_cli.config import EmbedConfig
    from minilm_cli.model import resolve_model
    from minilm_cli.pipeline import build_embedder, run_job

    work = Path(tempfile.mkdtemp(prefix="minilm-bench-"))
    source = work / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    st = SentenceTransformer(resolve_model(None).path, device=device)

    def st_job() -> None:
        table = pa_json.read_json(source)
        emb = st.encode(table.column("text").to_pylist(), batch_size=32, normalize_embeddings=True)
        values = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        pq.write_table(
            pa.table({"id": pa.array(np.arange(len(emb))), "embedding": values}), work / "st.parquet"
        )

    cfg = EmbedConfig(
        inputs=[str(source)], output=str(work / "ours"), device=device, overwrite=True, quiet=True
    )
    embedder = build_embedder(cfg)

    def our_job() -> None:
        run_job(cfg, embedder=embedder, log=lambda m: None)

    st_job(), our_job()  # warm-up
    times = {"sentence-transformers read+encode+write": [], "minilm embed (run_job)": []}
    for _ in range(rounds):
        times["sentence-transformers read+encode+write"].append(timed(st_job, 1)[0])
        times["minilm embed (run_job)"].append(timed(our_job, 1)[0])
    return [
        {"engine": k, "seconds": statistics.median(v), "rows_per_s": len(texts) / statistics.median(v)}
        for k, v in times.items()
    ]


def print_table(title: str, rows: list[dict], base: float) -> None:
    print(f"\n{title}")
    cols = [c for c in ("rows_per_s", "tokens_per_s", "padding_eff", "min_cosine") if c in rows[0]]
    print(f"{'engine':42s} {'seconds':>8s} " + " ".join(f"{c:>13s}" for c in cols) + f" {'ratio':>7s}")
    for r in rows:
        vals = " ".join(f"{r[c]:13.1f}" if c.endswith("_s") else f"{r[c]:13.5f}" for c in cols)
        print(f"{r['engine']:42s} {r['seconds']:8.2f} {vals} {r['rows_per_s'] / base:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--compile", action="store_true", help="add a row for torch.compile")
    args = parser.parse_args()

    import torch

    texts = load_texts(args.rows)
    print(
        f"{len(texts)} rows of real text ({CORPUS.name}), device {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    rows = engine_table(texts, args.device, args.rounds, args.compile)
    base = rows[0]["rows_per_s"]
    print_table(
        "engine: same texts, in memory (median of rounds; ratio = rows/s over sentence-transformers fp32)",
        rows,
        base,
    )
    if not args.skip_e2e:
        e2e = end_to_end_table(texts, args.device, args.rounds)
        print_table(
            "end to end: JSONL file -> Parquet (ratio over sentence-transformers)", e2e, e2e[0]["rows_per_s"]
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
