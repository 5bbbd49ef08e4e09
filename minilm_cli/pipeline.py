"""One embedding job, file to shards: source -> check -> chunk -> tokenize -> model -> sink.

Three stages overlap, joined by small bounded queues so memory stays flat however long
the input is:

  reader thread   read, check, chunk, tokenize, pad (and pin, on CUDA)
  main thread     the model
  writer thread   shards, rejects, the manifest after every finished shard

SIGINT and SIGTERM stop the run between two model batches; finished shards stay, the
shard being written is removed, and the manifest says how far the run got.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from .batching import Chunk, chunk_rows
from .config import EmbedConfig
from .errors import InputError, Interrupted, OutputConflict
from .manifest import Manifest, manifest_name
from .model import Embedder
from .outdir import OutputDir
from .sharding import count_records, plan_splits
from .sinks import JsonLinesWriter, ShardWriter
from .sources import (
    CheckedRows,
    Columns,
    InputFile,
    Split,
    check_rows,
    read_file,
    resolve_inputs,
    resolve_schema,
)

QUEUE_DEPTH = 2  # chunks in flight between two stages


@dataclass
class JobResult:
    """What the run did; also the summary line and the manifest's totals."""

    rows: int = 0
    rejected: int = 0
    truncated: int = 0
    shards: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    resumed_rows: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    output: str = ""

    def add_shards(self, shards: list[dict[str, Any]]) -> None:
        """Count finished shards as the manifest lists them."""
        for shard in shards:
            self.rows += shard["rows"]
            self.rejected += shard["rejected"]
            self.truncated += shard["truncated"]
            self.tokens += shard["tokens"]
            self.padded_tokens += shard["padded_tokens"]
            self.shards += 1

    @property
    def padding_efficiency(self) -> float:
        return self.tokens / self.padded_tokens if self.padded_tokens else 1.0

    @property
    def rows_per_second(self) -> float:
        new_rows = self.rows - self.resumed_rows
        return new_rows / self.seconds if self.seconds > 0 else 0.0

    def totals(self) -> dict[str, Any]:
        out = asdict(self)
        out["padding_efficiency"] = round(self.padding_efficiency, 4)
        out["rows_per_second"] = round(self.rows_per_second, 2)
        out["seconds"] = round(self.seconds, 3)
        return out

    def summary(self) -> str:
        shards = "" if self.output == "-" else f" into {self.shards} shard(s)"
        padding = f", padding efficiency {self.padding_efficiency:.0%}" if self.padded_tokens else ""
        return (
            f"embedded {self.rows} rows{shards}; {self.rejected} rejected, {self.truncated} truncated; "
            f"{self.seconds:.1f} s, {self.rows_per_second:.0f} rows/s{padding}"
        )


def build_embedder(cfg: EmbedConfig) -> Embedder:
    return Embedder(
        model=cfg.model,
        device=cfg.device,
        precision=cfg.precision,
        pooling=cfg.pooling,
        normalize=cfg.normalize,
        max_length=cfg.max_length,
        batch_size=cfg.batch_size,
        batch_tokens=cfg.batch_tokens,
        compile=cfg.compile,
        threads=cfg.threads,
    )


def run_settings(cfg: EmbedConfig, embedder: Embedder) -> dict[str, Any]:
    """Everything that decides the bytes of the output; --resume requires it unchanged."""
    model = embedder.source
    return {
        "model": {"name": model.name, "source": model.source, "weights_sha256": model.weights_sha256},
        "dim": embedder.dim,
        "pooling": embedder.pooling,
        "normalize": embedder.normalize,
        "max_length": embedder.max_length,
        "precision": embedder.precision,
        "dtype": cfg.dtype,
        "format": cfg.output_format,
        "text_column": cfg.text_column,
        "id_column": cfg.id_column,
        "keep_columns": list(cfg.keep_columns),
        "on_error": cfg.on_error,
        "encoding_errors": cfg.encoding_errors,
        "plan": {
            "shard_rows": cfg.shard_rows,
            "chunk_size": cfg.chunk_size,
            "batch_tokens": embedder.batch_tokens,
            "batch_size": embedder.batch_size,
            "num_shards": cfg.num_shards,
            "shard_index": cfg.shard_index,
        },
    }


def run_job(
    cfg: EmbedConfig,
    embedder: Embedder | None = None,
    log: Callable[[str], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> JobResult:
    """Embed every input row of ``cfg`` into its output; the CLI's `minilm embed`.

    ``on_rows`` is told how many rows each embedded chunk held (for a caller's own progress).
    """
    return run_job_with(cfg, embedder, None, log, on_rows)


def run_job_with(
    cfg: EmbedConfig,
    embedder: Embedder | None,
    produce: Callable[[int, int], Iterable[tuple[Chunk, np.ndarray]]] | None,
    log: Callable[[str], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> JobResult:
    """run_job, with embedded chunks from ``produce(first_row, first_record)`` when given
    (the Ray engine) instead of the local reader thread and model."""
    log = log or (lambda message: None if cfg.quiet else print(message, file=sys.stderr))
    check_config(cfg)
    exclude = [] if cfg.to_stdout else [cfg.output]
    files = resolve_inputs(cfg.inputs, cfg.input_format, exclude=exclude, log=log)
    columns = Columns(cfg.text_column, cfg.id_column, tuple(cfg.keep_columns))
    schema = resolve_schema(files, columns, getattr(cfg, "column_types", None))
    plan = plan_splits(files, cfg.num_shards)  # before the model loads: bad input fails fast
    embedder = embedder or build_embedder(cfg)
    run = _Run(cfg, embedder, files, plan, log, on_rows)
    run.schema = schema
    if produce is not None:
        run.produce = produce
    if cfg.to_stdout:
        return run.to_stdout()
    prefix = "part-" if cfg.num_shards == 1 else f"part-{cfg.shard_index:05d}-"
    outdir = OutputDir(cfg.output, prefix, manifest_name(cfg.shard_index, cfg.num_shards))
    outdir.acquire()
    try:
        return run.to_directory(outdir)
    finally:
        outdir.release()


def check_config(cfg: EmbedConfig) -> None:
    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite contradict each other; pick one")
    if cfg.to_stdout and (cfg.resume or cfg.format not in (None, "jsonl")):
        raise InputError("-o - writes JSON lines to stdout; --resume and --format need a directory")
    if cfg.resume and "-" in cfg.inputs:
        raise InputError("--resume needs input files it can read again, not stdin")
    if not cfg.to_stdout and cfg.output_format == "jsonl":
        raise InputError("--format jsonl is only for -o - (stdout); use parquet or npy for a directory")
    clash = {"id", "embedding"} & set(cfg.keep_columns)
    if clash:
        name = sorted(clash)[0]
        raise InputError(
            f"--keep-columns {name}: the output already has an '{name}' column; rename it in the input"
        )
    for name in ("chunk_size", "shard_rows", "batch_size", "batch_tokens"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")


class _Run:
    """The state of one run: its threads, counters, and where it writes."""

    def __init__(
        self,
        cfg: EmbedConfig,
        embedder: Embedder,
        files: list[InputFile],
        plan: list[list[Split]],
        log: Callable,
        on_rows: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_rows = on_rows
        # Where embedded chunks come from: here, or a Ray cluster (minilm_cli.ray).
        self.produce: Callable[[int, int], Iterable[tuple[Chunk, np.ndarray]]] = self.embed_locally
        self.embedder = embedder
        self.log = log
        self.result = JobResult(output=cfg.output)
        self.files = files
        self.splits = plan[cfg.shard_index]
        self.record_end = 0
        self.schema = None  # the job's schema (sources.resolve_schema), set by run_job_with
        # Default ids number rows over all inputs: count what the shards before this one hold.
        before = [s for rank in plan[: cfg.shard_index] for s in rank]
        self.record_start = count_records(before, self._columns(), cfg.encoding_errors) if before else 0
        self.stop = threading.Event()
        self.timers = {"read": 0.0, "model": 0.0, "write": 0.0}

    # -- the two kinds of output

    def to_stdout(self) -> JobResult:
        writer = JsonLinesWriter()

        def write(chunk: Chunk, embeddings: np.ndarray) -> None:
            for reject in chunk.rejects:
                self.log(f"rejected: {reject.describe()}")
            writer.write(chunk, embeddings)
            self._count(chunk)

        self._execute(write, first_row=0, first_record=self.record_start)
        return self._finish()

    def to_directory(self, outdir: OutputDir) -> JobResult:
        cfg = self.cfg
        existing = outdir.prepare(cfg.overwrite, cfg.resume)
        settings = run_settings(cfg, self.embedder)
        inputs = [f.fingerprint() for f in self.files]
        if existing is not None:
            why = existing.mismatch(settings, inputs)
            if why:
                raise OutputConflict(f"--resume refused: {why}")
            outdir.drop_unlisted(existing)
            manifest = existing
        else:
            manifest = Manifest.new(outdir.manifest_path, settings, inputs, self._runtime())
            manifest.doc["assignment"] = {
                "splits": [s.to_json() for s in self.splits],
                "record_start": self.record_start,
            }
        next_shard, first_row, first_record = manifest.resume_point()
        first_record = max(first_record, self.record_start)
        self._count_finished(manifest)
        if existing is not None and manifest.doc.get("status") == "complete":
            self.log(f"{outdir.root} is already complete; nothing to do")
            return self._finish()
        if existing is not None:
            self.log(f"resuming after {len(manifest.shards)} finished shard(s), {first_row} rows")
        manifest.doc["status"] = "running"
        manifest.doc["runtime"] = self._runtime()
        manifest.save()
        sink = ShardWriter(
            outdir.root, cfg.output_format, cfg.dtype, prefix=outdir.prefix, first_index=next_shard
        )

        def write(chunk: Chunk, embeddings: np.ndarray) -> None:
            record = sink.write(chunk, embeddings)
            self._count(chunk)
            if record is not None:
                manifest.add_shard(record)
                manifest.save()
                self.result.shards += 1

        try:
            self._execute(write, first_row, first_record)
        except BaseException as exc:
            sink.abort()
            if existing is None and not manifest.shards and isinstance(exc, InputError):
                outdir.undo_fresh_start()
            else:
                self._close_manifest(manifest, exc)
            raise
        result = self._finish()
        manifest.doc["assignment"]["record_end"] = self.record_end
        manifest.finish("complete", result.totals())
        return result

    # -- the three stages

    def _execute(self, write: Callable[[Chunk, np.ndarray], None], first_row: int, first_record: int) -> None:
        started = time.perf_counter()
        writer = _Consumer(self._timed("write", write), self.stop, "minilm-writer")
        progress = self._progress()
        previous = _install_signal_handlers()
        tokens = 0
        try:
            for chunk, embeddings in self.produce(first_row, first_record):
                self.record_end = chunk.record_end
                writer.put((chunk, embeddings))
                tokens += chunk.tokens.real_tokens if chunk.tokens else 0
                progress.update(len(chunk))
                if self.on_rows is not None:
                    self.on_rows(len(chunk))
                progress.set_postfix_str(
                    f"{tokens / (time.perf_counter() - started):.0f} tokens/s", refresh=False
                )
            writer.close()
        except BaseException:
            self.stop.set()
            writer.join()
            raise
        finally:
            _restore_signal_handlers(previous)
            progress.close()
            self.result.seconds = time.perf_counter() - started
            self.result.stage_seconds = {k: round(v, 3) for k, v in self.timers.items()}

    def embed_locally(self, first_row: int, first_record: int) -> Iterator[tuple[Chunk, np.ndarray]]:
        """The reader thread's chunks through the model, on this (the main) thread."""
        reader_stop = threading.Event()
        reader = _Producer(lambda: self._read_chunks(first_row, first_record), reader_stop, "minilm-reader")
        try:
            for chunk in reader:
                t = time.perf_counter()
                embeddings = self.embedder.run(chunk.tokens) if chunk.tokens else _empty(self.embedder.dim)
                self.timers["model"] += time.perf_counter() - t
                yield chunk, embeddings
        finally:
            reader_stop.set()
            reader.join()

    def _read_chunks(self, first_row: int, first_record: int) -> Iterator[Chunk]:
        """The reader thread: every input file, checked, chunked, tokenized."""
        chunks = chunk_rows(
            self._checked_rows(first_record),
            self.cfg.chunk_size,
            self.cfg.shard_rows,
            first_row,
            first_record,
        )
        for chunk in chunks:
            t = time.perf_counter()
            if chunk.texts:
                chunk.tokens = self.embedder.tokenize(chunk.texts)
            self.timers["read"] += time.perf_counter() - t
            yield chunk

    def _columns(self) -> Columns:
        return Columns(self.cfg.text_column, self.cfg.id_column, tuple(self.cfg.keep_columns))

    def _checked_rows(self, skip_records: int) -> Iterator[CheckedRows]:
        cfg = self.cfg
        columns = self._columns()
        record = self.record_start
        for split in self.splits:
            part = None if split.kind == "whole" else split
            for raw in read_file(split.file, columns, cfg.chunk_size, cfg.encoding_errors, part, self.schema):
                end = record + len(raw)
                if end < skip_records or (len(raw) and end == skip_records):
                    record = end  # already in a finished shard (resume): read past it
                    continue
                checked = check_rows(raw, record, cfg.encoding_errors, cfg.on_error)
                record = end
                yield checked.drop_before(skip_records) if skip_records > checked.first_record else checked

    def _timed(self, stage: str, fn: Callable) -> Callable:
        def timed(item: tuple) -> None:
            t = time.perf_counter()
            fn(*item)
            self.timers[stage] += time.perf_counter() - t

        return timed

    # -- bookkeeping

    def _count(self, chunk: Chunk) -> None:
        r = self.result
        r.rows += len(chunk)
        r.rejected += len(chunk.rejects)
        if chunk.tokens is not None:
            r.truncated += chunk.tokens.truncated
            r.tokens += chunk.tokens.real_tokens
            r.padded_tokens += chunk.tokens.padded_tokens

    def _count_finished(self, manifest: Manifest) -> None:
        self.result.add_shards(manifest.shards)
        self.result.resumed_rows = self.result.rows

    def _finish(self) -> JobResult:
        self.log(self.result.summary())
        return self.result

    def _close_manifest(self, manifest: Manifest, exc: BaseException) -> None:
        status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
        finished = JobResult(output=self.cfg.output, seconds=self.result.seconds)
        finished.add_shards(manifest.shards)  # the discarded shard's rows are not in the output
        try:
            manifest.finish(status, finished.totals())
        except OSError:
            pass  # disk full: the last good manifest stays, listing every finished shard

    def _runtime(self) -> dict[str, Any]:
        """How this run (or this resumed part of it) ran; not compared on --resume."""
        import platform

        import torch
        import transformers

        return {
            "engine": "ray" if self.produce != self.embed_locally else "local",
            "device": str(self.embedder.device),
            "compile": self.embedder.compiled,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        }

    def _progress(self) -> tqdm:
        disable = self.cfg.quiet or not sys.stderr.isatty()
        return tqdm(
            total=None, unit=" rows", desc="embedding", file=sys.stderr, disable=disable, dynamic_ncols=True
        )


def _empty(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


# ---------------------------------------------------------------------------- threads

_DONE = object()


class _Producer(threading.Thread):
    """Runs a generator in the background; iterate to receive its items in order."""

    def __init__(self, items: Callable[[], Iterable], stop: threading.Event, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.items = items
        self.stop = stop
        self.queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for item in self.items():
                if not _put(self.queue, item, self.stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
        _put(self.queue, _DONE, self.stop)

    def __iter__(self) -> Iterator:
        while True:
            item = self.queue.get()
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item


class _Consumer(threading.Thread):
    """Applies ``handle`` to every item put, in order, in the background."""

    def __init__(self, handle: Callable[[Any], None], stop: threading.Event, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.handle = handle
        self.stop = stop
        self.queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            try:
                self.handle(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc
                return

    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self.is_alive():
                    raise self.error or RuntimeError("writer stopped") from None

    def close(self) -> None:
        self.put(_DONE)
        self.join()
        if self.error is not None:
            raise self.error


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _install_signal_handlers() -> dict | None:
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signal_handlers(previous: dict | None) -> None:
    for sig, old in (previous or {}).items():
        signal.signal(sig, old)
