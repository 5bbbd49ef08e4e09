"""``-o -``: JSON lines on stdout; rejected rows as JSON lines on stderr, whatever --quiet says."""

from __future__ import annotations

import json
import sys

import numpy as np

from ..batching import Chunk
from ..output import JsonLinesWriter
from .result import JobResult
from .run import Run
from .stored import stored_form


def write_stdout(run: Run) -> JobResult:
    """--dtype on stdout: int8/uint8/binary/ubinary rows are JSON integers (ranges as the flags
    say, else the packaged calibration texts'); float16 is a shard type, stdout keeps float32."""
    run.stored = stored_form(run.cfg, run.embedder, run.log, own_output=False)
    writer = JsonLinesWriter(dtype=run.cfg.dtype)
    stages = run.open_stages()

    def write(chunk: Chunk, embeddings: np.ndarray) -> None:
        for reject in chunk.rejects:
            # A dropped row is data, not chatter: it is never silenced.
            print(json.dumps(reject.to_json(), ensure_ascii=False), file=sys.stderr)
        writer.write(chunk, embeddings)
        run.result.add_chunk(chunk)

    run.execute(write, first_row=0, first_record=stages.record_start)
    return run.finish()
