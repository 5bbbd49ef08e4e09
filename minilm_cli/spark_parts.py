"""The Spark engine's parts mode: each Spark task reads, embeds and writes one part of a job array.

    minilm embed corpus/ -o out/ --engine spark [--spark-parts N]

With file inputs and a directory OUTPUT the driver reads nothing: it plans N parts (the
inputs cut as ``--num-shards N`` cuts them), runs ``parallelize(range(N), N)`` where each
task is ``run_job`` with ``shard_index=i`` on the executor (the worker's cached Embedder,
our readers, our sink: ``part-IIIII-*`` shards and the part's own manifest), then merges the
parts' manifests (``merge-manifests``). A retried task resumes its part (its committed
shards stay; its own lock and commit markers mean no duplicate or half shard); a second,
speculative attempt waits for the part's lock and then finds the part complete.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from typing import Any

from .config import EmbedConfig
from .errors import ExitCode, InputError, MinilmError, OutputConflict, OutputInUse
from .output import manifest_name, merge_manifests
from .output.manifest import find_manifests, manifest_parts, read_doc
from .pipeline import JobResult
from .pipeline.engine import LocalEngine, embedder_runtime
from .storage import redact_url, storage_for, storage_options

PART_NAME = re.compile(r"manifest-\d{5}-of-(\d{5})\.json$")
LOCK_POLL_S = 1.0  # a speculative attempt waits this long between looks at the part's lock
FAIL_AFTER_ROWS = 64  # the FAIL_ONCE test hook fails a part once it has handed on this many rows


def spark_mode(cfg: EmbedConfig, spark: Any) -> str:
    """Mode "parts" where executors can read the inputs themselves (files, a directory OUTPUT,
    not already a job-array part, not a single run's OUTPUT being continued, a SparkContext
    to run plain Python tasks on, so not Spark Connect); else "driver"."""
    if cfg.to_stdout or "-" in cfg.inputs or cfg.num_shards > 1 or not _has_context(spark):
        return "driver"
    if (cfg.resume or cfg.append or cfg.overwrite) and _single_run_output(cfg.output):
        return "driver"  # continue (or replace) a driver-mode or local run as it was written
    return "parts"


def _has_context(spark: Any) -> bool:
    try:
        return spark.sparkContext is not None
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        return False


def _single_run_output(root: str) -> bool:
    storage = storage_for(root)
    merged = os.path.join(root, "manifest.json")
    try:
        if manifest_parts(root, storage) or not storage.exists(merged):
            return False
        return "parts" not in read_doc(merged, storage)
    except (OSError, MinilmError):
        return False


def recorded_parts(root: str) -> int | None:
    """N of the parts OUTPUT already holds (a resumed or appended run keeps its cut)."""
    try:
        names = [os.path.basename(p) for p in manifest_parts(root, storage_for(root))]
    except (OSError, MinilmError):
        return None
    counts = {int(m.group(1)) for m in map(PART_NAME.match, names) if m}
    return max(counts) if counts else None


def choose_parts(cfg: EmbedConfig, asked: int | None, parallelism: int) -> int:
    """--spark-parts, else the N OUTPUT already holds, else two parts per Spark core."""
    held = recorded_parts(cfg.output)
    if cfg.overwrite and held is not None:  # a part's --overwrite sees the other parts' files as not its own
        raise OutputConflict(
            f"--overwrite: {redact_url(cfg.output)} holds a run of {held} parts, which the Spark "
            "engine cannot replace in place; remove it first or choose another OUTPUT"
        )
    if asked is not None and held is not None and asked != held:
        raise InputError(
            f"--spark-parts {asked}: {redact_url(cfg.output)} holds a run of {held} parts; "
            f"continue it with --spark-parts {held} (or leave the flag out)"
        )
    return asked or held or max(2, 2 * parallelism)


def run_parts(cfg: EmbedConfig, spark: Any, options: dict[str, Any], parts: int, log: Any) -> JobResult:
    """Every part as one Spark task, then the parts' manifests merged into OUTPUT/manifest.json."""
    from .spark import FAIL_ONCE_ENV
    from .workers import calibrates

    started = time.perf_counter()
    storage = storage_for(cfg.output)
    merged = os.path.join(cfg.output, "manifest.json")
    if cfg.append and storage.exists(merged):
        storage.remove(merged)  # the parts change: the old merge would be stale (rewritten below)
    fail_once = os.environ.get(FAIL_ONCE_ENV) or None
    context = (cfg, options, parts, fail_once, storage_options())
    results: list[dict[str, Any]] = []
    todo = list(range(parts))
    if calibrates(cfg):  # part 0 calibrates int8 ranges; every other part takes them
        results += _run_tasks(spark, [0], context)
        _raise_first_failure(results, parts)
        ranges = os.path.join(cfg.output, manifest_name(0, parts))
        context = (replace(cfg, ranges=ranges, calibration=None), *context[1:])
        todo = todo[1:]
    results += _run_tasks(spark, todo, context)
    _raise_first_failure(results, parts)
    _, problems = merge_manifests(cfg.output)
    if problems:
        why = "; ".join(problems[:3])
        raise OutputConflict(f"the parts finished but their manifests do not merge: {why}")
    return _summary(cfg, results, time.perf_counter() - started, log)


def _raise_first_failure(results: list[dict[str, Any]], parts: int) -> None:
    failed = [r["failed"] for r in results if "failed" in r]
    if failed:
        code, message = failed[0]
        kept = "; the other parts' shards are kept (--resume)" if len(failed) < parts else ""
        raise MinilmError(f"{len(failed)} of {parts} parts failed; first: {message}{kept}", ExitCode(code))


def _run_tasks(spark: Any, indices: list[int], context: tuple) -> list[dict[str, Any]]:
    from .spark import task_error

    if not indices:
        return []
    sc = spark.sparkContext
    group = f"minilm-parts-{os.getpid()}"
    sc.setJobGroup(group, "minilm embed (parts)", interruptOnCancel=True)
    try:
        return sc.parallelize(indices, len(indices)).map(lambda i: run_part(i, *context)).collect()
    except KeyboardInterrupt:
        sc.cancelJobGroup(group)  # Ctrl-C: stop our tasks (committed shards stay: --resume)
        raise
    except Exception as exc:  # noqa: BLE001 - Py4J and Spark errors alike
        raise MinilmError(
            f"a Spark task failed: {task_error(exc)}; finished parts and committed shards are kept "
            "(rerun with --resume)"
        ) from exc


def run_part(
    index: int,
    cfg: EmbedConfig,
    options: dict[str, Any],
    parts: int,
    fail_once: str | None,
    storage_opts: dict[str, Any] | None,
) -> dict[str, Any]:
    """One Spark task: part ``index`` of ``parts`` with the local pipeline, on this executor."""
    from pyspark import TaskContext

    from .storage import configure_storage

    configure_storage(storage_opts)
    task = TaskContext.get()
    retry = task is not None and task.attemptNumber() > 0
    part = replace(cfg, num_shards=parts, shard_index=index, quiet=True)
    if retry:  # continue what the failed attempt committed; never replace it
        part = replace(part, resume=part.resume or not part.append, overwrite=False)
    try:
        return _run_part(part, options, fail_once)
    except MinilmError as exc:  # bad input, an OUTPUT conflict: a retry would not help, and its
        # message (after a first attempt's changes) could hide this one: the driver reports it
        return {"failed": [int(exc.exit_code), f"part {index}: {exc}"]}


def _run_part(part: EmbedConfig, options: dict[str, Any], fail_once: str | None) -> dict[str, Any]:
    from .pipeline import run_job
    from .spark import worker_embedder

    parts = part.num_shards
    embedder = worker_embedder(options)
    on_rows = _failing_hook(fail_once) if fail_once else None
    while True:
        try:
            engine = PartEngine(embedder, parts)
            result = run_job(part, embedder, log=lambda message: None, on_rows=on_rows, engine=engine)
            return result.totals()
        except OutputInUse:
            # another attempt of this part (speculation) holds its lock: once it lets go, the
            # part is complete (nothing to do) or cut short (continued from its last shard)
            time.sleep(LOCK_POLL_S)
            part = replace(part, resume=part.resume or not part.append, overwrite=False)


def _failing_hook(folder: str) -> Any:
    from .spark import _fail_first_attempt

    seen = [0]

    def on_rows(rows: int) -> None:
        seen[0] += rows
        if seen[0] >= FAIL_AFTER_ROWS:
            _fail_first_attempt(folder)

    return on_rows


class PartEngine(LocalEngine):
    """The local engine on an executor, named in the manifest as the Spark parts mode."""

    name = "spark"

    def __init__(self, embedder: Any, parts: int) -> None:
        super().__init__(embedder)
        self.parts = parts

    def runtime(self) -> dict[str, Any]:
        from pyspark import __version__ as pyspark_version

        runtime = embedder_runtime(self.embedder, self.name)
        runtime["spark"] = {"version": pyspark_version, "mode": "parts", "parts": self.parts}
        return runtime


def _summary(cfg: EmbedConfig, results: list[dict[str, Any]], seconds: float, log: Any) -> JobResult:
    """The usual summary line, over the merged manifest's shards and the parts' own counts."""
    from .output import Manifest
    from .output.generations import current

    total = JobResult(output=cfg.output, overflow=cfg.overflow, seconds=seconds)
    total.add_shards(current(Manifest.load(find_manifests(cfg.output)[0]).shards))
    for key in ("resumed_rows", "windows", "documents"):
        setattr(total, key, sum(r.get(key, 0) for r in results))
    log(total.holdings() if total.rows == total.resumed_rows else total.summary())
    return total
