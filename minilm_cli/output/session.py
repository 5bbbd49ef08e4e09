"""One writer's output, start to end: the lock, the manifest, the shards, and how it ends.

The pipeline drives it; every file this writer touches goes through it:

    session = OutputSession(root, "parquet", "float32", shard_index, num_shards, schema)
    session.acquire()                      # the lock; nothing in OUTPUT is read before it
    try:
        point = session.start(settings, inputs, runtime, assignment, overwrite, resume)
        ... session.write(chunk, embeddings)   # writer thread only
        session.finish(totals, record_end)     # or session.fail(exc, totals)
    finally:
        session.release()
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..batching import Chunk
from ..errors import InputError, Interrupted, OutputConflict
from ..storage import Storage, storage_for
from .array_append import check_settings, load_parts, next_step, plan_entry, planned_inputs
from .array_append import record_end as array_record_end
from .generations import (
    AppendPlan,
    close_generation,
    generation_in_progress,
    open_generation,
    plan_append,
    plan_parts,
)
from .layout import Layout
from .manifest import Manifest, first_difference
from .outdir import OutputDir
from .writers import ShardRecord, ShardWriter

# (paths of a generation's inputs, its first record) -> (this part's splits, its first record)
Stretch = Callable[[list[str], int], tuple[list[dict[str, Any]], int]]


@dataclass
class ResumePoint:
    """Where the run starts: after ``finished_shards`` (all of them when ``complete``)."""

    next_shard: int
    first_row: int
    first_record: int
    finished_shards: list[dict[str, Any]]
    complete: bool
    resumed: bool = False  # continuing an existing manifest (--resume)


class OutputSession:
    """The output of one writer: a single run, or part ``shard_index`` of ``num_shards``."""

    # Test hook, off by default: called on the writer thread while a shard is in flight
    # (a chunk written, the shard not yet committed). See also MINILM_TEST_HOOK below.
    on_shard_in_flight: Callable[[OutputSession], None] | None = None

    def __init__(
        self,
        root: str,
        layout: str,
        dtype: str,
        shard_index: int = 0,
        num_shards: int = 1,
        metadata_schema: pa.Schema | None = None,
        storage: Storage | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.names = Layout(os.fspath(root), shard_index, num_shards)
        self.format = layout
        self.dtype = dtype
        self.metadata_schema = metadata_schema
        self.storage = storage or storage_for(self.names.root)
        self.outdir = OutputDir(self.names, self.storage)
        self.log = log or (lambda message: None)
        self.manifest: Manifest | None = None
        self.writer: ShardWriter | None = None
        self.fresh = False

    @property
    def root(self) -> str:
        return self.names.root

    @property
    def shards(self) -> list[dict[str, Any]]:
        """The finished shards, as the manifest lists them."""
        return self.manifest.shards if self.manifest is not None else []

    def acquire(self) -> None:
        self.outdir.acquire()

    def release(self) -> None:
        self.outdir.release(remove=True)

    def start(
        self,
        settings: dict[str, Any],
        inputs: list[dict[str, Any]],
        runtime: dict[str, Any],
        assignment: dict[str, Any],
        overwrite: bool,
        resume: bool,
    ) -> ResumePoint:
        hook_point(self, "prepare")
        existing = self.outdir.prepare(overwrite, resume)
        self.fresh = existing is None
        if existing is not None:
            why = existing.mismatch(settings, inputs)
            if why:
                raise OutputConflict(f"--resume refused: {why}")
            self._drop_damaged(existing)
            self.outdir.drop_unlisted(existing)
            manifest = existing
        else:
            manifest = Manifest.new(self.names, settings, inputs, runtime)
            manifest.doc["assignment"] = dict(assignment)
        self.manifest = manifest
        next_shard, first_row, first_record = manifest.resume_point()
        complete = existing is not None and manifest.doc.get("status") == "complete"
        if complete:
            # A run killed between writing its compacted manifest and removing the commit
            # markers left markers the manifest already holds: finish that clean-up, so a
            # finished OUTPUT holds the same files however its run ended.
            manifest.remove_markers()
        else:
            manifest.doc["status"] = "running"
            manifest.doc["runtime"] = runtime
            manifest.save()
            self.writer = ShardWriter(
                self.names, self.format, self.dtype, next_shard, self.metadata_schema, self.storage
            )
        return ResumePoint(
            next_shard, first_row, first_record, list(manifest.shards), complete, existing is not None
        )

    def start_append(
        self,
        settings: dict[str, Any],
        inputs: list[dict[str, Any]],
        runtime: dict[str, Any],
        stretch: Stretch | None = None,
    ) -> tuple[ResumePoint, AppendPlan] | None:
        """--append: continue OUTPUT with a new generation (or the one a failure cut short).
        None when OUTPUT holds no output yet: then it is a fresh run. A part of a job array
        (see output/array_append.py) needs ``stretch``: its splits and first record of the
        generation's inputs."""
        hook_point(self, "prepare")
        if self.names.sharded:
            assert stretch is not None, "a part of a job array appends its own stretch"
            return self._start_array_append(settings, inputs, runtime, stretch)
        if not self.storage.exists(self.names.manifest_path):
            return None
        manifest = Manifest.load(self.names.manifest_path, self.storage)
        why = first_difference(manifest.doc.get("settings", {}), settings)
        if why:
            raise OutputConflict(f"--append refused: {why}")
        self.manifest = manifest
        gen = generation_in_progress(manifest.doc)
        if gen is not None:
            plan = self._continue_generation(gen, inputs)
        elif manifest.doc.get("status") != "complete" and not manifest.doc.get("generations"):
            return self._continue_first(manifest.doc, inputs, "this run")
        elif manifest.doc.get("status") != "complete":
            raise OutputConflict(
                f"--append: {self.root} holds an unfinished run; finish it with --resume first"
            )
        else:
            plan = plan_append(manifest.doc, inputs)
            if plan.nothing_to_do:
                return ResumePoint(0, 0, 0, list(manifest.shards), True, True), plan
            self._open_generation(manifest, inputs, plan)
        return self._begin_generation(runtime), plan

    def _begin_generation(self, runtime: dict[str, Any]) -> ResumePoint:
        """The generation opened (or continued) in the manifest: save it, start writing."""
        manifest = self.manifest
        assert manifest is not None
        manifest.doc["status"] = "running"
        manifest.doc["runtime"] = runtime
        manifest.save()
        next_shard, first_row, first_record = manifest.resume_point()
        first_record = max(first_record, manifest.doc["generations"][-1]["record_start"])
        self.writer = ShardWriter(
            self.names, self.format, self.dtype, next_shard, self.metadata_schema, self.storage
        )
        return ResumePoint(next_shard, first_row, first_record, list(manifest.shards), False, True)

    def _start_array_append(
        self,
        settings: dict[str, Any],
        inputs: list[dict[str, Any]],
        runtime: dict[str, Any],
        stretch: Stretch,
    ) -> tuple[ResumePoint, AppendPlan] | None:
        parts = load_parts(self.names, self.storage)
        check_settings(parts, settings, self.names.shard_index)
        step = next_step(parts, self.names)
        if step.kind == "fresh":
            return None
        if step.kind == "first" and step.own is not None:
            return self._continue_first(step.own.doc, inputs, "this part")
        if step.kind == "first":  # a plain run over the inputs the other parts started with
            paths = planned_inputs(step.inputs, inputs, 1)
            return ResumePoint(0, 0, 0, [], False, False), AppendPlan(paths, [], [], [], first=True)
        manifest = self.manifest = step.own
        assert manifest is not None
        done = list(manifest.shards)
        if step.kind == "wait":
            return ResumePoint(0, 0, 0, done, True, True), AppendPlan([], [], [], [], note=step.note)
        if step.kind == "continue":
            plan = self._continue_generation(manifest.doc["generations"][-1], inputs)
            return self._begin_generation(runtime), plan
        if step.kind == "join":
            entry = step.plan
            assert entry is not None
            planned_inputs(entry["inputs"], inputs, len(manifest.doc["generations"]) + 1)
        else:
            planned = plan_parts(step.docs, inputs)
            if not planned.embed:
                return ResumePoint(0, 0, 0, done, True, True), AppendPlan([], [], [], [])
            entry = plan_entry(planned, inputs, array_record_end(step.docs), self.names.shard_index)
        plan = self._open_array_generation(manifest, entry, stretch)
        return self._begin_generation(runtime), plan

    def _continue_first(
        self, doc: dict[str, Any], inputs: list[dict[str, Any]], who: str
    ) -> tuple[ResumePoint, AppendPlan]:
        """A first run cut short: --append continues it (as --resume would) over its own inputs;
        what has landed since waits for the next generation."""
        self.manifest = None  # session.start loads it again, after its own checks
        paths = planned_inputs(doc.get("inputs", []), inputs, 1, who)
        return ResumePoint(0, 0, 0, [], False, False), AppendPlan(paths, [], [], [], first=True, resume=True)

    def _open_array_generation(
        self, manifest: Manifest, entry: dict[str, Any], stretch: Stretch
    ) -> AppendPlan:
        """Generation G+1 of this part: its stretch of the plan's inputs, its own superseded shards."""
        doc = manifest.doc
        paths = [f["path"] for f in entry["inputs"]]
        own = [index for part, index in entry["superseded"] if part == self.names.shard_index]
        splits, record_start = stretch(paths, entry["record_start"])
        gen = open_generation(doc, entry["inputs"], manifest.resume_point()[0], record_start)
        gen.update(superseding=own, splits=splits, plan=entry)
        known = {f["path"]: f for f in doc.get("inputs", [])}
        known.update({f["path"]: f for f in entry["inputs"]})
        doc["inputs"] = list(known.values())
        return AppendPlan(paths, own, list(entry["new"]), list(entry["changed"]))

    def _continue_generation(self, gen: dict[str, Any], inputs: list[dict[str, Any]]) -> AppendPlan:
        now = {f["path"]: f for f in inputs}
        for before in gen["inputs"]:
            if now.get(before["path"]) != before:
                raise OutputConflict(
                    f"--append refused: {before['path']} changed while it was being appended"
                )
        assert self.manifest is not None
        self._drop_damaged(self.manifest)
        self.outdir.drop_unlisted(self.manifest)
        return AppendPlan([f["path"] for f in gen["inputs"]], gen.get("superseding", []), [], [])

    def _open_generation(self, manifest: Manifest, inputs: list[dict[str, Any]], plan: AppendPlan) -> None:
        doc = manifest.doc
        if not doc.get("generations"):
            raise OutputConflict(f"--append: {self.root} was written before --append existed; embed it anew")
        record_start = doc["generations"][-1]["record_end"]
        next_shard = manifest.resume_point()[0]
        embed = [f for f in inputs if f["path"] in plan.embed]
        gen = open_generation(doc, embed, next_shard, record_start)
        gen["superseding"] = plan.superseded
        known = {f["path"]: f for f in doc.get("inputs", [])}
        known.update({f["path"]: f for f in embed})
        doc["inputs"] = list(known.values())

    def _drop_damaged(self, manifest: Manifest) -> None:
        """A listed shard that is missing or damaged on disk is redone, with every shard after it."""
        damaged = self.outdir.first_damaged(manifest)
        if damaged is None:
            return
        position, why = damaged
        self.log(f"shard {manifest.shards[position]['index']}: {why}; redoing it and the shards after it")
        manifest.truncate(position)
        manifest.doc["status"] = "running"

    def record_reuse(self, sources: list[dict[str, Any]]) -> None:
        """--reuse: what this run looks rows up in (each earlier output's location and state),
        under doc["reuse"][id]; every shard it writes names that id (verify checks against it)."""
        assert self.writer is not None and self.manifest is not None, "start() first"
        sid = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:16]
        self.manifest.doc.setdefault("reuse", {})[sid] = {"sources": sources}
        self.writer.reuse = sid
        self.manifest.save()

    def write(self, chunk: Chunk, embeddings: np.ndarray) -> ShardRecord | None:
        """Writer thread only. Commits the shard, then its marker, when ``chunk.shard_end``."""
        assert self.writer is not None and self.manifest is not None, "start() first"
        record = self.writer.write(chunk, embeddings)
        if record is not None:
            self.manifest.add_shard(record)
        elif self.writer._open is not None:
            _in_flight(self)
        return record

    def finish(
        self, totals: dict[str, Any], record_end: int, input_records: list[dict] | None = None
    ) -> None:
        assert self.manifest is not None
        doc = self.manifest.doc
        gen = generation_in_progress(doc)
        if gen is None:  # the assignment is generation 1's; a later one records its own span
            doc.setdefault("assignment", {})["record_end"] = record_end
        superseded = gen.get("superseding", []) if gen is not None else []
        close_generation(doc, record_end, input_records or [], superseded)
        self.manifest.finish("complete", totals)

    def fail(self, exc: BaseException, totals: dict[str, Any]) -> None:
        """Discard the open shard; undo a fresh start that failed on its input before any
        shard; else mark the manifest interrupted or failed (its shards stay valid)."""
        if self.writer is not None:
            self.writer.abort()
        if self.manifest is None:
            return
        if self.fresh and not self.manifest.shards and isinstance(exc, InputError):
            self.outdir.undo_fresh_start()
            return
        status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
        try:
            self.manifest.finish(status, totals)
        except OSError:
            pass  # disk full: the header and markers stay, listing every finished shard


def _in_flight(session: OutputSession) -> None:
    hook = OutputSession.on_shard_in_flight
    if hook is not None:
        hook(session)
    hook_point(session, "in-flight")


def hook_point(session: OutputSession, point: str) -> None:
    """MINILM_TEST_HOOK=<folder> (tests only; unset, this does nothing): at ``point``
    ("prepare", "in-flight"), writer ``part-I-`` touches <folder>/<prefix>.<point>.reached,
    and if <folder>/<prefix>.<point>.hold exists waits for <prefix>.<point>.go (once per
    point and process). Lets a test order two writers' steps exactly."""
    folder = os.environ.get("MINILM_TEST_HOOK")
    key = f"{session.names.prefix}.{point}"
    if not folder or key in _REACHED:
        return
    _REACHED.add(key)
    storage = storage_for(folder)
    storage.write_atomic(os.path.join(folder, f"{key}.reached"), b"")
    if storage.exists(os.path.join(folder, f"{key}.hold")):
        deadline = time.monotonic() + 120
        while not storage.exists(os.path.join(folder, f"{key}.go")) and time.monotonic() < deadline:
            time.sleep(0.005)


_REACHED: set[str] = set()
