"""A directory OUTPUT: lock it, prepare it (new, --overwrite, --resume), write shards, keep the manifest."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..batching import Chunk
from ..errors import InputError, Interrupted, OutputConflict
from ..manifest import Manifest, manifest_name
from ..outdir import OutputDir
from ..sinks import ShardWriter
from .result import JobResult
from .run import Run
from .settings import run_settings


def write_directory(run: Run) -> JobResult:
    cfg = run.cfg
    prefix = "part-" if cfg.num_shards == 1 else f"part-{cfg.shard_index:05d}-"
    outdir = OutputDir(cfg.output, prefix, manifest_name(cfg.shard_index, cfg.num_shards))
    outdir.acquire()
    try:
        return _write(run, outdir)
    finally:
        outdir.release()


def _write(run: Run, outdir: OutputDir) -> JobResult:
    cfg = run.cfg
    existing = outdir.prepare(cfg.overwrite, cfg.resume)
    stages = run.open_stages()
    settings = run_settings(cfg, run.embedder)
    inputs = [f.fingerprint() for f in run.plan.files]
    manifest = _open_manifest(run, outdir, existing, settings, inputs, stages.record_start)
    next_shard, first_row, first_record = manifest.resume_point()
    first_record = max(first_record, stages.record_start)
    run.result.add_shards(manifest.shards)
    run.result.resumed_rows = run.result.rows
    if existing is not None and manifest.doc.get("status") == "complete":
        run.log(f"{outdir.root} is already complete; nothing to do")
        return run.finish()
    if existing is not None:
        run.log(f"resuming after {len(manifest.shards)} finished shard(s), {first_row} rows")
    manifest.doc["status"] = "running"
    manifest.doc["runtime"] = run.engine.runtime()
    manifest.save()
    sink = ShardWriter(
        outdir.root, cfg.output_format, cfg.dtype, prefix=outdir.prefix, first_index=next_shard
    )

    def write(chunk: Chunk, embeddings: np.ndarray) -> None:
        record = sink.write(chunk, embeddings)
        run.result.add_chunk(chunk)
        if record is not None:
            manifest.add_shard(record)
            manifest.save()
            run.result.shards += 1

    try:
        run.execute(write, first_row, first_record)
    except BaseException as exc:
        sink.abort()
        if existing is None and not manifest.shards and isinstance(exc, InputError):
            outdir.undo_fresh_start()
        else:
            _close_manifest(run, manifest, exc)
        raise
    result = run.finish()
    manifest.doc["assignment"]["record_end"] = run.record_end
    manifest.finish("complete", result.totals())
    return result


def _open_manifest(
    run: Run, outdir: OutputDir, existing: Manifest | None, settings: dict, inputs: list, record_start: int
) -> Manifest:
    if existing is not None:
        why = existing.mismatch(settings, inputs)
        if why:
            raise OutputConflict(f"--resume refused: {why}")
        outdir.drop_unlisted(existing)
        return existing
    manifest = Manifest.new(outdir.manifest_path, settings, inputs, run.engine.runtime())
    manifest.doc["assignment"] = {
        "splits": [s.to_json() for s in run.plan.splits],
        "record_start": record_start,
    }
    return manifest


def _close_manifest(run: Run, manifest: Manifest, exc: BaseException) -> None:
    status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
    finished = JobResult(output=run.cfg.output, seconds=run.result.seconds)
    finished.add_shards(manifest.shards)  # the discarded shard's rows are not in the output
    totals: dict[str, Any] = finished.totals()
    try:
        manifest.finish(status, totals)
    except OSError:
        pass  # disk full: the last good manifest stays, listing every finished shard
