"""A directory OUTPUT: lock it, prepare it (new, --overwrite, --resume), write shards.

Everything about OUTPUT itself (names, the manifest and its commit markers, clean-up scoped
to this writer) is output.OutputSession's; this module only drives it from the pipeline.
"""

from __future__ import annotations

import numpy as np

from ..batching import Chunk
from ..output import OutputSession
from .result import JobResult
from .run import Run
from .settings import run_settings


def write_directory(run: Run) -> JobResult:
    cfg = run.cfg
    session = OutputSession(
        cfg.output, cfg.output_format, cfg.dtype, cfg.shard_index, cfg.num_shards, log=run.log
    )
    session.acquire()  # nothing in OUTPUT is read or changed before this
    try:
        return _write(run, session)
    finally:
        session.release()


def _write(run: Run, session: OutputSession) -> JobResult:
    cfg = run.cfg
    stages = run.open_stages()
    assignment = {"splits": [s.to_json() for s in run.plan.splits], "record_start": stages.record_start}
    point = session.start(
        run_settings(cfg, run.embedder),
        [f.fingerprint() for f in run.plan.files],
        run.engine.runtime(),
        assignment,
        cfg.overwrite,
        cfg.resume,
    )
    run.result.add_shards(point.finished_shards)
    run.result.resumed_rows = run.result.rows
    if point.complete:
        run.log(f"{session.root} is already complete; nothing to do")
        return run.finish()
    if point.resumed:
        run.log(f"resuming after {len(point.finished_shards)} finished shard(s), {point.first_row} rows")

    def write(chunk: Chunk, embeddings: np.ndarray) -> None:
        record = session.write(chunk, embeddings)
        run.result.add_chunk(chunk)
        if record is not None:
            run.result.shards += 1

    try:
        run.execute(write, point.first_row, max(point.first_record, stages.record_start))
    except BaseException as exc:
        finished = JobResult(output=cfg.output, seconds=run.result.seconds)
        finished.add_shards(session.shards)  # the discarded shard's rows are not in the output
        session.fail(exc, finished.totals())
        raise
    result = run.finish()
    session.finish(result.totals(), run.record_end)
    return result
