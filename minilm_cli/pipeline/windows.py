"""Long documents: --overflow split (one row per window), mean (windows pooled back into
one row per document) and reject (a text over --max-length is a bad row).

How windows flow through the stage list:

  check -> [reject_long]          records over --max-length become rejects (reject)
  row stage   split_rows          each text -> its windows, token ids riding along in a
                                  hidden list column of ``keep`` (split, mean); on the
                                  host workers, runs of whole texts, back in input order
  chunk       chunk_rows          a shard never ends inside a document's windows
  chunk stage tokenize_windows    the TokenizedChunk built from those ids, never re-tokenized
                                  (dedup plan in order, then layout and padding on the
                                  host workers)
  model
  model stage MeanMerge           windows -> one weighted mean per document (mean; mean.py)

A text is tokenized in pieces cut at whitespace (so the tokenizer sees whole words and its
offsets stay right across pieces) and windows are cut from a small rolling buffer, so a
10 MB line never has more than a few windows' worth of tokens in flight beside the chunk.
Where a window begins and ends (word edges, sentence ends, the overlap) is window_edges.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..batching import Chunk, FlatIds, TokenizedChunk, row_offsets
from ..config import EmbedConfig
from ..errors import BadRowError, InputError
from ..sources import CheckedRows, RawRows, Reject
from ..sources.checks import json_id
from .host import drain_timed, host_workers, ordered_chain, ordered_map
from .window_edges import next_start, sentence_ends, window_end, word_starts

RowStage = Callable[[Iterator[CheckedRows]], Iterator[CheckedRows]]
ChunkStage = Callable[[Iterator[Chunk]], Iterator[Chunk]]
TOKEN_IDS = "__minilm_token_ids"  # rides from the window stage to the tokenize stage, never written
TOKEN_SPANS = "__minilm_token_spans"  # --pooling none: each token's (start, end) in the text, likewise
PIECE_TOKENS = 16  # a piece of text is about this many --max-length's worth of characters / 16
SPACES = " \n\t\r"  # cut points every BERT-style pre-tokenizer splits at (no control characters)


def default_stride(max_length: int) -> int:
    return max_length // 8


@dataclass
class WindowPlan:
    """How texts become windows for one run."""

    tokenizer: Any  # a tokenizers.Tokenizer copy without truncation or padding
    max_length: int
    stride: int
    prefix: np.ndarray  # special ids before a window's tokens ([CLS])
    suffix: np.ndarray  # and after them ([SEP])
    piece_chars: int
    spans: bool = False  # carry each token's character span to the model's output (--pooling none)

    @property
    def span(self) -> int:
        """Text tokens per window: --max-length less the special tokens."""
        return self.max_length - len(self.prefix) - len(self.suffix)

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.suffix)


def plan_windows(cfg: EmbedConfig, embedder: Any) -> WindowPlan:
    """The window plan for ``cfg`` and its model; an impossible --stride is an InputError."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(embedder.tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    bare = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a").ids
    at = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
    prefix = np.asarray(full[:at], dtype=np.int64)
    suffix = np.asarray(full[at + len(bare) :], dtype=np.int64)
    max_length = embedder.max_length
    stride = default_stride(max_length) if cfg.stride is None else cfg.stride
    plan = WindowPlan(tok, max_length, stride, prefix, suffix, max_length * PIECE_TOKENS)
    plan.spans = embedder.pooling == "none"
    if plan.span < 1:
        raise InputError(f"--max-length {max_length} leaves no room for text beside the special tokens")
    if not 0 <= stride < plan.span:
        raise InputError(
            f"--stride {stride} must be at least 0 and below {plan.span} "
            f"(--max-length {max_length} less {plan.specials} special tokens)"
        )
    return plan


def overflow_settings(cfg: EmbedConfig, embedder: Any) -> dict[str, Any]:
    """What the manifest records (and --resume compares) about long texts."""
    windowed = cfg.overflow in ("split", "mean")
    stride = (default_stride(embedder.max_length) if cfg.stride is None else cfg.stride) if windowed else None
    return {"mode": cfg.overflow, "window": embedder.max_length, "stride": stride}


# ---------------------------------------------------------------------------- tokens and windows


def text_pieces(plan: WindowPlan, text: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(token ids, (start, end) char offsets into ``text``, word starts) piece by piece, no
    special tokens.

    Pieces end just before a space, tab or newline, so no word is cut and each piece's
    tokens are exactly the whole text's tokens there (its first token begins a word).
    """
    start, n = 0, len(text)
    while start < n:
        end = n if start + plan.piece_chars >= n else _cut(text, start, start + plan.piece_chars)
        enc = plan.tokenizer.encode(text[start:end], add_special_tokens=False)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2) + start
        yield np.asarray(enc.ids, dtype=np.int32), offsets, word_starts(enc)
        start = end


def _cut(text: str, start: int, limit: int) -> int:
    """The last space before ``limit`` (after ``start``), else the next one, else the end."""
    back = max(text.rfind(c, start + 1, limit) for c in SPACES)
    if back > start:
        return back
    ahead = [i for i in (text.find(c, limit) for c in SPACES) if i >= 0]
    return min(ahead) if ahead else len(text)


@dataclass
class Window:
    ids: np.ndarray  # int32 text tokens, no special tokens
    char_start: int
    char_end: int
    spans: np.ndarray | None = None  # (tokens, 2): each token's characters in the whole text


@dataclass
class _Buffer:
    """The tokens not yet behind every window: ids, offsets, word starts, sentence ends. The
    last token's sentence end waits for the next piece (what follows it decides)."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def add(self, text: str, ids: np.ndarray, offsets: np.ndarray, starts: np.ndarray) -> None:
        if not len(ids):
            return
        redo = min(1, len(self.ids))  # the buffer's last token, now that its follower is known
        fresh = np.concatenate((self.offsets[len(self.offsets) - redo :], offsets))
        ends = sentence_ends(text, fresh, int(offsets[-1, 1]))
        self.ids = np.concatenate((self.ids, ids))
        self.offsets = np.concatenate((self.offsets, offsets))
        self.starts = np.concatenate((self.starts, starts))
        self.ends = np.concatenate((self.ends[: len(self.ends) - redo], ends))

    def drop(self, count: int) -> None:
        self.ids, self.offsets = self.ids[count:], self.offsets[count:]
        self.starts, self.ends = self.starts[count:], self.ends[count:]

    def window(self, count: int) -> Window:
        if not count:
            return Window(self.ids[:0].copy(), 0, 0, self.offsets[:0].copy())
        return Window(
            self.ids[:count].copy(),
            int(self.offsets[0, 0]),
            int(self.offsets[count - 1, 1]),
            self.offsets[:count].copy(),
        )


def windows_of(
    plan: WindowPlan, text: str, pieces: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> Iterator[Window]:
    """The windows of ``text`` from its pieces, cut by the rule in window_edges.py: at most
    ``plan.span`` tokens, word edges, a sentence end in the last quarter preferred, at most
    ``plan.stride`` tokens shared. A text without tokens is one empty window."""
    span = plan.span
    buffer = _Buffer()
    for piece in pieces:
        buffer.add(text, *piece)
        while len(buffer.ids) > span:  # one token past the window, so its word end is known
            end = window_end(buffer.starts, buffer.ends, span)
            yield buffer.window(end)
            buffer.drop(next_start(buffer.starts, end, plan.stride))
    # What is left: more than the last window's end (a cut leaves over span tokens), or all
    yield buffer.window(len(buffer.ids))


def text_windows(plan: WindowPlan, text: str, encoding: Any = None) -> Iterator[Window]:
    """The windows of one text; ``encoding`` is its tokens when already at hand (short texts)."""
    if encoding is None:
        return windows_of(plan, text, text_pieces(plan, text))
    ids = np.asarray(encoding.ids, dtype=np.int32)
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    if len(ids) <= plan.span:  # one window, whatever its edges
        if not len(ids):
            return iter([Window(ids, 0, 0, offsets)])
        return iter([Window(ids, int(offsets[0, 0]), int(offsets[-1, 1]), offsets)])
    return windows_of(plan, text, iter([(ids, offsets, word_starts(encoding))]))


# ---------------------------------------------------------------------------- row stage: split


@dataclass
class WindowRows(CheckedRows):
    """Window rows; ``continues``: the last row's document has more windows in the next piece."""

    continues: bool = False


@dataclass
class _Gathered:
    """Windows gathered from one CheckedRows piece, not yet handed on."""

    rows: list[int] = field(default_factory=list)  # the piece's row each window comes from
    numbers: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    spans: list[np.ndarray] = field(default_factory=list)

    def add(self, row: int, number: int, window: Window, text: str) -> None:
        self.rows.append(row)
        self.numbers.append(number)
        self.starts.append(window.char_start)
        self.ends.append(window.char_end)
        self.ids.append(window.ids)
        self.texts.append(text[window.char_start : window.char_end])
        if window.spans is not None:
            self.spans.append(window.spans)

    def rows_of(self, piece: CheckedRows, specials: int, continues: bool, spans: bool = False) -> WindowRows:
        index = pa.array(self.rows, pa.int64())
        lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
        values = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int32)
        columns = {
            "window": pa.array(self.numbers, pa.int32()),
            "char_start": pa.array(self.starts, pa.int64()),
            "char_end": pa.array(self.ends, pa.int64()),
            "tokens": pa.array(lengths + specials, pa.int32()),
            TOKEN_IDS: pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32())),
        }
        if spans:  # two values per token: start, end
            flat = np.concatenate(self.spans).reshape(-1) if self.spans else np.zeros(0, np.int64)
            columns[TOKEN_SPANS] = pa.ListArray.from_arrays(pa.array(offsets * 2), pa.array(flat, pa.int32()))
        keep = piece.keep.take(index) if piece.keep is not None else None
        if keep is None:
            keep = pa.table(columns)
        else:
            for name, column in columns.items():
                keep = keep.append_column(name, column)
        positions = piece.positions[np.asarray(self.rows, dtype=np.int64)]
        rows = WindowRows(
            self.texts, piece.ids.take(index), keep, positions, [], piece.first_record, piece.records
        )
        rows.continues = continues
        return rows


WORK_CHARS = 1 << 18  # a host worker's share of a piece: its rows up to about this much text


def split_rows(plan: WindowPlan, max_rows: int, workers: int, timers: dict[str, float]) -> RowStage:
    """The row stage: every text into its windows, at most ``max_rows`` windows per piece,
    on ``workers`` host threads (windows back in input order; 0: on the reader thread).

    A piece is cut into runs of whole rows of about WORK_CHARS characters, the same cut for
    any worker count, so the threads share even a single read block; the pieces chunk_rows
    sees differ only where one document ends and the next begins, which moves no chunk edge.
    """

    def split_run(work: tuple[CheckedRows, int, int]) -> Iterator[tuple[WindowRows, float]]:
        runs = _split_piece(plan, *work, max_rows)
        while True:
            t = time.perf_counter()
            rows = next(runs, None)
            if rows is None:
                return
            yield rows, time.perf_counter() - t

    def stage(pieces: Iterator[CheckedRows]) -> Iterator[CheckedRows]:
        work = ((piece, lo, hi) for piece in pieces for lo, hi in work_runs(piece.texts, WORK_CHARS))
        yield from drain_timed(ordered_chain(split_run, work, workers), timers, "tokenize")

    return stage


def work_runs(texts: list[str], chars: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) runs of consecutive rows holding about ``chars`` characters each (at least a
    row; no rows: one empty run, so the piece's rejects still travel)."""
    lo, size = 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= chars:
            yield lo, i + 1
            lo, size = i + 1, 0
    if lo < len(texts) or not texts:
        yield lo, len(texts)


def _split_piece(
    plan: WindowPlan, piece: CheckedRows, lo: int, hi: int, max_rows: int
) -> Iterator[WindowRows]:
    """The windows of rows [lo, hi) of ``piece``; the piece's rejects go with its first run."""
    short = [i for i in range(lo, hi) if len(piece.texts[i]) <= plan.piece_chars]
    encoded = plan.tokenizer.encode_batch([piece.texts[i] for i in short], add_special_tokens=False)
    encodings = dict(zip(short, encoded))
    gathered, rejects = _Gathered(), piece.rejects if lo == 0 else []
    for row in range(lo, hi):
        text = piece.texts[row]
        for number, window in enumerate(text_windows(plan, text, encodings.pop(row, None))):
            if len(gathered.rows) == max_rows:
                out = gathered.rows_of(piece, plan.specials, number > 0, plan.spans)
                out.rejects, rejects = rejects, []
                yield out
                gathered = _Gathered()
            gathered.add(row, number, window, text)
    out = gathered.rows_of(piece, plan.specials, False, plan.spans)
    out.rejects = rejects
    yield out


# ---------------------------------------------------------------------------- chunk stage: tokens


def tokenize_windows(
    plan: WindowPlan, embedder: Any, timers: dict[str, float], planner: Any = None, workers: int = 0
) -> ChunkStage:
    """The chunk stage: the model's input from the windows' own token ids, [CLS] + ids + [SEP],
    laid out and padded on ``workers`` host threads (in order). With ``planner``
    (dedup.RowPlanner), a window whose ids were met before is copied, not run: that decision
    remembers earlier chunks, so it is made here, in order, before the threads."""

    def take_ids(chunks: Iterator[Chunk]) -> Iterator[tuple[Chunk, Any, Any, Any]]:
        for chunk in chunks:
            t = time.perf_counter()
            yield _window_columns(chunk, plan, planner)
            timers["tokenize"] += time.perf_counter() - t

    def model_input(work: tuple[Chunk, Any, Any, Any]) -> tuple[Chunk, float]:
        chunk, column, spans, rows = work
        t = time.perf_counter()
        if column is not None:
            chunk.tokens = window_tokens(plan, embedder, _rows_of(column, rows))
            if spans is not None:
                chunk.tokens.spans = window_spans(plan, _rows_of(spans, rows))
        return chunk, time.perf_counter() - t

    def stage(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        yield from drain_timed(ordered_map(model_input, take_ids(chunks), workers), timers, "pad")

    return stage


def _window_columns(chunk: Chunk, plan: WindowPlan, planner: Any) -> tuple[Chunk, Any, Any, Any]:
    """The chunk without its riding token columns; those columns (ids, and spans under
    --pooling none; none for a chunk without windows), still in pieces: the threads join them;
    and with ``planner``, the rows to run (the chunk's dedup plan over its windows' ids)."""
    from .dedup import token_keys

    if chunk.keep is None or TOKEN_IDS not in chunk.keep.column_names:
        return chunk, None, None, None
    column = chunk.keep.column(TOKEN_IDS)
    spans = chunk.keep.column(TOKEN_SPANS) if plan.spans else None
    chunk.keep = chunk.keep.drop_columns(
        [c for c in (TOKEN_IDS, TOKEN_SPANS) if c in chunk.keep.column_names]
    )
    if planner is not None:
        rows = []
        for part in column.chunks:  # offsets index the part's whole values (a slice keeps them)
            offsets, values = part.offsets.to_numpy(), part.values.to_numpy()
            rows.extend(values[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
        planner.plan(chunk, token_keys(rows))
        return chunk, column, spans, chunk.dedup.unique_rows
    return chunk, column, spans, None


def _rows_of(column: pa.ChunkedArray, rows: list[int] | None) -> pa.ListArray:
    """The column in one piece, only ``rows`` of it (in order; None or every row: all)."""
    joined = column.combine_chunks()
    if rows is None or len(rows) == len(joined):  # rows are distinct and sorted: every row
        return joined
    return joined.take(pa.array(rows, pa.int64()))


def window_tokens(plan: WindowPlan, embedder: Any, column: pa.ListArray) -> TokenizedChunk:
    """[CLS] + each window's ids + [SEP], written into one flat array (no array per row)."""
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy()
    head, tail = len(plan.prefix), len(plan.suffix)
    lengths = np.diff(offsets) + head + tail
    bounds = row_offsets(lengths)
    flat = np.empty(int(bounds[-1]), dtype=np.int32)
    body = np.ones(len(flat), dtype=bool)
    for k, token in enumerate(plan.prefix):
        flat[bounds[:-1] + k] = token
        body[bounds[:-1] + k] = False
    for k, token in enumerate(plan.suffix):
        flat[bounds[1:] - tail + k] = token
        body[bounds[1:] - tail + k] = False
    flat[body] = values[offsets[0] : offsets[-1]]
    return embedder.batch_ids(FlatIds(flat, bounds), lengths, truncated=0)


def window_spans(plan: WindowPlan, column: pa.ListArray) -> list[np.ndarray]:
    """Each window's token spans with (0, 0) for its [CLS] and [SEP], as window_tokens lays them out."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy().reshape(-1, 2)
    head, tail = len(plan.prefix), len(plan.suffix)
    rows = []
    for a, b in zip(offsets[:-1] // 2, offsets[1:] // 2):
        row = np.zeros((head + (b - a) + tail, 2), dtype=np.int32)
        row[head : head + (b - a)] = values[a:b]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- record check: reject


def reject_long(plan: WindowPlan, on_error: str) -> Callable[[RawRows, CheckedRows], CheckedRows]:
    """--overflow reject: a text over --max-length tokens is a bad row, as --on-error says."""

    def check(raw: RawRows, checked: CheckedRows) -> CheckedRows:
        counts = token_counts(plan, checked.texts)
        bad = [i for i, count in enumerate(counts) if count > plan.max_length]
        if not bad:
            return checked
        rejects = [_reject(raw, checked, i, counts[i], plan.max_length) for i in bad]
        if on_error == "fail":
            raise BadRowError(f"bad row: {rejects[0].describe()} (use --on-error skip to set it aside)")
        good = np.setdiff1d(np.arange(len(counts)), bad)
        index = pa.array(good, pa.int64())
        all_rejects = sorted([*checked.rejects, *rejects], key=_file_order)
        return CheckedRows(
            [checked.texts[i] for i in good],
            checked.ids.take(index),
            checked.keep.take(index) if checked.keep is not None else None,
            checked.positions[good],
            all_rejects,
            checked.first_record,
            checked.records,
        )

    return check


def token_counts(plan: WindowPlan, texts: list[str]) -> list[int]:
    """Tokens of each text with the special tokens; long texts counted piece by piece."""
    short = [t for t in texts if len(t) <= plan.piece_chars]
    lengths = iter(len(e.ids) for e in plan.tokenizer.encode_batch(short, add_special_tokens=False))
    counts = []
    for text in texts:
        if len(text) <= plan.piece_chars:
            counts.append(next(lengths) + plan.specials)
        else:
            counts.append(sum(len(ids) for ids, _, _ in text_pieces(plan, text)) + plan.specials)
    return counts


def _file_order(reject: Reject) -> int:
    return reject.location if reject.location is not None else -1


def _reject(raw: RawRows, checked: CheckedRows, i: int, count: int, max_length: int) -> Reject:
    record = int(checked.positions[i]) - checked.first_record
    kind = "line" if raw.file.format in ("jsonl", "txt") else "row"
    line = raw.raw_lines[record] if raw.raw_lines is not None else checked.texts[i]
    reason = f"text is {count} tokens, over --max-length {max_length} (--overflow reject)"
    reject = Reject(raw.file.path, kind, raw.locations[record], reason, line)
    reject.position = int(checked.positions[i])
    reject.id = json_id(checked.ids[i].as_py())  # the default id or the --id-column's value
    return reject


# ---------------------------------------------------------------------------- wiring


def add_stages(stages: Any) -> None:
    """Put --overflow's stages into a run's stage list (truncate adds none)."""
    cfg, embedder = stages.cfg, stages.embedder
    if cfg.overflow == "truncate" or embedder is None:
        return
    plan = plan_windows(cfg, embedder)
    if cfg.overflow == "reject":
        stages.record_checks.append(reject_long(plan, cfg.on_error))
        return
    from .dedup import RowPlanner

    workers = host_workers(cfg.host_workers, embedder.device)
    stages.row_stages.append(split_rows(plan, cfg.chunk_size, workers, stages.timers))
    planner = next((s for s in stages.chunk_stages if isinstance(s, RowPlanner)), None)
    stages.chunk_stages = [tokenize_windows(plan, embedder, stages.timers, planner, workers)]
    if cfg.overflow == "mean":
        from .mean import MeanMerge

        stages.model_stages.append(MeanMerge(embedder.normalize))
