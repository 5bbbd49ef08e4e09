"""Long documents: --overflow split (one row per window), mean (windows pooled back into
one row per document) and reject (a text over --max-length is a bad row).

How windows flow through the stage list:

  check -> [reject_long]          records over --max-length become rejects (reject)
  row stage   split_rows          each text -> its windows, token ids riding along in a
                                  hidden list column of ``keep`` (split, mean)
  chunk       chunk_rows          a shard never ends inside a document's windows
  chunk stage tokenize_windows    the TokenizedChunk built from those ids, never re-tokenized
  model
  model stage MeanMerge           windows -> one weighted mean per document (mean)

A text is tokenized in pieces cut at whitespace (so the tokenizer sees whole words and its
offsets stay right across pieces) and windows are cut from a small rolling buffer, so a
10 MB line never has more than a few windows' worth of tokens in flight beside the chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..batching import Chunk, TokenizedChunk, pad_batch, plan_batches
from ..config import EmbedConfig
from ..errors import BadRowError, InputError
from ..sources import CheckedRows, RawRows, Reject

WINDOW_COLUMNS = ("window", "char_start", "char_end", "tokens")
TOKEN_IDS = "__minilm_token_ids"  # rides from the window stage to the tokenize stage, never written
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


def text_pieces(plan: WindowPlan, text: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(token ids, (start, end) char offsets into ``text``) piece by piece, no special tokens.

    Pieces end just before a space, tab or newline, so no word is cut and each piece's
    tokens are exactly the whole text's tokens there.
    """
    start, n = 0, len(text)
    while start < n:
        end = n if start + plan.piece_chars >= n else _cut(text, start, start + plan.piece_chars)
        enc = plan.tokenizer.encode(text[start:end], add_special_tokens=False)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2) + start
        yield np.asarray(enc.ids, dtype=np.int32), offsets
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


def windows_of(plan: WindowPlan, pieces: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[Window]:
    """Windows of ``plan.span`` tokens, each starting ``span - stride`` tokens after the one
    before; the last holds what is left. A text without tokens is one empty window."""
    span, step = plan.span, plan.span - plan.stride
    ids = np.zeros(0, dtype=np.int32)
    offsets = np.zeros((0, 2), dtype=np.int64)
    emitted = False
    for piece_ids, piece_offsets in pieces:
        ids = np.concatenate((ids, piece_ids))
        offsets = np.concatenate((offsets, piece_offsets))
        while len(ids) >= span:
            yield _window(ids[:span], offsets[:span])
            emitted = True
            ids, offsets = ids[step:], offsets[step:]
    if not emitted or len(ids) > plan.stride:  # tokens no window holds yet
        yield _window(ids, offsets)


def _window(ids: np.ndarray, offsets: np.ndarray) -> Window:
    if not len(ids):
        return Window(ids.copy(), 0, 0)
    return Window(ids.copy(), int(offsets[0, 0]), int(offsets[-1, 1]))


def text_windows(plan: WindowPlan, text: str, encoding: Any = None) -> Iterator[Window]:
    """The windows of one text; ``encoding`` is its tokens when already at hand (short texts)."""
    if encoding is None:
        return windows_of(plan, text_pieces(plan, text))
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    return windows_of(plan, iter([(np.asarray(encoding.ids, dtype=np.int32), offsets)]))


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

    def add(self, row: int, number: int, window: Window, text: str) -> None:
        self.rows.append(row)
        self.numbers.append(number)
        self.starts.append(window.char_start)
        self.ends.append(window.char_end)
        self.ids.append(window.ids)
        self.texts.append(text[window.char_start : window.char_end])

    def rows_of(self, piece: CheckedRows, specials: int, continues: bool) -> WindowRows:
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


def split_rows(plan: WindowPlan, max_rows: int) -> Callable[[Iterator[CheckedRows]], Iterator[CheckedRows]]:
    """The row stage: every text into its windows, at most ``max_rows`` windows per piece."""

    def stage(pieces: Iterator[CheckedRows]) -> Iterator[CheckedRows]:
        for piece in pieces:
            yield from _split_piece(plan, piece, max_rows)

    return stage


def _split_piece(plan: WindowPlan, piece: CheckedRows, max_rows: int) -> Iterator[WindowRows]:
    short = [i for i, text in enumerate(piece.texts) if len(text) <= plan.piece_chars]
    encoded = plan.tokenizer.encode_batch([piece.texts[i] for i in short], add_special_tokens=False)
    encodings = dict(zip(short, encoded))
    gathered, rejects = _Gathered(), piece.rejects
    for row, text in enumerate(piece.texts):
        for number, window in enumerate(text_windows(plan, text, encodings.pop(row, None))):
            if len(gathered.rows) == max_rows:
                out = gathered.rows_of(piece, plan.specials, continues=number > 0)
                out.rejects, rejects = rejects, []
                yield out
                gathered = _Gathered()
            gathered.add(row, number, window, text)
    out = gathered.rows_of(piece, plan.specials, continues=False)
    out.rejects = rejects
    yield out


# ---------------------------------------------------------------------------- chunk stage: tokens


def tokenize_windows(plan: WindowPlan, embedder: Any, timers: dict[str, float]) -> Callable:
    """The chunk stage: the model's input from the windows' own token ids, [CLS] + ids + [SEP]."""
    import time

    def stage(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        for chunk in chunks:
            t = time.perf_counter()
            if chunk.keep is not None and TOKEN_IDS in chunk.keep.column_names:
                column = chunk.keep.column(TOKEN_IDS).combine_chunks()
                chunk.keep = chunk.keep.drop_columns([TOKEN_IDS])
                chunk.tokens = window_tokens(plan, embedder, column)
            timers["read"] += time.perf_counter() - t
            yield chunk

    return stage


def window_tokens(plan: WindowPlan, embedder: Any, column: pa.ListArray) -> TokenizedChunk:
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy()
    head, tail = len(plan.prefix), len(plan.suffix)
    ids: list[np.ndarray] = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        row = np.empty(head + (b - a) + tail, dtype=np.int64)
        row[:head] = plan.prefix
        row[head : head + (b - a)] = values[a:b]
        row[head + (b - a) :] = plan.suffix
        ids.append(row)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    chunk = TokenizedChunk(ids, lengths, truncated=0)
    for rows in plan_batches(lengths, embedder.batch_tokens, embedder.batch_size):
        chunk.batches.append(pad_batch(ids, lengths, rows, embedder.pad_id))
    return chunk


# ---------------------------------------------------------------------------- model stage: mean


@dataclass
class MergedTokens(TokenizedChunk):
    """The token counts of the windows behind a chunk of merged rows (their ids are gone)."""

    padded: int = 0

    @property
    def padded_tokens(self) -> int:
        return self.padded


@dataclass
class _Open:
    """A document whose windows have begun but not all arrived."""

    total: np.ndarray  # sum of token-weighted window vectors, float64
    weight: int
    ids: pa.Array  # its id and kept columns (one row)
    keep: pa.Table | None


class MeanMerge:
    """The model stage of --overflow mean: one row per document, the mean of its windows'
    vectors (as the model returns them, so normalised when the model normalises) weighted
    by their token counts (special tokens included), L2-normalised again when the model
    normalises. Sums are float64; a document's windows never straddle a shard, so a
    resumed run merges exactly what the first run merged."""

    def __init__(self, normalize: bool) -> None:
        self.normalize = normalize
        self.next_row: int | None = None
        self.open: _Open | None = None
        self.held: list[Chunk] = []  # chunks that completed no document: their counts and rejects

    def __call__(self, embedded: Iterator[tuple[Chunk, np.ndarray]]) -> Iterator[tuple[Chunk, np.ndarray]]:
        for chunk, vectors in embedded:
            if self.next_row is None:
                self.next_row = chunk.first_row
            merged = self._merge(chunk, vectors)
            if merged is None:
                self.held.append(chunk)
                continue
            yield merged

    def _merge(self, chunk: Chunk, vectors: np.ndarray) -> tuple[Chunk, np.ndarray] | None:
        n = len(chunk)
        keep = chunk.keep
        numbers = keep.column("window").to_numpy() if n else np.zeros(0, np.int32)
        weights = keep.column("tokens").to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
        starts = np.flatnonzero(numbers == 0)
        cuts = np.concatenate(([0], starts[starts > 0])) if n else np.zeros(0, np.int64)
        totals = np.add.reduceat(vectors.astype(np.float64) * weights[:, None], cuts) if n else None
        sums = np.add.reduceat(weights, cuts) if n else None
        done_totals, done_weights, done_ids, done_keep = [], [], [], []
        for k, cut in enumerate(cuts):
            if numbers[cut] != 0:  # the open document's later windows
                self.open.total += totals[k]  # type: ignore[union-attr]
                self.open.weight += int(sums[k])  # type: ignore[union-attr]
                continue
            self._close_open(done_totals, done_weights, done_ids, done_keep)
            self.open = _Open(totals[k], int(sums[k]), chunk.ids.slice(cut, 1), _drop(keep.slice(cut, 1)))
        if chunk.shard_end:
            self._close_open(done_totals, done_weights, done_ids, done_keep)
        if not done_weights and not chunk.shard_end:
            return None
        return self._emit(chunk, vectors.shape[1], done_totals, done_weights, done_ids, done_keep)

    def _close_open(self, totals: list, weights: list, ids: list, keep: list) -> None:
        if self.open is not None:
            totals.append(self.open.total)
            weights.append(self.open.weight)
            ids.append(self.open.ids)
            keep.append(self.open.keep)
            self.open = None

    def _emit(
        self, chunk: Chunk, dim: int, totals: list, weights: list, ids: list, keep: list
    ) -> tuple[Chunk, np.ndarray]:
        count = len(weights)
        vectors = np.zeros((0, dim))
        if count:
            vectors = np.stack(totals) / np.asarray(weights, dtype=np.float64)[:, None]
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        held, self.held = [*self.held, chunk], []
        out = Chunk(
            texts=[""] * count,
            ids=pa.concat_arrays(ids) if ids else chunk.ids.slice(0, 0),
            keep=pa.concat_tables(keep) if keep and keep[0] is not None else None,
            rejects=[r for c in held for r in c.rejects],
            first_row=self.next_row,  # type: ignore[arg-type]
            record_end=chunk.record_end,
            shard_end=chunk.shard_end,
            tokens=_counts(held),
        )
        self.next_row += count  # type: ignore[operator]
        return out, vectors.astype(np.float32)


def _drop(keep: pa.Table) -> pa.Table | None:
    """The kept columns without the window columns (None when nothing else was kept)."""
    rest = keep.drop_columns([c for c in WINDOW_COLUMNS if c in keep.column_names])
    return rest if rest.num_columns else None


def _counts(chunks: list[Chunk]) -> MergedTokens:
    tokens = [c.tokens for c in chunks if c.tokens is not None]
    lengths = np.concatenate([t.lengths for t in tokens]) if tokens else np.zeros(0, np.int64)
    return MergedTokens([], lengths, 0, padded=sum(t.padded_tokens for t in tokens))


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
            counts.append(sum(len(ids) for ids, _ in text_pieces(plan, text)) + plan.specials)
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
    stages.row_stages.append(split_rows(plan, cfg.chunk_size))
    stages.chunk_stages = [tokenize_windows(plan, embedder, stages.timers)]
    if cfg.overflow == "mean":
        stages.model_stages.append(MeanMerge(embedder.normalize))
