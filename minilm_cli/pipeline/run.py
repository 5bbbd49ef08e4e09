"""One run of one part of a job: plan it, then drive the engine's embedded chunks into a sink.

Order matters and is kept here: flags, inputs, columns and the model are all checked
before OUTPUT is touched; OUTPUT is read or changed only once its lock is held.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from ..batching import Chunk
from ..config import EmbedConfig
from ..devices import cpu_has_native_bf16
from ..errors import InputError
from ..model import Embedder
from ..model.quantize import StoredForm
from ..sharding import count_records, plan_splits
from ..sources import Columns, InputFile, Split, read_file, resolve_inputs, resolve_schema
from ..sources.parquet import open_parquet
from ..sources.streams import stdin_format
from ..storage import storage_for
from .engine import Engine, LocalEngine
from .result import JobResult
from .settings import build_embedder, check_config, check_windows, job_columns
from .stages import Stages
from .stored import check_stored
from .threads import Consumer, SignalGuard

Write = Callable[[Chunk, np.ndarray], None]


@dataclass
class Plan:
    """What a run reads: its inputs, its part of them, and the records before that part."""

    files: list[InputFile]
    splits: list[Split]
    earlier: list[Split]  # splits of the parts before this one (their records number ours)
    schema: pa.Schema | None = None  # the id and kept columns' types, fixed before any row is read

    def known_rows(self) -> int | None:
        """This part's rows when the inputs say so without being read (Parquet metadata), for
        a progress bar with a total and an ETA; None for text formats."""
        if not self.splits or any(s.file.format != "parquet" for s in self.splits):
            return None
        total = 0
        for split in self.splits:
            with open_parquet(split.file) as pf:
                groups = range(pf.num_row_groups) if split.kind == "whole" else range(split.start, split.end)
                total += sum(pf.metadata.row_group(g).num_rows for g in groups)
        return total

    def restricted(self, paths: list[str], num_shards: int, shard_index: int) -> Plan:
        """The same run over some of its inputs (--append: the ones OUTPUT does not hold yet),
        cut into ``num_shards`` stretches again, of which this part reads ``shard_index``."""
        wanted = set(paths)  # as the manifest records them: each input's key
        files = [f for f in self.files if f.key in wanted]
        stretches = plan_splits(files, num_shards)
        earlier = [s for rank in stretches[:shard_index] for s in rank]
        return Plan(files, stretches[shard_index], earlier, self.schema)

    def record_start(self, cfg: EmbedConfig) -> int:
        """Default ids number rows over all inputs: count what the parts before this one hold."""
        if not self.earlier:
            return 0
        columns = job_columns(cfg)
        return count_records(self.earlier, columns, cfg.encoding_errors)


def plan_run(cfg: EmbedConfig, log: Callable[[str], None] | None = None) -> Plan:
    """Check the flags, the inputs and their columns (before any model loads, and before
    OUTPUT is touched, so bad input fails fast and leaves OUTPUT as it was)."""
    check_config(cfg)
    exclude = [] if cfg.to_stdout else [cfg.output]  # a rerun never reads its own output
    files = resolve_inputs(
        cfg.inputs, cfg.input_format, exclude=exclude, log=log, tsv_quoting=cfg.tsv_quoting
    )
    files = [guess_stdin(f, log) for f in files]
    columns = job_columns(cfg)
    schema = resolve_schema(files, columns, cfg.column_types or None)
    check_inputs(files, columns, schema, cfg.encoding_errors)
    plan = plan_splits(files, cfg.num_shards)
    earlier = [s for rank in plan[: cfg.shard_index] for s in rank]
    return Plan(files, plan[cfg.shard_index], earlier, schema)


def guess_stdin(f: InputFile, log: Callable[[str], None] | None) -> InputFile:
    """Stdin without --input-format: its format guessed once, here, and said on stderr (a
    guess that reads JSON as text would otherwise embed it silently)."""
    if not (f.is_stdin and f.format == "auto"):
        return f
    fmt = stdin_format()
    if log is not None:
        log(f"minilm: note: stdin read as {fmt} (guessed; --input-format to choose)")
    return dataclasses.replace(f, format=fmt)


def check_inputs(files: list[InputFile], columns: Columns, schema: pa.Schema, encoding_errors: str) -> None:
    """Open every input and read its first block: a missing column or an unreadable file is
    found now, before --overwrite or --resume changes anything in OUTPUT."""
    for f in files:
        store = storage_for(f.path) if not f.is_stdin else None
        if store is None or not store.rereadable(f.path):
            continue  # stdin, a FIFO: read once, when the run reads it
        blocks = read_file(f, columns, 1, encoding_errors, None, schema=schema)
        try:
            next(iter(blocks), None)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()


def run_job(
    cfg: EmbedConfig,
    embedder: Embedder | None = None,
    log: Callable[[str], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
    engine: Engine | None = None,
) -> JobResult:
    """Embed every input row of ``cfg`` into its output; the CLI's `minilm embed`.

    ``on_rows`` is told how many rows each embedded chunk held (for a caller's own progress);
    ``engine`` runs the model somewhere else (the Ray engine), default here.
    """
    log = log or (lambda message: None if cfg.quiet else print(message, file=sys.stderr))
    plan = plan_run(cfg, log)
    embedder = embedder or build_embedder(cfg)
    check_windows(cfg, embedder)
    check_stored(cfg, embedder)
    run = Run(cfg, embedder, plan, engine or LocalEngine(embedder), log, on_rows)
    if cfg.to_stdout:
        from .to_stdout import write_stdout

        return write_stdout(run)
    from .to_directory import write_directory

    return write_directory(run)


class Run:
    """The state of one run: its stages, its engine, its counters. Construction does no I/O."""

    def __init__(
        self,
        cfg: EmbedConfig,
        embedder: Embedder,
        plan: Plan,
        engine: Engine,
        log: Callable[[str], None],
        on_rows: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.embedder = embedder
        self.plan = plan
        self.engine = engine
        self.log = log
        self.on_rows = on_rows
        self.result = JobResult(output=cfg.output, overflow=cfg.overflow)
        self.stages: Stages | None = None
        self.stored: StoredForm | None = None  # set by the sink once OUTPUT is locked (int8 ranges)
        self.record_end = 0
        self.guard = SignalGuard()

    def open_stages(self, record_start: int | None = None) -> Stages:
        """The stage list over this part's splits (counts earlier parts' records: reads inputs)."""
        if record_start is None:
            record_start = self.plan.record_start(self.cfg)
        reuse = None
        if self.cfg.reuse:
            from .reuse import ReuseIndex
            from .settings import run_settings

            settings = run_settings(self.cfg, self.embedder, stored=self.stored)  # bytes only
            reuse = ReuseIndex(list(self.cfg.reuse), settings)
        self.stages = Stages(
            self.cfg,
            self.embedder,
            self.plan.splits,
            record_start,
            self.plan.schema,
            reuse=reuse,
            stored=self.stored,
        )
        return self.stages

    def execute(self, write: Write, first_row: int, first_record: int) -> None:
        """The hot loop: engine -> writer thread, with progress, timing and signals."""
        assert self.stages is not None
        started = time.perf_counter()
        self._warn_about_slow_precision()
        writer = Consumer(self._timed_write(write), "minilm-writer", on_error=self.guard.wake)
        progress = self._progress()
        self._batched = 0
        self.stages.on_batch = lambda rows: self._advance(progress, rows)
        embedded = self.engine.embedded_chunks(self.stages, first_row, first_record)
        chunks = self.stages.after_model(embedded)
        try:
            with self.guard:
                self._feed(chunks, writer, progress, started)
                self.guard.disarm()  # the last shard is being written: let it finish
                writer.close()
        except BaseException:
            self.guard.disarm()
            writer.abandon()
            raise
        finally:
            _close(chunks)
            if self.stages.reuse is not None:
                self.stages.reuse.close()
            _close(embedded)
            progress.close()
            self.result.seconds = time.perf_counter() - started
            self.result.stage_seconds = {k: round(v, 3) for k, v in self.stages.timers.items()}

    def _feed(self, chunks: Iterator, writer: Consumer, progress: tqdm, started: float) -> None:
        tokens = 0
        for chunk, embeddings in chunks:
            self.record_end = chunk.record_end
            writer.put((chunk, embeddings))
            tokens += chunk.tokens.real_tokens if chunk.tokens else 0
            progress.update(max(len(chunk) - self._batched, 0))  # rows copied, not batched
            self._batched = 0
            if self.on_rows is not None:
                self.on_rows(len(chunk))
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            progress.set_postfix_str(f"{rate:.0f} tokens/s", refresh=False)

    def _warn_about_slow_precision(self) -> None:
        embedder = self.embedder
        if embedder.device.type == "cpu" and embedder.precision == "bf16" and not cpu_has_native_bf16():
            self.log(
                "warning: no native bf16 on this CPU (avx512_bf16 or AMX): bf16 is emulated, slower than fp32"
            )

    def _advance(self, progress: tqdm, rows: int) -> None:
        self._batched += rows
        progress.update(rows)

    def _timed_write(self, write: Write) -> Callable[[tuple], None]:
        def timed(item: tuple) -> None:
            t = time.perf_counter()
            write(*item)
            self.stages.timers["write"] += time.perf_counter() - t  # type: ignore[union-attr]

        return timed

    def finish(self) -> JobResult:
        tuner = getattr(self.embedder, "tuner", None)  # the default thread count changed mid-run
        tuned = f"; {tuner.note()}" if tuner is not None and tuner.tuned else ""
        self.log(self.result.summary() + tuned)
        return self.result

    def finish_unchanged(self) -> JobResult:
        """A --resume or --append that found nothing to do: what OUTPUT holds, no run figures."""
        self.log(self.result.holdings())
        return self.result

    def _progress(self) -> tqdm:
        disable = self.cfg.quiet or not stderr_is_terminal()
        total = None if disable else self.plan.known_rows()
        return tqdm(
            total=total, unit=" rows", desc="embedding", file=sys.stderr, disable=disable, dynamic_ncols=True
        )


def stderr_is_terminal() -> bool:
    """No progress bar when stderr is a file or a pipe (logs stay clean)."""
    return sys.stderr.isatty()


def _close(chunks: Iterator) -> None:
    """Close the engine's generator so its reader thread and files end with the run."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


__all__ = ["InputError", "Plan", "Run", "plan_run", "run_job"]
