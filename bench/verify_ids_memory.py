"""Peak RSS of verify's repeated-id check (output.ids.DuplicateScan) over many ids.

    python bench/verify_ids_memory.py --ids 10000000 [--kind str|int] [--baseline-set]

Feeds ids shard by shard (100,000 a shard, as verify does), plants 3 repeats, and prints
the repeats found, the seconds taken and the peak resident memory of this process. With
--baseline-set it does the same with a Python set of every id (the old verify) instead.
"""

from __future__ import annotations

import argparse
import resource
import time

import pyarrow as pa

from minilm_cli.output.ids import DuplicateScan


def shards(total: int, size: int, kind: str):
    for start in range(0, total, size):
        stop = min(total, start + size)
        values = list(range(start, stop))
        if start == size * 3:  # plant 3 repeats of ids from the first shard
            values[:3] = [0, 1, 2]
        yield pa.array(values) if kind == "int" else pa.array([f"doc-{v:012d}" for v in values])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--shard", type=int, default=100_000)
    parser.add_argument("--kind", choices=["str", "int"], default="str")
    parser.add_argument("--baseline-set", action="store_true")
    args = parser.parse_args()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if args.baseline_set:
        seen: set = set()
        repeats = 0
        for ids in shards(args.ids, args.shard, args.kind):
            values = ids.to_pylist()
            repeats += len(seen.intersection(values))
            seen.update(values)
    else:
        scan = DuplicateScan()
        for ids in shards(args.ids, args.shard, args.kind):
            scan.add(ids)
        repeats = scan.repeats().total
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    how = "python set" if args.baseline_set else "DuplicateScan"
    print(
        f"{how}: {args.ids:,} {args.kind} ids, {repeats} repeats found, "
        f"{time.perf_counter() - t:.1f} s, peak RSS {peak / 1024:.0f} MB (at start {base / 1024:.0f} MB)"
    )


if __name__ == "__main__":
    main()
