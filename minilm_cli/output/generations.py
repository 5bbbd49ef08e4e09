"""--append: each run that adds to an OUTPUT is a generation of its manifest.

    doc["generations"] = [
      {"generation": 1, "started": ..., "inputs": [fingerprints embedded], "first_shard": 0,
       "record_start": 0, "record_end": 1200,
       "input_records": [{"path": "/data/a.txt", "start": 0, "end": 700}, ...]},   # set when it ends
      {"generation": 2, ...},
    ]
    a shard entry gains "superseded": G when generation G re-embedded its rows.

Inputs are named by their key (storage/identity.py: a real path, or a normalised URL), so a
file spelled another way, or from another directory, is the same input. An input whose key,
size and modification time are already recorded is skipped. A new input
is embedded in the new generation, after the existing shards. An input that changed is
embedded again, and so is every unchanged input that shares a shard with it (a shard is
superseded whole), so that the current shards hold every input's rows exactly once. Readers
(open_dataset, finished_files, verify) read only shards that are not superseded.

The parts of a job array each keep their own generations; plan_parts plans the next one over
all of them (see array_append.py), and a part's entry also records its "splits" and the "plan".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class AppendPlan:
    """What a new generation embeds, and which existing shards it replaces."""

    embed: list[str]  # input paths, in input order
    superseded: list[int]  # shard indexes
    new: list[str]
    changed: list[str]
    first: bool = False  # generation 1 (not an append): a plain run over ``embed`` ...
    resume: bool = False  # ... that continues this writer's own unfinished one
    note: str = ""  # why there is nothing to do, when that is worth saying

    @property
    def nothing_to_do(self) -> bool:
        return not self.embed


def current(shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shards a reader sees: those no later generation superseded."""
    return [s for s in shards if not s.get("superseded")]


def plan_append(doc: dict[str, Any], inputs: list[dict[str, Any]]) -> AppendPlan:
    """Compare this run's inputs with what the manifest already holds."""
    plan = plan_parts({0: doc}, inputs)
    return AppendPlan(plan.embed, [index for _, index in plan.superseded], plan.new, plan.changed)


@dataclass
class PartsPlan:
    """AppendPlan over the parts of a job array: superseded shards are (part, index)."""

    embed: list[str]
    superseded: list[tuple[int, int]]
    new: list[str]
    changed: list[str]


def plan_parts(docs: dict[int, dict[str, Any]], inputs: list[dict[str, Any]]) -> PartsPlan:
    """What the next generation embeds, from every part's manifest (one for a single run).
    Records are numbered over all parts, so a shard's span and an input's records compare
    across parts."""
    known: dict[str, dict] = {}
    for part in sorted(docs):
        known.update({f["path"]: f for f in docs[part].get("inputs", [])})
    new = [f["path"] for f in inputs if f["path"] not in known]
    changed = [f["path"] for f in inputs if f["path"] in known and known[f["path"]] != f]
    spans = {(part, index): span for part in docs for index, span in _shard_spans(docs[part]).items()}
    ranges = _input_ranges(list(docs.values()))
    redo, superseded = set(changed), set()
    grew = True
    while grew:  # a superseded shard's other inputs must be embedded again too
        grew = False
        for key, span in spans.items():
            if key in superseded or not any(_overlap(span, ranges.get(p)) for p in redo):
                continue
            superseded.add(key)
            redo |= {p for p, r in ranges.items() if _overlap(span, r)}
            grew = True
    present = {f["path"] for f in inputs}
    missing = sorted(p for p in redo if p not in present)
    if missing:
        from ..errors import InputError

        raise InputError(
            f"--append: {missing[0]} shares shards with a changed input and must be read again, "
            "but it is not among this run's inputs"
        )
    embed = [f["path"] for f in inputs if f["path"] in redo or f["path"] in new]
    return PartsPlan(embed, sorted(superseded), new, changed)


def _shard_spans(doc: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """Current shard index -> [first record, record_end): a generation's first shard starts at
    its record_start, every other shard where the one before it ended."""
    firsts = {g["first_shard"]: g["record_start"] for g in doc.get("generations", [])}
    spans, end = {}, 0
    for shard in sorted(doc.get("shards", []), key=lambda s: s["index"]):
        start = firsts.get(shard["index"], end)
        end = shard["record_end"]
        if not shard.get("superseded"):
            spans[shard["index"]] = (start, end)
    return spans


def _input_ranges(docs: list[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """path -> its [start, end) record ranges (one per split, over every part) in the latest
    generation that embedded it."""
    latest: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    for doc in docs:
        for gen in doc.get("generations", []):
            number = gen["generation"]
            for r in gen.get("input_records", []):
                seen = latest.get(r["path"])
                if seen is None or seen[0] < number:
                    seen = latest[r["path"]] = (number, [])
                if seen[0] == number:
                    seen[1].append((r["start"], r["end"]))
    return {path: pieces for path, (_, pieces) in latest.items()}


def _overlap(a: tuple[int, int], pieces: list[tuple[int, int]] | None) -> bool:
    return any(a[0] < b[1] and b[0] < a[1] for b in pieces or [])


def open_generation(
    doc: dict[str, Any], embed_inputs: list[dict[str, Any]], first_shard: int, record_start: int
) -> dict:
    """Start generation N+1 in the manifest document; returns its entry."""
    gens = doc.setdefault("generations", [])
    entry = {
        "generation": len(gens) + 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": embed_inputs,
        "first_shard": first_shard,
        "record_start": record_start,
    }
    gens.append(entry)
    return entry


def close_generation(
    doc: dict[str, Any], record_end: int, input_records: list[dict], superseded: list[int]
) -> None:
    """The generation in progress has ended: its record span, and the shards it replaced."""
    gens = doc.setdefault("generations", [])
    if not gens:  # a plain run: generation 1 is the whole of it
        start = doc.get("assignment", {}).get("record_start", 0)
        gens.append(
            {"generation": 1, "inputs": doc.get("inputs", []), "first_shard": 0, "record_start": start}
        )
    gen = gens[-1]
    gen["record_end"] = record_end
    gen["input_records"] = input_records
    gen["superseded"] = superseded
    for shard in doc.get("shards", []):
        if shard["index"] in superseded:
            shard["superseded"] = gen["generation"]


def generation_in_progress(doc: dict[str, Any]) -> dict[str, Any] | None:
    gens = doc.get("generations", [])
    return gens[-1] if gens and "record_end" not in gens[-1] else None
