"""A directory OUTPUT: lock it, prepare it (new, --overwrite, --resume), write shards.

Everything about OUTPUT itself (names, the manifest and its commit markers, clean-up scoped
to this writer) is output.OutputSession's; this module only drives it from the pipeline.
"""

from __future__ import annotations

import numpy as np

from ..batching import Chunk
from ..output import OutputSession, count_duplicate_ids
from ..output.generations import current
from ..sources import schema_to_json
from .result import JobResult
from .run import Plan, Run
from .settings import formats_read, metadata_schema, run_settings
from .stored import stored_form


def write_directory(run: Run) -> JobResult:
    cfg = run.cfg
    session = OutputSession(
        cfg.output,
        cfg.output_format,
        cfg.dtype,
        cfg.shard_index,
        cfg.num_shards,
        metadata_schema=metadata_schema(cfg, run.plan.schema),
        log=run.log,
    )
    try:
        session.acquire()  # nothing in OUTPUT is read or changed before this
        try:
            return _write(run, session)
        finally:
            session.release()
    except OSError as exc:
        # cli.errors offers "finished shards are kept ... --resume" only when there are some
        exc.finished_shards = len(session.shards)  # type: ignore[attr-defined]
        raise


def _write(run: Run, session: OutputSession) -> JobResult:
    cfg = run.cfg
    run.stored = stored_form(cfg, run.embedder, run.log)  # under the lock: may read OUTPUT's ranges
    resume = cfg.resume
    if cfg.append:
        appended = _start_append(run, session)
        if isinstance(appended, JobResult):
            return appended
        resume = appended
    stages = run.open_stages()
    assignment = {"splits": [s.to_json() for s in run.plan.splits], "record_start": stages.record_start}
    point = session.start(
        run_settings(cfg, run.embedder, columns_json(run), formats_read(run.plan.files), run.stored),
        [f.fingerprint() for f in run.plan.files],
        run.engine.runtime(),
        assignment,
        cfg.overwrite,
        resume,
    )
    run.result.add_shards(current(point.finished_shards))
    run.result.resumed_rows = run.result.rows
    if point.complete:
        run.log(f"{session.root} is already complete; nothing to do")
        return run.finish_unchanged()
    if point.resumed:
        run.log(f"resuming after {len(point.finished_shards)} finished shard(s), {point.first_row} rows")
    return _run_to_end(run, session, point.first_row, max(point.first_record, stages.record_start))


def columns_json(run: Run) -> list[dict] | None:
    return schema_to_json(run.plan.schema) if run.plan.schema is not None else None


def _write_rows(run: Run, session: OutputSession):
    def write(chunk: Chunk, embeddings: np.ndarray) -> None:
        record = session.write(chunk, embeddings)
        run.result.add_chunk(chunk)
        if record is not None:
            run.result.shards += 1

    return write


def _run_to_end(run: Run, session: OutputSession, first_row: int, first_record: int) -> JobResult:
    reuse = run.stages.reuse if run.stages is not None else None
    if reuse is not None:
        session.record_reuse(reuse.snapshot())  # type: ignore[attr-defined]
    try:
        run.execute(_write_rows(run, session), first_row, first_record)
    except BaseException as exc:
        _record_threads(run, session)
        finished = JobResult(output=run.cfg.output, seconds=run.result.seconds)
        finished.add_shards(current(session.shards))  # the discarded shard's rows are not in the output
        session.fail(exc, finished.totals())
        raise
    totals = run.result.totals()
    if run.cfg.id_column:
        totals["duplicate_ids"] = _repeated_ids(run)
    result = run.finish()
    _record_threads(run, session)
    session.finish(totals, run.record_end, run.stages.input_records)  # type: ignore[union-attr]
    return result


def _record_threads(run: Run, session: OutputSession) -> None:
    """The thread count the run ended on: the runtime was recorded before the first batch,
    when the default count was not chosen yet (model/threads.py)."""
    runtime = session.manifest.doc.get("runtime") if session.manifest is not None else None
    note = getattr(run.embedder, "threads_note", lambda: None)()
    if isinstance(runtime, dict) and note is not None:
        runtime["threads"] = note


def _repeated_ids(run: Run) -> int:
    """Your --id-column repeating itself is worth a warning (and a count in the manifest), not a
    failure: the rows are all there. Counted in bounded memory over every finished shard."""
    repeats = count_duplicate_ids(run.cfg.output)
    if repeats:
        run.log(
            f"warning: {repeats} rows repeat an id of column '{run.cfg.id_column}' (counted in the manifest)"
        )
    return repeats


def _start_append(run: Run, session: OutputSession) -> JobResult | bool:
    """--append into an OUTPUT that holds a finished run. Else a first run over ``run.plan``:
    False when it is fresh (OUTPUT is new, or a part of a job array joins the array's first
    generation), True when it continues this writer's own first run, cut short (--resume)."""
    cfg = run.cfg
    stretches: dict[tuple[str, ...], Plan] = {}

    def stretch(paths: list[str], record_start: int) -> tuple[list[dict], int]:
        part = stretches[tuple(paths)] = run.plan.restricted(paths, cfg.num_shards, cfg.shard_index)
        return [s.to_json() for s in part.splits], record_start + part.record_start(cfg)

    started = session.start_append(
        run_settings(cfg, run.embedder, columns_json(run), formats_read(run.plan.files), run.stored),
        [f.fingerprint() for f in run.plan.files],
        run.engine.runtime(),
        stretch if cfg.num_shards > 1 else None,
    )
    if started is None:
        return False
    point, plan = started
    if plan.first:
        run.plan = run.plan.restricted(plan.embed, cfg.num_shards, cfg.shard_index)
        return plan.resume
    replaced = set(plan.superseded)
    run.result.add_shards([s for s in current(point.finished_shards) if s["index"] not in replaced])
    run.result.resumed_rows = run.result.rows
    if point.complete:
        run.log(plan.note or f"{session.root} already holds every input; nothing to append")
        return run.finish_unchanged()
    run.log(
        f"appending {len(plan.embed)} input(s) ({len(plan.new)} new, {len(plan.changed)} changed) "
        f"after {len(point.finished_shards)} shard(s)"
        + (f"; {len(plan.superseded)} shard(s) superseded" if plan.superseded else "")
    )
    run.plan = stretches.get(tuple(plan.embed)) or run.plan.restricted(
        plan.embed, cfg.num_shards, cfg.shard_index
    )
    run.open_stages(record_start=session.manifest.doc["generations"][-1]["record_start"])  # type: ignore[union-attr]
    return _run_to_end(run, session, point.first_row, point.first_record)
