"""--append in a job array: the N parts of OUTPUT add each generation together.

Generation G of the array is generation G of every part's manifest (output/generations.py).
The first part to open G plans it from what all N parts hold once they have all finished
G-1: the new and changed inputs, and every part's shards those supersede. It records the plan
in its generation entry ("plan"); a part that opens G later copies it instead of planning
again, so every part embeds the same inputs, cut into the same N stretches, from the same
first record, whenever its task runs (a file that lands in between waits for G+1):

    gen["plan"] = {"record_start": R, "inputs": [fingerprints], "superseded": [[part, index]],
                   "new": [...], "changed": [...], "planned_by": part}

Each part then embeds its stretch of the plan's inputs and marks superseded only its own
shards; merge-manifests and verify check that every part finished every generation with the
same plan and that each generation's stretches tile its inputs.

A part opens a new generation only once every part has finished the one before; a part that
is ahead (its task ran again before another's) has nothing to do until the others catch up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import OutputConflict
from ..storage import Storage
from .layout import Layout
from .manifest import Manifest, first_difference, layout_of, manifest_parts


@dataclass
class ArrayStep:
    """What this part does now.

    kind: "fresh" (no part exists: a plain sharded run), "first" (another part started
    generation 1: a plain run over its inputs), "continue" (this part's own generation in
    progress), "join" (copy another part's plan of the next generation), "plan" (every part
    has finished the same generations: plan the next one), "wait" (another part lags)."""

    kind: str
    own: Manifest | None = None
    docs: dict[int, dict[str, Any]] = field(default_factory=dict)
    plan: dict[str, Any] | None = None  # "join": the plan to copy
    inputs: list[dict[str, Any]] = field(default_factory=list)  # "first": generation 1's inputs
    note: str = ""


def load_parts(names: Layout, storage: Storage) -> dict[int, Manifest]:
    """Every part's manifest in OUTPUT (with the markers of a live run), by shard index."""
    parts = {}
    for path in manifest_parts(names.root, storage):
        layout = layout_of(path)
        if layout.num_shards != names.num_shards:
            raise OutputConflict(
                f"--append refused: {names.root} holds parts of --num-shards {layout.num_shards} "
                f"({layout.manifest_name}), this run has --num-shards {names.num_shards}"
            )
        parts[layout.shard_index] = Manifest.load(path, storage)
    return parts


def check_settings(parts: dict[int, Manifest], settings: dict[str, Any], shard_index: int) -> None:
    """Every part must have been embedded with this run's settings (but its own shard index)."""
    for part in sorted(parts):
        theirs = dict(parts[part].doc.get("settings", {}))
        if isinstance(theirs.get("plan"), dict):
            theirs["plan"] = {**theirs["plan"], "shard_index": shard_index}
        why = first_difference(theirs, settings)
        if why:
            where = "" if part == shard_index else f" ({parts[part].layout.manifest_name})"
            raise OutputConflict(f"--append refused: {why}{where}")


def opened(doc: dict[str, Any]) -> int:
    """Generations a part has started (a part without any is running generation 1)."""
    return max(len(doc.get("generations", [])), 1)


def finished(doc: dict[str, Any]) -> int:
    return sum(1 for g in doc.get("generations", []) if "record_end" in g)


def next_step(parts: dict[int, Manifest], names: Layout) -> ArrayStep:
    """Where this part stands against the others (see the module docstring)."""
    own = parts.get(names.shard_index)
    others = {p: m.doc for p, m in parts.items() if p != names.shard_index}
    if own is None:
        if not others:
            return ArrayStep("fresh")
        return _first_generation(others)
    doc = own.doc
    gens = doc.get("generations", [])
    if gens and "record_end" not in gens[-1]:
        return ArrayStep("continue", own)
    if not gens:
        if doc.get("status") == "complete":
            raise OutputConflict(f"--append: {own.path} was written before --append existed; embed it anew")
        return ArrayStep("first", own, inputs=doc.get("inputs", []))  # cut short: continue it
    done = finished(doc)
    top = max([opened(d) for d in others.values()], default=done)
    if top > done + 1:
        raise OutputConflict(
            f"--append refused: other parts are at generation {top}, {own.layout.manifest_name} "
            f"only finished {done}: its manifest is older than theirs; embed OUTPUT anew"
        )
    if top == done + 1:
        part = min(p for p, d in others.items() if opened(d) == top)
        plan = others[part]["generations"][done].get("plan")
        if not isinstance(plan, dict):
            raise OutputConflict(f"--append refused: generation {top} of part {part} records no plan")
        return ArrayStep("join", own, plan=plan)
    docs = {p: m.doc for p, m in parts.items()}
    lagging = [p for p in range(names.num_shards) if p not in docs or finished(docs[p]) < done]
    if lagging:
        name = Layout(names.root, lagging[0], names.num_shards).manifest_name
        note = (
            f"this part has finished generation {done}; {name} has not yet, "
            "so nothing is appended here until it has"
        )
        return ArrayStep("wait", own, note=note)
    return ArrayStep("plan", own, docs)


def _first_generation(others: dict[int, dict[str, Any]]) -> ArrayStep:
    """This part has no manifest yet, another has: run generation 1 over the inputs it did."""
    top = max(opened(d) for d in others.values())
    if top > 1:
        raise OutputConflict(
            f"--append refused: other parts are at generation {top} but this part has no manifest "
            "(deleted?); embed OUTPUT anew"
        )
    doc = others[min(others)]
    gens = doc.get("generations", [])
    return ArrayStep("first", inputs=gens[0]["inputs"] if gens else doc.get("inputs", []))


def planned_inputs(
    wanted: list[dict[str, Any]], inputs: list[dict[str, Any]], generation: int, who: str = "another part"
) -> list[str]:
    """The paths of a generation already started (by ``who``); every one must be unchanged here."""
    now = {f["path"]: f for f in inputs}
    for before in wanted:
        if now.get(before["path"]) != before:
            what = "is not among this run's inputs" if before["path"] not in now else "has changed"
            raise OutputConflict(
                f"--append refused: {before['path']} {what} since {who} started generation "
                f"{generation} with it; restore it, or embed OUTPUT anew"
            )
    return [f["path"] for f in wanted]


def plan_entry(plan: Any, inputs: list[dict[str, Any]], record_start: int, planned_by: int) -> dict[str, Any]:
    """A PartsPlan as the generation entry records it, for the other parts to copy."""
    fingerprints = {f["path"]: f for f in inputs}
    return {
        "record_start": record_start,
        "inputs": [fingerprints[p] for p in plan.embed],
        "superseded": [list(key) for key in plan.superseded],
        "new": list(plan.new),
        "changed": list(plan.changed),
        "planned_by": planned_by,
    }


def record_end(docs: dict[int, dict[str, Any]]) -> int:
    """Where the array's last finished generation ended: the next one's first record."""
    return max(g.get("record_end", 0) for d in docs.values() for g in d.get("generations", []))
