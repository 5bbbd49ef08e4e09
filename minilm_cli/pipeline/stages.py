"""The stage list every engine runs, in the order the data flows:

    read -> check [record checks] -> [row stages] -> chunk -> tokenize -> [model] -> [model stages] -> write

A row stage maps a stream of CheckedRows to a stream of CheckedRows (deduplication,
reuse of earlier vectors and long-document windows plug in here); a chunk stage maps a
stream of Chunks to a stream of Chunks (tokenizing is one). Adding a stage is adding an
entry to ``row_stages`` or ``chunk_stages``. A record check sees each read block beside
its checked rows (so it can reject a row with its file and line); a model stage maps the
stream of (chunk, embeddings) after the model, on the main thread (--overflow mean merges
windows there). The loops that drive them do not change, and
the local engine, the device workers and the Ray engine all run this same list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..batching import Chunk, chunk_rows
from ..config import EmbedConfig
from ..model import Embedder
from ..model.quantize import StoredForm
from ..sources import CheckedRows, Columns, RawRows, Split, check_rows, read_file
from .dedup import CAPACITY, RowExpander, RowPlanner, TruncatedRows
from .host import host_workers, ordered_map
from .settings import job_columns

# Seconds per stage, summed over the threads that run it (so they may add up past the wall time).
TIMERS = ("read", "check", "tokenize", "pad", "model", "write")

RowStage = Callable[[Iterator[CheckedRows]], Iterator[CheckedRows]]
ChunkStage = Callable[[Iterator[Chunk]], Iterator[Chunk]]
RecordCheck = Callable[[RawRows, CheckedRows], CheckedRows]
ModelStage = Callable[[Iterator[tuple[Chunk, np.ndarray]]], Iterator[tuple[Chunk, np.ndarray]]]


@dataclass
class Stages:
    """One run's stages over its splits of the input."""

    cfg: EmbedConfig
    embedder: Embedder
    splits: list[Split]
    record_start: int  # global record number of this part's first record
    schema: object | None = None  # the resolved id + kept columns' schema, or None
    timers: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMERS, 0.0))
    row_stages: list[RowStage] = field(default_factory=list)
    chunk_stages: list[ChunkStage] = field(default_factory=list)
    record_checks: list[RecordCheck] = field(default_factory=list)
    model_stages: list[ModelStage] = field(default_factory=list)
    reuse: object | None = None  # pipeline.reuse.ReuseIndex over the --reuse outputs
    input_records: list[dict] = field(default_factory=list)  # each split's [start, end) of records
    on_batch: Callable[[int], None] | None = None  # told each model batch's rows (progress)
    truncation: TruncatedRows | None = None  # counts truncated texts of copied and reused rows too
    stored: StoredForm | None = None  # --dtype / --truncate-dim: applied by a model stage

    def __post_init__(self) -> None:
        from .windows import add_stages

        if not self.chunk_stages:
            capacity = CAPACITY if self.cfg.dedup else 0
            self.chunk_stages = [RowPlanner(capacity, self.reuse), self.tokenize]
            self.truncation = TruncatedRows(capacity, self.overflows)
            if self.embedder is None or self.embedder.pooling != "none":  # token rows: no copies to expand
                self.model_stages.append(expand_rows(RowExpander(capacity)))
        add_stages(self)  # --overflow split / mean / reject: windows replace the plain tokenizer
        if self.stored is not None and self.stored.changes_vectors:
            self._add_store_stage()

    def _add_store_stage(self) -> None:
        """Truncate and quantize right after the model, so that dedup copies and --reuse
        vectors (an earlier output's stored rows) are all in the stored form; under
        --overflow mean (no --reuse there) only after the windows are merged."""
        from .stored import store_stage

        stage = store_stage(self.stored)  # type: ignore[arg-type]
        if self.cfg.overflow == "mean":
            self.model_stages.append(stage)
        else:
            self.model_stages.insert(0, stage)

    @property
    def columns(self) -> Columns:
        return job_columns(self.cfg)

    def chunks(self, first_row: int, first_record: int) -> Iterator[Chunk]:
        """Every stage before the model: what the reader thread runs."""
        rows: Iterator[CheckedRows] = self.checked_rows(first_record)
        for stage in self.row_stages:
            rows = stage(rows)
        cfg = self.cfg
        by_records = cfg.overflow == "mean"  # a shard holds --shard-rows documents, not windows
        chunks: Iterator[Chunk] = chunk_rows(
            rows, cfg.chunk_size, cfg.shard_rows, first_row, first_record, by_records
        )
        for stage in self.chunk_stages:
            chunks = stage(chunks)
        return chunks

    def after_model(self, embedded: Iterator[tuple[Chunk, np.ndarray]]) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Every stage after the model: what the main thread runs on the engine's output."""
        for stage in self.model_stages:
            embedded = stage(embedded)
        return embedded

    def checked_rows(self, skip_records: int) -> Iterator[CheckedRows]:
        """read -> check, over this part's splits; records before ``skip_records`` are read
        past without being checked (they are in finished shards: --resume)."""
        cfg, timers = self.cfg, self.timers
        record = self.record_start
        self.input_records = []
        for split in self.splits:
            start = record
            blocks = iter(self._read(split))
            while True:
                t = time.perf_counter()
                raw = next(blocks, None)
                timers["read"] += time.perf_counter() - t
                if raw is None:
                    break
                end = record + len(raw)
                if end < skip_records or (len(raw) and end == skip_records):
                    record = end
                    continue
                t = time.perf_counter()
                checked = check_rows(raw, record, cfg.encoding_errors, cfg.on_error)
                record = end
                if skip_records > checked.first_record:
                    checked = checked.drop_before(skip_records)
                for check in self.record_checks:
                    checked = check(raw, checked)
                timers["check"] += time.perf_counter() - t
                yield checked
            self.input_records.append({"path": split.file.key, "start": start, "end": record})

    def _read(self, split: Split) -> Iterator:
        part = None if split.kind == "whole" else split
        cfg = self.cfg
        return read_file(
            split.file, self.columns, cfg.chunk_size, cfg.encoding_errors, part, schema=self.schema
        )

    def tokenize(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        """texts -> token ids -> padded batches, on the host workers (in input order); the
        truncated count remembers texts across chunks, so it runs here, in order, after."""
        workers = host_workers(self.cfg.host_workers, self.embedder.device)
        tokenized = ordered_map(self._tokenize_chunk, chunks, workers)
        try:
            for chunk, seconds in tokenized:
                for name, s in seconds.items():
                    self.timers[name] += s
                if self.truncation is not None and chunk.dedup is not None and chunk.keys is not None:
                    chunk.truncated = self.truncation.count(chunk)
                yield chunk
        finally:
            tokenized.close()  # the pool's threads end with the run (the exit joins non-daemon threads)

    def _tokenize_chunk(self, chunk: Chunk) -> tuple[Chunk, dict[str, float]]:
        """One chunk's model input (pure: any thread, any order); and the seconds it took."""
        t = time.perf_counter()
        texts = chunk.texts if chunk.dedup is None else [chunk.texts[i] for i in chunk.dedup.unique_rows]
        if not texts:
            return chunk, {}
        embedder = self.embedder
        # clip_text keeps a prefix, so --pooling none's spans index the original text too
        ids, lengths, overflowed, spans = embedder.token_ids([clip_text(text, embedder) for text in texts])
        tokenized = time.perf_counter()
        chunk.tokens = embedder.batch_ids(ids, lengths, sum(overflowed))
        chunk.tokens.overflowed = overflowed
        chunk.tokens.spans = spans
        return chunk, {"tokenize": tokenized - t, "pad": time.perf_counter() - tokenized}

    def overflows(self, texts: list[str]) -> list[bool]:
        """Whether each text is longer than --max-length tokens (it is truncated)."""
        clipped = [clip_text(text, self.embedder) for text in texts]
        return [bool(e.overflowing) for e in self.embedder.encode(clipped)]


CHARS_PER_TOKEN_GUESS = 16  # a prefix this many chars per token long almost always overflows


def clip_text(text: str, embedder: Embedder) -> str:
    """A prefix of ``text`` that tokenizes to exactly the tokens the whole text keeps after
    truncation, so a 10 MB line costs what a long sentence costs.

    The prefix ends at whitespace (no word is cut, so every token before it is the whole
    text's token too) and is accepted only when it still overflows --max-length; else it
    grows. The truncated count stays right: the prefix overflows exactly when the text does.
    """
    limit = embedder.max_length * CHARS_PER_TOKEN_GUESS
    while limit < len(text):
        cut = _last_space(text, limit)
        if cut > 0:
            prefix = text[:cut]
            if embedder.tokenizer.encode(prefix).overflowing:
                return prefix
        limit *= 4
    return text


def _last_space(text: str, limit: int) -> int:
    """Index of the last whitespace before ``limit`` (looking back a little), or -1."""
    for i in range(limit - 1, max(limit - 4096, 0), -1):
        if text[i].isspace():
            return i
    return -1


def expand_rows(expander: RowExpander) -> ModelStage:
    """The dedup / reuse expander as a model stage: one vector per row of every chunk."""

    def stage(embedded: Iterator[tuple[Chunk, np.ndarray]]) -> Iterator[tuple[Chunk, np.ndarray]]:
        for chunk, vectors in embedded:
            yield chunk, expander(chunk, vectors)

    return stage
