"""Static sharding for job arrays: N independent runs that cover every row exactly once.

The inputs, in order, are laid end to end by weight (bytes; uncompressed row-group bytes
for Parquet) and cut into N equal stretches. Worker I reads the splits in stretch I:
byte ranges of uncompressed CSV/TSV/JSONL/text (a record belongs to the range holding its
first byte; for CSV/TSV, whose quoted cells may hold newlines, sources/boundaries.py finds
the record starts), whole Parquet row groups, and whole compressed files (they cannot be cut
without decompressing), each given to the stretch where it starts.

Default ids are row numbers over all inputs, so worker I first counts the records before
its stretch (Parquet: from metadata; text formats: by reading, not embedding, them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import InputError
from .sources import Columns, InputFile, Split, read_file
from .sources.parquet import open_parquet


def shard_from_env(
    num_shards: int | None, shard_index: int | None, env: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """(num_shards, shard_index): flags win, then Slurm arrays, Kubernetes indexed Jobs, torchrun."""
    env = os.environ if env is None else env
    count, index = None, None
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        count = _env_int(env, "SLURM_ARRAY_TASK_COUNT", 1, MAX_SHARDS)
        first = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0) if "SLURM_ARRAY_TASK_MIN" in env else 0
        index = _env_int(env, "SLURM_ARRAY_TASK_ID", 0) - first
    elif "JOB_COMPLETION_INDEX" in env:  # Kubernetes does not export the completion count
        index = _env_int(env, "JOB_COMPLETION_INDEX", 0)
    elif "RANK" in env and "WORLD_SIZE" in env:
        count, index = _env_int(env, "WORLD_SIZE", 1, MAX_SHARDS), _env_int(env, "RANK", 0)
    count = num_shards if num_shards is not None else count
    index = shard_index if shard_index is not None else index
    count = 1 if count is None else count
    index = 0 if index is None else index
    if count < 1 or not 0 <= index < count:
        raise InputError(f"shard index {index} is outside 0..{count - 1} (--num-shards {count})")
    return count, index


MAX_SHARDS = 1 << 20  # as the CLI's --num-shards allows


def _env_int(env: Mapping[str, str], name: str, least: int, most: int = 2**31 - 1) -> int:
    """A scheduler's variable as a whole number, or an InputError naming it."""
    raw = env[name]
    try:
        value: int | None = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not least <= value <= most:
        shown = raw.encode("unicode_escape").decode("ascii")[:40]
        raise InputError(
            f"environment variable {name}={shown!r} is not a whole number from {least} to {most}: "
            "fix it or pass --num-shards and --shard-index"
        )
    return value


def _atoms(f: InputFile) -> list[tuple[Split, int]]:
    """(split, weight) pieces a file can be cut into; byte-range files are one cuttable piece."""
    if f.format == "parquet":
        with open_parquet(f) as pf:
            meta = pf.metadata
        groups = meta.num_row_groups
        return [
            (Split(f, "row_groups", g, g + 1, groups), max(1, meta.row_group(g).total_byte_size))
            for g in range(groups)
        ]
    if f.compression:
        return [(Split(f, "whole"), max(1, f.size or 1))]
    return [(Split(f, "bytes", 0, f.size or 0, f.size or 0), max(1, f.size or 1))]


def plan_splits(files: list[InputFile], num_shards: int) -> list[list[Split]]:
    """The splits of every worker, in input order; together they tile every input once."""
    if num_shards > 1 and any(f.is_stdin for f in files):
        raise InputError("stdin cannot be sharded: pass files with --num-shards")
    if num_shards == 1:
        return [[Split(f, "whole") for f in files]]
    atoms = [atom for f in files for atom in _atoms(f)]
    total = sum(w for _, w in atoms)
    bounds = [i * total // num_shards for i in range(num_shards + 1)]
    plan: list[list[Split]] = [[] for _ in range(num_shards)]
    offset = 0
    for split, weight in atoms:
        if split.kind == "bytes":
            for rank in range(num_shards):
                lo, hi = max(bounds[rank], offset), min(bounds[rank + 1], offset + weight)
                if lo < hi:
                    plan[rank].append(Split(split.file, "bytes", lo - offset, hi - offset, split.extent))
        else:
            plan[_rank_of(offset, bounds)].append(split)
        offset += weight
    return [_merge_adjacent(splits, "row_groups") for splits in plan]


def _rank_of(offset: int, bounds: list[int]) -> int:
    for rank in range(len(bounds) - 1):
        if bounds[rank] <= offset < bounds[rank + 1]:
            return rank
    return len(bounds) - 2


def _merge_adjacent(splits: list[Split], kind: str) -> list[Split]:
    """Splits of ``kind`` that follow on in one file, as one split."""
    merged: list[Split] = []
    for s in splits:
        last = merged[-1] if merged else None
        if last and s.kind == last.kind == kind and s.file == last.file and s.start == last.end:
            merged[-1] = Split(s.file, kind, last.start, s.end, s.extent)
        else:
            merged.append(s)
    return merged


def count_records(splits: list[Split], columns: Columns, encoding_errors: str) -> int:
    """Records in these splits, as the reader numbers them (read, not embedded)."""
    total = 0
    # Adjacent byte ranges of one file as one: the records of a CSV range are found by
    # scanning from the file's start (sources/boundaries.py), so one range costs one scan.
    for split in _merge_adjacent(splits, "bytes"):
        if split.file.format == "parquet" and split.kind == "row_groups":
            with open_parquet(split.file) as pf:
                meta = pf.metadata
            total += sum(meta.row_group(g).num_rows for g in range(split.start, split.end))
            continue
        for raw in read_file(split.file, columns, 65536, encoding_errors, split):
            total += len(raw)
    return total


def coverage_problems(parts: list[dict]) -> list[str]:
    """Do the manifest parts' splits tile every input once, and their records follow on, in
    every generation (--append adds one to every part: output/array_append.py)?"""
    problems = []
    counts = {p["settings"]["plan"]["num_shards"] for p in parts}
    if len(counts) != 1:
        return [f"manifest parts disagree on --num-shards: {sorted(counts)}"]
    (count,) = counts
    indexes = sorted(p["settings"]["plan"]["shard_index"] for p in parts)
    missing = sorted(set(range(count)) - set(indexes))
    if missing:
        problems.append(f"manifest parts missing for shard index(es) {missing} of {count}")
    if len(indexes) != len(set(indexes)):
        problems.append("two manifest parts claim the same shard index")
    parts = sorted(parts, key=lambda p: p["settings"]["plan"]["shard_index"])
    problems += _generation_problems(parts)
    if problems:
        return problems
    for number in range(len(parts[0].get("generations", [])) or 1):
        stretches = [(_index(p), *_stretch(p, number)) for p in parts]
        problems += _tiling_problems([s for _, splits, _, _ in stretches for s in splits])
        for (i, _, _, end), (j, _, start, _) in zip(stretches, stretches[1:]):
            if end is not None and start is not None and end != start:
                where = f" in generation {number + 1}" if number else ""
                problems.append(
                    f"records of shard index {i} end at {end} but index {j} starts at {start}{where}"
                )
    return problems


def _index(part: dict) -> int:
    return part["settings"]["plan"]["shard_index"]


def _stretch(part: dict, number: int) -> tuple[list[dict], int | None, int | None]:
    """(splits, first record, record end) of a part in generation ``number`` (0-based); the
    first generation's splits are the part's assignment."""
    gens = part.get("generations", [])
    if number:
        gen = gens[number]
        return gen.get("splits", []), gen.get("record_start"), gen.get("record_end")
    assignment = part.get("assignment", {})
    gen = gens[0] if gens else {}
    start = gen.get("record_start", assignment.get("record_start"))
    return assignment.get("splits", []), start, gen.get("record_end", assignment.get("record_end"))


def _generation_problems(parts: list[dict]) -> list[str]:
    """Every part must have run the same generations, each with the same plan."""
    counts = {_index(p): max(len(p.get("generations", [])), 1) for p in parts}
    most = max(counts.values(), default=1)
    behind = [i for i, n in counts.items() if n < most]
    if behind:
        return [
            f"shard index {behind[0]} has {counts[behind[0]]} generation(s), others {most}: "
            "run it again with --append"
        ]
    problems = []
    for number in range(1, most):
        plans = [(_index(p), _same_plan(p["generations"][number].get("plan"))) for p in parts]
        for i, plan in plans[1:]:
            if plan != plans[0][1]:
                problems.append(
                    f"shard indexes {plans[0][0]} and {i} planned generation {number + 1} differently "
                    "(inputs changed while the parts started it); embed OUTPUT anew"
                )
                break
    return problems


def _same_plan(plan: dict | None) -> dict | None:
    return None if plan is None else {k: v for k, v in plan.items() if k != "planned_by"}


def _tiling_problems(splits: list[dict]) -> list[str]:
    by_path: dict[str, list[dict]] = {}
    for s in splits:
        by_path.setdefault(s["path"], []).append(s)
    problems = []
    for path, pieces in by_path.items():
        kinds = {s["kind"] for s in pieces}
        if kinds == {"whole"}:
            if len(pieces) != 1:
                problems.append(f"{path} is read whole by {len(pieces)} workers")
            continue
        pieces.sort(key=lambda s: s["start"])
        expect = 0
        for s in pieces:
            if s["start"] != expect:
                what = "overlaps" if s["start"] < expect else "leaves a gap"
                problems.append(
                    f"{path}: {s['kind']} {s['start']}..{s['end']} {what} (expected start {expect})"
                )
            expect = max(expect, s["end"])
        if expect != pieces[-1].get("extent", expect):
            problems.append(f"{path}: covered up to {expect} of {pieces[-1]['extent']}")
    return problems
