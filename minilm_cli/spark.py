"""The Spark engine: with file inputs each Spark task embeds one part (spark_parts.py); for
stdin and ``-o -``, our readers and sink on the driver and the model on Spark's executors.

    minilm embed data/*.parquet -o out/ --engine spark [--spark-master local[*]]

This module holds the session, the worker's cached Embedder (both modes) and the driver mode:
the driver runs the local engine's stage list (read, check, chunk, tokenize) and its sink
(shards, commit markers, rejects, manifest). Only the model runs on Spark: a window of
tokenized chunks becomes a DataFrame of one row per chunk (its token ids), ``mapInArrow``
embeds each on an executor's Python worker (one Embedder per worker process, reused across
tasks), and the driver puts the vectors back in chunk order. So ids, rejects, kept columns,
``--resume``, ``--append``, ``--reuse`` and ``--overflow`` are the local engine's, and a
task that Spark retries only recomputes vectors: nothing is written from an executor.

For your own Spark jobs: ``embed_dataframe(df, text_column="text", ...)`` returns ``df`` with
an ``embedding`` column (``array<float>``, null where the row was rejected) and a
``reject_reason`` column. Spark is an optional extra: ``pip install '.[spark]'`` in a clone.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from .batching import Chunk, FlatIds, row_offsets
from .config import EmbedConfig
from .dataframes import embed_values
from .devices import choose_precision
from .errors import InputError, MinilmError, shown
from .model import BATCH_DEFAULTS
from .pipeline import JobResult, build_embedder, run_job
from .pipeline.engine import embedder_runtime
from .pipeline.threads import Producer

# A test hook: the first task attempt of a run fails once, leaving a file in the (empty)
# folder this names, so Spark's retry runs; later tasks see the file and run normally.
FAIL_ONCE_ENV = "MINILM_SPARK_FAIL_FIRST_ATTEMPT"
# Chunks per Spark job at most: the driver holds two or three windows of tokens and vectors.
MAX_WINDOW = 64
TOKENS_SCHEMA = "seq int, lengths binary, ids binary, sizes binary"
VECTORS_SCHEMA = "seq int, vectors binary"

_EMBEDDERS: dict[tuple, Any] = {}  # one Embedder per Python worker process and settings


def _pyspark() -> Any:
    try:
        import pyspark.sql
    except ImportError:
        raise InputError(
            "--engine spark needs PySpark: pip install 'pyspark>=3.5' (or '.[spark]' in a clone)"
        ) from None
    return pyspark.sql


def _java_missing() -> bool:
    home = os.environ.get("JAVA_HOME")
    return not (home and os.path.exists(os.path.join(home, "bin", "java"))) and not shutil.which("java")


# -- the executor side: one Embedder per Python worker, built on its first task


def worker_embedder(options: dict[str, Any]) -> Any:
    """The worker's Embedder for these settings, built once and reused across tasks (Spark
    keeps a Python worker between tasks with spark.python.worker.reuse, its default)."""
    from pyspark import TaskContext

    from .model import Embedder

    options = dict(options)
    task = TaskContext.get()
    if task is not None:
        gpus = task.resources().get("gpu")
        if gpus is not None and gpus.addresses and options.get("device", "auto") in ("auto", "cuda"):
            options["device"] = f"cuda:{gpus.addresses[0]}"  # the GPU Spark gave this task
        if not options.get("threads") and options.get("device") == "cpu":
            options["threads"] = task.cpus()  # the task's cores (spark.task.cpus), not the machine's
    key = tuple(sorted(options.items()))
    if key not in _EMBEDDERS:
        _EMBEDDERS.clear()  # settings changed: free the old model first
        _EMBEDDERS[key] = Embedder(**options)
    return _EMBEDDERS[key]


def _fail_first_attempt(folder: str) -> None:
    from pyspark import TaskContext

    task = TaskContext.get()
    if task is not None and task.attemptNumber() == 0 and not os.listdir(folder):
        with open(os.path.join(folder, f"stage-{task.stageId()}-partition-{task.partitionId()}"), "w"):
            pass
        raise RuntimeError(f"{FAIL_ONCE_ENV}: this attempt fails on purpose")


def embed_token_rows(options: dict[str, Any], fail_once: str | None = None) -> Any:
    """The mapInArrow function of the engine: (seq, lengths, ids, sizes) rows, each some
    whole batches the driver planned, to (seq, vectors) in the rows' order."""

    def embed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        embedder = worker_embedder(options)
        for batch in batches:
            if fail_once:
                _fail_first_attempt(fail_once)
            seqs, vectors = [], []
            for seq, lengths, ids, sizes in zip(*(batch.column(i).to_pylist() for i in range(4))):
                lengths = np.frombuffer(lengths, dtype=np.int32).astype(np.int64)
                rows = FlatIds(np.frombuffer(ids, dtype=np.int32), row_offsets(lengths))
                ends = np.cumsum(np.frombuffer(sizes, dtype=np.int32))
                plan = [np.arange(start, end) for start, end in zip(np.r_[0, ends[:-1]], ends)]
                chunk = embedder.batch_ids(rows, lengths, 0, plan=plan)  # the local engine's batches
                seqs.append(seq)
                vectors.append(embedder.run(chunk).tobytes())
            yield pa.record_batch(
                [pa.array(seqs, pa.int32()), pa.array(vectors, pa.binary())], ["seq", "vectors"]
            )

    return embed


def embed_text_batches(text_column: str, encoding_errors: str, options: dict[str, Any]) -> Any:
    """The mapInArrow function of embed_dataframe: each Arrow batch plus its vectors."""

    def embed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        embedder = worker_embedder(options)
        for batch in batches:
            values = batch.column(text_column).to_pylist()
            full, good, reasons = embed_values(embedder, values, encoding_errors)
            offsets = pa.array(np.arange(len(reasons) + 1, dtype=np.int32) * embedder.dim)
            embedding = pa.ListArray.from_arrays(offsets, pa.array(full.reshape(-1)), mask=pa.array(~good))
            columns = [*batch.columns, embedding, pa.array(reasons, pa.string())]
            yield pa.record_batch(columns, [*batch.schema.names, "embedding", "reject_reason"])

    return embed


def embed_dataframe(
    df: Any, text_column: str = "text", *, encoding_errors: str = "strict", **embedder_options: Any
) -> Any:
    """``df`` plus ``embedding`` (array<float>, null when rejected) and ``reject_reason``
    (null when fine), every other column and the row order kept.

    ``embedder_options`` are Embedder's: model, device, precision, pooling, normalize,
    max_length, batch_size, batch_tokens, threads. The rows of one Arrow batch
    (spark.sql.execution.arrow.maxRecordsPerBatch) are length-sorted and batched together.
    A task given a GPU (spark.task.resource.gpu.amount) runs on that GPU.
    """
    sql = _pyspark()
    types = sql.types
    if "model" in embedder_options and embedder_options["model"] is not None:
        embedder_options["model"] = str(embedder_options["model"])
    schema = types.StructType(
        [
            *df.schema.fields,
            types.StructField("embedding", types.ArrayType(types.FloatType()), True),
            types.StructField("reject_reason", types.StringType(), True),
        ]
    )
    return df.mapInArrow(embed_text_batches(text_column, encoding_errors, embedder_options), schema)


# -- the driver side


def run_spark_job(cfg: EmbedConfig, master: str | None = None, parts: int | None = None) -> JobResult:
    """`minilm embed --engine spark`: each Spark task one part of the job (spark_parts), or,
    for stdin and ``-o -``, our readers and sink here and only the model on Spark."""
    from .spark_parts import spark_mode

    spark = spark_session(master, cfg.quiet)
    mode = spark_mode(cfg, spark)
    if parts is not None and mode == "driver":
        raise InputError(
            "--spark-parts: this run reads or writes on the driver (stdin, -o -, --num-shards, "
            "Spark Connect, or continuing a single run's OUTPUT); leave the flag out"
        )
    gpus = float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) > 0
    gpus = gpus or cfg.device.startswith("cuda")  # --device cuda: the workers' default GPU
    # The driver only reads and tokenizes, on its CPU; precision is resolved here, once, for
    # the manifest's settings and every worker (a GPU worker's auto is bf16).
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if gpus else choose_precision("auto", _cpu())
    # The driver plans the batches the workers run, so with the workers' device's budgets.
    tokens, rows = BATCH_DEFAULTS["cuda" if gpus else "cpu"]
    planned = {"batch_tokens": cfg.batch_tokens or tokens, "batch_size": cfg.batch_size or rows}
    driver = build_embedder(
        EmbedConfig(**{**cfg.__dict__, "device": "cpu", "precision": precision, **planned})
    )
    if not str(spark.conf.get("spark.master", "local")).startswith("local"):
        # the model runs elsewhere: the driver's cores are free to tokenize (unless the user said)
        if not _user_set_tokenizers_parallelism():
            os.environ["TOKENIZERS_PARALLELISM"] = "true"
    engine = SparkEngine(cfg, spark, driver, gpus)
    if mode == "parts":
        return _run_in_parts(cfg, spark, engine, parts)
    return run_job(cfg, driver, engine=engine)


def _run_in_parts(cfg: EmbedConfig, spark: Any, engine: SparkEngine, parts: int | None) -> JobResult:
    """Flags, inputs and the model's checks here first (bad input is one line, exit 2, before
    any task starts), then every part on the executors."""
    from .pipeline.run import plan_run
    from .pipeline.settings import check_windows
    from .pipeline.stored import check_stored
    from .spark_parts import choose_parts, run_parts

    def log(message: str) -> None:
        if not cfg.quiet:
            print(message, file=sys.stderr)

    plan_run(cfg, log)
    check_windows(cfg, engine.driver)
    check_stored(cfg, engine.driver)
    count = choose_parts(cfg, parts, engine.tasks)
    options = {**engine.options, "compile": cfg.compile}
    return run_parts(cfg, spark, options, count, log)


def _user_set_tokenizers_parallelism() -> bool:
    from .model import embedder

    return embedder._USER_TOKENIZERS_PARALLELISM is not None


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def spark_session(master: str | None, quiet: bool = True) -> Any:
    """The active session (spark-submit, a notebook, a test), a Spark Connect one
    (SPARK_REMOTE), or a new local one on ``master`` (default local[*])."""
    sql = _pyspark()
    active = sql.SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = sql.SparkSession.builder.appName("minilm")
    if not os.environ.get("SPARK_REMOTE") and not os.environ.get("PYSPARK_GATEWAY_PORT"):
        if _java_missing():
            raise InputError(
                "--engine spark needs Java 17+ for a local Spark: install a JDK or set JAVA_HOME"
            )
        master = master or "local[*]"
        builder = builder.master(master).config("spark.ui.enabled", "false")
        if master.startswith("local"):  # a local Spark listens on loopback only
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            builder = builder.config("spark.driver.host", "127.0.0.1")
            builder = builder.config("spark.driver.bindAddress", "127.0.0.1")
        builder = builder.config(
            "spark.ui.showConsoleProgress", str(not quiet and sys.stderr.isatty()).lower()
        )
        builder = builder.config("spark.pyspark.python", os.environ.get("PYSPARK_PYTHON", sys.executable))
    session = builder.getOrCreate()
    if hasattr(session, "sparkContext"):
        try:
            # quiet: a failed job is our one error line, not Spark's log of every attempt
            session.sparkContext.setLogLevel("FATAL" if quiet else "ERROR")
        except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
            pass
    return session


class SparkEngine:
    """The local engine's reader-thread chunks, their model work done by Spark jobs of up to
    a window of chunks each, two jobs in flight, vectors handed on in chunk order."""

    name = "spark"

    def __init__(self, cfg: EmbedConfig, spark: Any, driver: Any, gpus: bool) -> None:
        self.cfg = cfg
        self.spark = spark
        self.driver = driver
        self.gpus = gpus
        device = "auto" if gpus else "cpu"
        self.options = {
            "model": str(driver.source.path),
            "device": device,
            "precision": driver.precision,
            "pooling": driver.pooling,
            "normalize": driver.normalize,
            "max_length": driver.max_length,
            "batch_size": driver.batch_size,  # the driver plans batches, the workers run them
            "batch_tokens": driver.batch_tokens,
            "threads": cfg.threads,
            "layer": cfg.layer,  # --layer K: the workers' network stops there too
        }
        self.tasks = max(1, int(_parallelism(spark)))  # tasks per Spark job: every core or GPU busy
        self.fail_once = os.environ.get(FAIL_ONCE_ENV) or None
        self.group = f"minilm-{os.getpid()}-{id(self)}"

    def embedded_chunks(
        self, stages: Any, first_row: int, first_record: int
    ) -> Iterator[tuple[Chunk, np.ndarray]]:
        reader = Producer(lambda: stages.chunks(first_row, first_record), "minilm-reader")
        pool = ThreadPoolExecutor(2, thread_name_prefix="minilm-spark")
        pending: deque[tuple[list[Chunk], Future]] = deque()
        try:
            for window in _windows(reader, self.tasks):
                pending.append((window, pool.submit(self._embed_in_group, window)))
                if len(pending) > 1:
                    yield from self._finished(pending.popleft(), stages)
            while pending:
                yield from self._finished(pending.popleft(), stages)
        finally:
            reader.close()
            if pending:  # stopped early (a signal, a failure): stop our jobs, not the session's others
                _cancel(self.spark, self.group)
            pool.shutdown(wait=True, cancel_futures=True)

    def _embed_in_group(self, window: list[Chunk]) -> dict[int, np.ndarray]:
        try:
            self.spark.sparkContext.setJobGroup(self.group, "minilm embed", interruptOnCancel=True)
        except Exception:  # noqa: BLE001 - Spark Connect: no job groups
            pass
        return self.embed_window(window)

    def _finished(self, item: tuple[list[Chunk], Future], stages: Any) -> Iterator[tuple[Chunk, np.ndarray]]:
        window, future = item
        t = time.perf_counter()
        vectors = future.result()
        stages.timers["model"] += time.perf_counter() - t  # the wait for Spark, not its work
        yield from zip(window, vectors)

    def embed_window(self, window: list[Chunk]) -> list[np.ndarray]:
        """One Spark job over some chunks, each cut into groups of whole batches (one task
        each): every chunk's vectors, in its rows' order."""
        dim = self.driver.dim
        vectors = [np.empty((c.tokens.model_rows if c.tokens else 0, dim), np.float32) for c in window]
        groups, payload = [], []  # groups[seq]: (chunk index, its rows); payload[seq]: their tokens
        for index, chunk in enumerate(window):
            if chunk.tokens and chunk.tokens.model_rows:
                for batches in _groups(chunk.tokens.batches, self.tasks):
                    groups.append((index, np.concatenate([b.rows for b in batches])))
                    payload.append(_token_row(len(payload), chunk.tokens, batches))
        if not payload:
            return vectors
        frame = _frame(self.spark, payload)
        try:
            out = frame.mapInArrow(embed_token_rows(self.options, self.fail_once), VECTORS_SCHEMA).collect()
        except Exception as exc:  # noqa: BLE001 - Py4J, Spark Connect and Spark errors alike
            raise MinilmError(
                f"a Spark job failed: {task_error(exc)}; committed shards are kept (--resume)"
            ) from exc
        if sorted(row["seq"] for row in out) != list(range(len(payload))):
            raise RuntimeError(f"Spark returned {len(out)} groups of vectors for {len(payload)}")
        for row in out:
            index, rows = groups[row["seq"]]
            vectors[index][rows] = np.frombuffer(row["vectors"], dtype=np.float32).reshape(-1, dim)
        return vectors

    def runtime(self) -> dict[str, Any]:
        """What the workers ran: their device, the driver's precision, the Spark they ran on."""
        from pyspark import __version__ as pyspark_version

        runtime = embedder_runtime(self.driver, self.name)
        runtime.update(
            device="spark gpu" if self.gpus else "spark " + self.options["device"],
            spark={"version": pyspark_version, "mode": "driver", "tasks_per_job": self.tasks},
        )
        return runtime


def task_error(exc: BaseException) -> str:
    """The line that says what went wrong in a failed Spark job: the Python worker's own
    exception when there is one, else the first line of Spark's message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    python = [
        line for line in lines if re.match(r"^[\w.]*(Error|Exception): ", line) and "org.apache" not in line
    ]
    return shown(python[-1] if python else (lines[0] if lines else type(exc).__name__), 200)


def _windows(chunks: Iterator[Chunk], tasks: int) -> Iterator[list[Chunk]]:
    """Chunks grouped into Spark jobs: enough batches for ``tasks`` tasks, at most MAX_WINDOW."""
    window: list[Chunk] = []
    batches = 0
    for chunk in chunks:
        window.append(chunk)
        batches += len(chunk.tokens.batches) if chunk.tokens else 0
        if batches >= tasks or len(window) == MAX_WINDOW:
            yield window
            window, batches = [], 0
    if window:
        yield window


def _groups(batches: list[Any], tasks: int) -> Iterator[list[Any]]:
    """A chunk's batches in up to ``tasks`` runs of whole batches, of about equal padded tokens."""
    sizes = np.array([b.input_ids.shape[0] * b.input_ids.shape[1] for b in batches], dtype=np.float64)
    cut = np.ceil(np.cumsum(sizes) / sizes.sum() * min(tasks, len(batches))).astype(int)
    for group in np.unique(cut):
        yield [b for b, c in zip(batches, cut) if c == group]


def _token_row(seq: int, tokens: Any, batches: list[Any]) -> tuple[int, bytes, bytes, bytes]:
    rows = np.concatenate([b.rows for b in batches])
    lengths = np.asarray(tokens.lengths, dtype=np.int32)[rows]
    ids = np.concatenate([tokens.ids[r] for r in rows]).astype(np.int32)
    sizes = np.array([len(b.rows) for b in batches], dtype=np.int32)
    return seq, lengths.tobytes(), ids.tobytes(), sizes.tobytes()


def _parallelism(spark: Any) -> int:
    try:
        return spark.sparkContext.defaultParallelism
    except Exception:  # noqa: BLE001 - Spark Connect: no SparkContext
        return int(spark.conf.get("spark.default.parallelism", "8"))


def _cancel(spark: Any, group: str) -> None:
    try:
        spark.sparkContext.cancelJobGroup(group)
    except Exception:  # noqa: BLE001 - Spark Connect, or a session already stopped
        pass


def _frame(spark: Any, rows: list[tuple]) -> Any:
    """A DataFrame of one chunk per partition, so each chunk is one task."""
    try:
        rdd = spark.sparkContext.parallelize(rows, len(rows))
    except Exception:  # noqa: BLE001 - Spark Connect: a local relation, spread by a shuffle
        return spark.createDataFrame(rows, TOKENS_SCHEMA).repartition(len(rows))
    return spark.createDataFrame(rdd, TOKENS_SCHEMA)
