"""From an EmbedConfig to the model, the checked flags, and the settings that decide the output's bytes."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..config import ON_ERROR, OVERFLOW, TOKEN_COLUMNS, EmbedConfig, kept_problem
from ..errors import InputError
from ..model import Embedder
from ..model.quantize import StoredForm
from ..sources import Columns
from .windows import overflow_settings, plan_windows


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
        layer=cfg.layer,
    )


def job_columns(cfg: EmbedConfig) -> Columns:
    """The input columns the job reads, and the output names of the kept ones."""
    kept = cfg.kept
    renamed = any(source != name for source, name in kept)
    return Columns(
        cfg.text_column,
        cfg.id_column,
        tuple(source for source, _ in kept),
        tuple(name for _, name in kept) if renamed else (),
    )


def run_settings(
    cfg: EmbedConfig,
    embedder: Embedder,
    columns: list[dict] | None = None,
    formats: frozenset[str] = frozenset(),
    stored: StoredForm | None = None,
) -> dict[str, Any]:
    """Everything that decides the bytes of the output; --resume requires it unchanged.

    ``stored`` (the run's --dtype/--truncate-dim, ranges resolved) sets ``dim`` to the dims
    kept (after --truncate-dim; binary stores them as bits) and adds ``truncate_dim`` and
    int8 ``ranges`` when they are set.

    ``formats`` are the input formats read. ``tsv_quoting`` is recorded only where it changes
    what is read (a TSV input, quotes quoting): a manifest without it (written before the
    flag, or without TSV quoting) ran with quotes as text, and is compared as such. ``layer``
    likewise: recorded only when it is not the last hidden state (the only one an earlier
    output can hold). ``txt_blank_lines``: a text input's blank lines are not records; a
    manifest of text input without the key numbered them, so it is refused rather than
    continued off by one."""
    model = embedder.source
    settings = {
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
        # as given, renames included ("a:b"), so --resume/--append/merge refuse another rename
        "keep_columns": [source if source == name else f"{source}:{name}" for source, name in cfg.kept],
        "on_error": cfg.on_error,
        "encoding_errors": cfg.encoding_errors,
        "overflow": overflow_settings(cfg, embedder),
        "plan": {
            "shard_rows": cfg.shard_rows,
            "chunk_size": cfg.chunk_size,
            "batch_tokens": embedder.batch_tokens,
            "batch_size": embedder.batch_size,
            "dedup": cfg.dedup,
            "reuse": list(cfg.reuse),
            "num_shards": cfg.num_shards,
            "shard_index": cfg.shard_index,
        },
    }
    if stored is not None:
        settings.update(stored.settings())
    if embedder.network.layer is not None:
        settings["layer"] = embedder.network.layer  # hidden_states' index, never negative
    if "tsv" in formats and cfg.tsv_quoting != "none":
        settings["tsv_quoting"] = cfg.tsv_quoting
    if "txt" in formats:
        settings["txt_blank_lines"] = "skipped"
    if columns is not None:
        settings["columns"] = columns
    return settings


def formats_read(files: list) -> frozenset[str]:
    return frozenset(f.format for f in files)


def metadata_schema(cfg: EmbedConfig, schema: pa.Schema | None) -> pa.Schema | None:
    """The output's id and kept columns: the job's schema, with the id column named ``id``
    (default ids are int64 row numbers) and each kept column under its output name. Every
    shard is written with it, even one of rejects only."""
    if schema is None:
        return None
    if cfg.id_column:
        id_field = schema.field(cfg.id_column).with_name("id")
    else:
        id_field = pa.field("id", pa.int64())
    columns = [id_field, *(schema.field(source).with_name(name) for source, name in cfg.kept)]
    if cfg.overflow == "split":  # each window's place in its document (pipeline/windows.py)
        columns += [
            pa.field("window", pa.int32()),
            pa.field("char_start", pa.int64()),
            pa.field("char_end", pa.int64()),
            pa.field("tokens", pa.int32()),
        ]
    if cfg.pooling == "none":  # one entry per token (model/tokens.py); embedding goes in at 1
        columns += [pa.field(name, pa.list_(pa.int32())) for name in TOKEN_COLUMNS]
    return pa.schema(columns)


def check_config(cfg: EmbedConfig) -> None:
    """Flags that contradict each other, or cannot work, fail before anything is read."""
    if isinstance(cfg.inputs, str):
        cfg.inputs = [cfg.inputs]  # the Python API: one path is one input, not its characters
    if cfg.on_error not in ON_ERROR:
        raise InputError(f"on_error {cfg.on_error!r}: use one of {', '.join(ON_ERROR)}")
    if cfg.encoding_errors not in ("strict", "replace"):
        raise InputError(f"encoding_errors {cfg.encoding_errors!r}: use strict or replace")
    if not cfg.output:
        raise InputError("-o/--output is empty: name a directory, or - for stdout")
    if cfg.append and (cfg.resume or cfg.overwrite or cfg.to_stdout):
        raise InputError("--append adds to an OUTPUT directory: not with --resume, --overwrite or -o -")
    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite contradict each other; pick one")
    if cfg.to_stdout and (cfg.resume or cfg.format not in (None, "jsonl")):
        raise InputError("-o - writes JSON lines to stdout; --resume and --format need a directory")
    if cfg.resume and "-" in cfg.inputs:
        raise InputError("--resume needs input files it can read again, not stdin")
    if not cfg.to_stdout and cfg.output_format == "jsonl":
        raise InputError("--format jsonl is only for -o - (stdout); use parquet or npy for a directory")
    _check_columns(cfg)
    _check_overflow(cfg)
    from .stored import check_stored  # here, not at the top: stored imports the stage list

    check_stored(cfg)
    _check_token_output(cfg)
    for name in ("chunk_size", "shard_rows", "batch_size", "batch_tokens"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")


def _check_columns(cfg: EmbedConfig) -> None:
    problem = kept_problem(cfg.keep_columns, cfg.overflow, cfg.pooling)
    if problem:
        raise InputError(problem)


def _check_overflow(cfg: EmbedConfig) -> None:
    if cfg.overflow not in OVERFLOW:
        raise InputError(f"overflow {cfg.overflow!r}: use one of {', '.join(OVERFLOW)}")
    if cfg.stride is not None and cfg.overflow not in ("split", "mean"):
        raise InputError(f"--stride is for --overflow split or mean, not {cfg.overflow}")
    if cfg.stride is not None and cfg.stride < 0:
        raise InputError("--stride must be at least 0")
    if cfg.reuse and cfg.overflow == "mean":
        raise InputError(
            "--reuse does not work with --overflow mean: a mean row pools a whole document's "
            "windows, and --reuse copies vectors of single texts or windows; run without --reuse"
        )


def _check_token_output(cfg: EmbedConfig) -> None:
    """--pooling none writes a list of token vectors per row; the stages that copy one vector
    per row (--reuse) or pool windows (--overflow mean) do not apply. Repeated texts are simply
    embedded again: deduplication is off."""
    if cfg.layer is not None and not isinstance(cfg.layer, int):
        raise InputError(f"--layer {cfg.layer!r}: expected an integer")
    if cfg.pooling != "none":
        return
    if cfg.reuse:
        raise InputError("--reuse does not work with --pooling none (it copies one vector per row)")
    if cfg.overflow == "mean":
        raise InputError("--overflow mean pools windows: use --overflow split with --pooling none")
    if cfg.normalize:
        raise InputError("--normalize does not apply to --pooling none: token vectors are never normalised")
    if cfg.dtype not in ("float32", "float16") or cfg.truncate_dim is not None:
        raise InputError(
            "--dtype int8/uint8/binary/ubinary and --truncate-dim are for pooled vectors: "
            "--pooling none stores token vectors as float32 or float16"
        )
    cfg.dedup = False


def check_windows(cfg: EmbedConfig, embedder: Embedder) -> None:
    """The flags that need the model (--stride against --max-length), before OUTPUT is touched."""
    if cfg.overflow != "truncate":
        plan_windows(cfg, embedder)
