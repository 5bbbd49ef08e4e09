"""The Ray Data engine: the same Embedder, run by Ray actors, written to the same layout.

    minilm embed data/*.parquet -o out/ --engine ray [--ray-address ADDR] [--concurrency N]

Ray reads the inputs (read_parquet, read_csv, read_json, read_text), ``map_batches`` runs
``EmbedBatches`` (one Embedder per actor: tokenize, length-sorted token-budget batches, model,
pooling, exactly as locally), and the driver streams the results, in input order, through
the local engine's chunking, ShardWriter and manifest. So ``minilm verify`` and every
reader treat the output like any other.

For your own Ray pipelines: ``embed_dataset(ds, text_column="text", ...)`` returns ``ds`` with
an ``embedding`` column (null where the row was rejected) and a ``reject_reason`` column.
Ray is an optional extra: ``pip install '.[ray]'`` in a clone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from .batching import Chunk, chunk_rows
from .config import EmbedConfig
from .dataframes import embed_values
from .errors import InputError
from .pipeline import JobResult, build_embedder, run_job
from .pipeline.dedup import text_keys
from .pipeline.engine import embedder_runtime
from .sources import CheckedRows, InputFile, RawRows, check_rows, resolve_inputs
from .storage import arrow_filesystem, is_remote

# Reading is light next to embedding: a quarter CPU per read task leaves the rest to the actors.
READ_TASK = {"num_cpus": 0.25}


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'ray[data]' (or '.[ray]' in a clone)") from None
    return ray


class EmbedBatches:
    """A Ray Data callable class: builds the Embedder once per actor, embeds pyarrow batches."""

    def __init__(self, text_column: str, encoding_errors: str = "strict", **embedder_options: Any) -> None:
        from .model import Embedder

        self.text_column = text_column
        self.encoding_errors = encoding_errors
        self.embedder = Embedder(**embedder_options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        column = batch.column(self.text_column).to_pylist()
        full, good, reasons = embed_values(self.embedder, column, self.encoding_errors)
        values = pa.array(full.reshape(-1))
        embedding = pa.FixedSizeListArray.from_arrays(values, self.embedder.dim, mask=pa.array(~good))
        return batch.append_column("embedding", embedding).append_column(
            "reject_reason", pa.array(reasons, pa.string())
        )


def embed_dataset(
    ds: Any,
    text_column: str = "text",
    *,
    concurrency: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None,
    batch_rows: int = 8192,
    encoding_errors: str = "strict",
    **embedder_options: Any,
) -> Any:
    """``ds`` plus ``embedding`` and ``reject_reason`` columns, embedded by actors.

    ``embedder_options`` are Embedder's: model, device, precision, pooling, normalize,
    max_length, batch_size, batch_tokens, threads. ``batch_rows`` rows are sorted and batched
    together. On CPUs, leave Ray's readers some CPU: actors that hold every CPU starve them.
    """
    ray = _ray()
    gpus = gpus_per_worker or 0
    if gpus and embedder_options.get("device", "auto") == "auto":
        embedder_options["device"] = "cuda"
    return ds.map_batches(
        EmbedBatches,
        fn_constructor_kwargs={
            "text_column": text_column,
            "encoding_errors": encoding_errors,
            **embedder_options,
        },
        batch_size=batch_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=concurrency or 1),
        num_gpus=gpus,
        num_cpus=cpus_per_worker,
        zero_copy_batch=True,
    )


def read_inputs(cfg: EmbedConfig) -> Any:
    """One Ray Dataset over the inputs, in input order."""
    ray = _ray()
    files = resolve_inputs(cfg.inputs, cfg.input_format, tsv_quoting=cfg.tsv_quoting)
    formats = {f.format for f in files}
    if "-" in cfg.inputs or len(formats) != 1:
        raise InputError("--engine ray reads files of one format (not stdin); run one job per format")
    (fmt,) = formats
    paths = [f.path for f in files]
    where: dict[str, Any] = {"ray_remote_args": READ_TASK}
    if any(is_remote(p) for p in paths):
        # an object store: Ray's read tasks get its pyarrow file system, built from the same
        # --storage-option values (pickled with it), and the store's own names for the files
        where["filesystem"], paths = arrow_filesystem(paths)
    if fmt == "txt":
        ds = ray.data.read_text(paths, **where)
        if cfg.text_column != "text":
            ds = ds.rename_columns({"text": cfg.text_column})
        return ds
    if fmt in ("csv", "tsv"):
        return _read_delimited(ray, files, fmt, paths, where)
    if fmt == "jsonl":
        return ray.data.read_json(paths, lines=True, **where)
    columns = [cfg.text_column] + ([cfg.id_column] if cfg.id_column else []) + [s for s, _ in cfg.kept]
    return ray.data.read_parquet(paths, columns=list(dict.fromkeys(columns)), **where)


def _read_delimited(ray: Any, files: list[InputFile], fmt: str, paths: list[str], where: dict) -> Any:
    """CSV/TSV values as the text written, as the local engine reads them: every column a
    string (nothing inferred), and TSV quoted as CSV unless --tsv-quoting none."""
    import pyarrow.csv as pa_csv

    from .sources.delimited import read_header
    from .sources.streams import open_binary

    with open_binary(files[0]) as stream:
        names = read_header(files[0], stream)
    parse = pa_csv.ParseOptions(
        delimiter="\t" if fmt == "tsv" else ",", quote_char='"' if files[0].quoted else False
    )
    convert = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in names}, strings_can_be_null=False
    )
    return ray.data.read_csv(paths, parse_options=parse, convert_options=convert, **where)


def run_ray_job(
    cfg: EmbedConfig,
    address: str | None = None,
    concurrency: int | None = None,
    gpus_per_worker: float | None = None,
) -> JobResult:
    """`minilm embed --engine ray`: embed on Ray, write shards and manifest on the driver."""
    ray = _ray()
    if cfg.resume or cfg.append or cfg.reuse or cfg.num_shards != 1 or cfg.to_stdout:
        raise InputError(
            "--engine ray writes a fresh directory: no --resume, --append, --reuse, --num-shards or -o -"
        )
    if cfg.pooling == "none":
        raise InputError("--engine ray writes one vector per row: --pooling none runs with --engine local")
    _init_ray(ray, address, cfg.quiet)
    engine = RayEngine(cfg, read_inputs(cfg), concurrency, gpus_per_worker, ray)
    return run_job(cfg, engine.driver, engine=engine)


def _init_ray(ray: Any, address: str | None, quiet: bool) -> None:
    import logging
    import sys

    ray.init(
        address=address,
        ignore_reinit_error=True,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in input order
    context.enable_progress_bars = not quiet and sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.WARNING)


class RayEngine:
    """Ray reads and embeds; the driver re-checks rows (same rejects, same ids) and chunks them
    through the same stages' chunking, so shards and manifest are the local engine's."""

    name = "ray"

    def __init__(
        self, cfg: EmbedConfig, ds: Any, concurrency: int | None, gpus: float | None, ray: Any
    ) -> None:
        self.cfg = cfg
        if cfg.overflow != "truncate":
            raise InputError(f"--overflow {cfg.overflow} runs on the local engine only, not --engine ray")
        actors = concurrency or 1
        cpus = float(ray.cluster_resources().get("CPU", 1))
        threads, cpus_per_worker = cfg.threads, None
        if not gpus:
            # Each CPU actor reserves one CPU (Ray's default) and runs on its share of the cores;
            # actors holding every CPU would starve the read tasks, and the job would hang.
            if actors + READ_TASK["num_cpus"] > cpus:
                raise InputError(f"--concurrency {actors}: too many CPU actors for {cpus:g} CPUs")
            cpus_per_worker = 1
            threads = threads or max(1, round((cpus - READ_TASK["num_cpus"]) / actors))
        # The driver resolves the model once, for the manifest's settings and the actors' options.
        self.driver = build_embedder(EmbedConfig(**{**cfg.__dict__, "device": "cpu"}))
        self.options = self._actor_options(gpus, threads)
        self.actors = {"concurrency": actors, "gpus_per_worker": gpus or 0}
        self.embedded = embed_dataset(
            ds,
            cfg.text_column,
            concurrency=concurrency,
            gpus_per_worker=gpus,
            cpus_per_worker=cpus_per_worker,
            batch_rows=cfg.chunk_size,
            encoding_errors=cfg.encoding_errors,
            **self.options,
        )

    def _actor_options(self, gpus: float | None, threads: int | None) -> dict[str, Any]:
        driver, cfg = self.driver, self.cfg
        return {
            "model": driver.source.path,
            "device": "cuda" if gpus else "cpu",
            "precision": driver.precision if not gpus else cfg.precision,
            "pooling": driver.pooling,
            "normalize": driver.normalize,
            "max_length": driver.max_length,
            "layer": driver.layer,
            "batch_size": driver.batch_size if not gpus else cfg.batch_size,
            "batch_tokens": driver.batch_tokens if not gpus else cfg.batch_tokens,
            "threads": threads,
        }

    def embedded_chunks(
        self, stages: Any, first_row: int, first_record: int
    ) -> Iterator[tuple[Chunk, np.ndarray]]:
        cfg, dim = self.cfg, self.driver.dim
        pieces = _checked_pieces(self.embedded, cfg)
        for chunk in chunk_rows(pieces, cfg.chunk_size, cfg.shard_rows, first_row, first_record):
            table = chunk.keep if chunk.keep is not None else pa.table({})
            has = "embedding" in table.column_names
            vectors = _vectors(table.column("embedding"), dim) if has else np.zeros((0, dim), np.float32)
            rest = table.drop_columns(["embedding"]) if has else table
            chunk.keep = rest if rest.num_columns else None
            chunk.keys = text_keys(chunk.texts)  # the shard's key file, as the local engine writes it
            yield chunk, vectors

    def runtime(self) -> dict[str, Any]:
        """What the actors ran (not the driver's CPU defaults): device, precision, batches."""
        runtime = embedder_runtime(self.driver, self.name)
        opts = self.options
        runtime.update(
            device=opts["device"],
            precision=opts["precision"] or "auto",
            batch_size=opts["batch_size"],
            batch_tokens=opts["batch_tokens"],
            actors=self.actors,
        )
        return runtime


def _checked_pieces(embedded: Any, cfg: EmbedConfig) -> Iterator[CheckedRows]:
    """Ray's output batches through the local engine's check_rows (same rejects, same ids),
    the embedding riding along as a kept column."""
    source = InputFile("ray", "ray")
    record = 0
    for batch in embedded.iter_batches(batch_size=cfg.chunk_size, batch_format="pyarrow"):
        n = batch.num_rows
        raw = RawRows(
            source,
            batch.column(cfg.text_column).to_pylist(),
            list(range(record + 1, record + n + 1)),
            ids=batch.column(cfg.id_column).combine_chunks() if cfg.id_column else None,
            keep=_kept(batch, cfg),
        )
        yield check_rows(raw, record, cfg.encoding_errors, cfg.on_error)
        record += n


def _kept(batch: pa.RecordBatch, cfg: EmbedConfig) -> pa.Table:
    """The kept columns under their output names (an id column kept too appears twice), then
    the embedding riding along."""
    columns = {name: batch.column(source) for source, name in cfg.kept}
    columns["embedding"] = batch.column("embedding")
    return pa.table(columns)


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, dim)
