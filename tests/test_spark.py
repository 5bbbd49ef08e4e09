"""The Spark engine against the local engine, on one local Spark (local[2], 3 tries per task)."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

import minilm_cli
from minilm_cli.cli import main
from minilm_cli.errors import Interrupted
from minilm_cli.output import verify_output
from minilm_cli.output.writers import ShardWriter
from minilm_cli.spark import SparkEngine

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
COLUMNS = ["--id-column", "synset", "--keep-columns", "word,pos:part_of_speech"]
PLAN = ["--shard-rows", "50", "--chunk-size", "32", "--precision", "fp32", "--quiet"]


def _skip_reason() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install '.[spark]')"
    if not shutil.which("java"):
        return "no java on PATH: the Spark tests need Java 17+"
    return None


if _skip_reason():
    print(f"tests/test_spark.py skipped: {_skip_reason()}", file=sys.stderr)
    pytest.skip(_skip_reason(), allow_module_level=True)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,3]")  # two cores, a failed task retried
        .appName("minilm-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.pyspark.python", sys.executable)
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _embed(args: list[str]):
    result = CliRunner().invoke(main, ["embed", *args])
    assert result.exit_code == 0, result.output
    return result


def _table(out: Path) -> tuple[pa.Table, np.ndarray]:
    table = minilm_cli.open_dataset(out).to_table()
    return table, np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def _assert_same_output(spark_out: Path, local_out: Path) -> None:
    assert verify_output(spark_out).ok
    local, local_vectors = _table(local_out)
    ours, our_vectors = _table(spark_out)
    assert ours.schema == local.schema  # kept columns' exact types
    assert ours.drop_columns(["embedding"]).equals(local.drop_columns(["embedding"]))
    np.testing.assert_allclose(our_vectors, local_vectors, atol=1e-6, rtol=0)
    shards = [json.loads((o / "manifest.json").read_text())["shards"] for o in (spark_out, local_out)]
    assert [s["rows"] for s in shards[0]] == [s["rows"] for s in shards[1]]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_spark_engine_matches_local_engine(spark, fmt, tiny_model_dir, tmp_path):
    args = [str(SAMPLE / f"glosses.{fmt}"), "--model", tiny_model_dir, *COLUMNS, *PLAN]
    _embed([*args, "-o", str(tmp_path / "local")])
    _embed([*args, "-o", str(tmp_path / "spark"), "--engine", "spark"])
    _assert_same_output(tmp_path / "spark", tmp_path / "local")
    doc = json.loads((tmp_path / "spark" / "manifest.json").read_text())
    assert doc["runtime"]["engine"] == "spark"
    if fmt == "csv":  # CSV values are the text written, under Spark too
        assert minilm_cli.open_dataset(tmp_path / "spark").schema.field("id").type == pa.string()


def test_spark_engine_sets_bad_rows_aside_like_the_local_engine(spark, tiny_model_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a cat"}\n{"text": ""}\nnot json\n{"text": "dogs"}\n{"text": null}\n')
    args = [str(source), "--model", tiny_model_dir, "--on-error", "skip", *PLAN]
    _embed([*args, "-o", str(tmp_path / "local")])
    _embed([*args, "-o", str(tmp_path / "spark"), "--engine", "spark"])
    rejects = (tmp_path / "spark" / "rejects" / "part-00000.jsonl").read_text()
    assert rejects == (tmp_path / "local" / "rejects" / "part-00000.jsonl").read_text()
    assert [json.loads(line)["line"] for line in rejects.splitlines()] == [2, 3, 5]
    _assert_same_output(tmp_path / "spark", tmp_path / "local")


def test_a_task_that_fails_once_leaves_no_duplicate_rows(spark, tiny_model_dir, tmp_path, monkeypatch):
    failed = tmp_path / "failed"
    failed.mkdir()
    monkeypatch.setenv("MINILM_SPARK_FAIL_FIRST_ATTEMPT", str(failed))
    args = [str(SAMPLE / "glosses.parquet"), "--model", tiny_model_dir, *COLUMNS, *PLAN]
    _embed([*args, "-o", str(tmp_path / "spark"), "--engine", "spark"])
    assert len(list(failed.iterdir())) == 1  # the hook failed a task once, and Spark retried it
    monkeypatch.delenv("MINILM_SPARK_FAIL_FIRST_ATTEMPT")
    _embed([*args, "-o", str(tmp_path / "local")])
    ids = minilm_cli.open_dataset(tmp_path / "spark").to_table().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 300
    _assert_same_output(tmp_path / "spark", tmp_path / "local")


def test_resume_after_a_killed_driver_skips_committed_shards(spark, tiny_model_dir, tmp_path):
    args = [str(SAMPLE / "glosses.jsonl"), "--model", tiny_model_dir, *COLUMNS, *PLAN]
    out = tmp_path / "spark"
    real_write = ShardWriter.write

    def write(self, chunk, embeddings):  # the driver stops once shard 2 is committed
        record = real_write(self, chunk, embeddings)
        if record is not None and record.index >= 2:
            raise Interrupted(signal.SIGTERM)
        return record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardWriter, "write", write)
        result = CliRunner().invoke(main, ["embed", *args, "-o", str(out), "--engine", "spark"])
    assert result.exit_code == 143, result.output
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 2  # shard 2: on disk, unlisted
    sent = []  # rows the resumed run hands to Spark
    real_window = SparkEngine.embed_window

    def embed_window(self, window):
        sent.extend(len(c.tokens.ids) for c in window if c.tokens)
        return real_window(self, window)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SparkEngine, "embed_window", embed_window)
        _embed([*args, "-o", str(out), "--engine", "spark", "--resume"])
    assert sum(sent) == 300 - 2 * 50  # the listed shards 0 and 1 are not embedded again
    _embed([*args, "-o", str(tmp_path / "local")])
    _assert_same_output(out, tmp_path / "local")


def test_embed_dataframe_keeps_columns_and_order(spark, tiny_model_dir, tiny_embedder):
    from minilm_cli.spark import embed_dataframe

    texts = ["a cat sat on the mat", "", "dogs bark at night", None, "the end of it all", "x " * 40]
    rows = [(i, t, float(i) / 2) for i, t in enumerate(texts)]
    df = (
        spark.createDataFrame(rows, "n long, text string, score double")
        .repartition(3)
        .sortWithinPartitions("n")
    )
    before = [tuple(r) for r in df.collect()]
    out = embed_dataframe(df, model=tiny_model_dir, device="cpu", precision="fp32")
    assert out.columns == ["n", "text", "score", "embedding", "reject_reason"]
    got = out.collect()
    assert [(r["n"], r["text"], r["score"]) for r in got] == before  # same rows, same order
    by_n = {r["n"]: r for r in got}
    assert [by_n[i]["reject_reason"] for i in range(len(texts))] == [
        None,
        "empty text",
        None,
        "null text",
        None,
        None,
    ]
    assert by_n[1]["embedding"] is None and by_n[3]["embedding"] is None
    good = [0, 2, 4, 5]
    vectors = np.array([by_n[i]["embedding"] for i in good], dtype=np.float32)
    np.testing.assert_allclose(vectors, tiny_embedder.embed([texts[i] for i in good]), atol=1e-6, rtol=0)


@pytest.mark.real_model
def test_spark_engine_equals_local_engine_on_the_real_model(spark, real_model_dir, tmp_path):
    args = [str(SAMPLE / "glosses.parquet"), "--model", real_model_dir, *COLUMNS, *PLAN]
    _embed([*args, "-o", str(tmp_path / "local")])
    _embed([*args, "-o", str(tmp_path / "spark"), "--engine", "spark"])
    _assert_same_output(tmp_path / "spark", tmp_path / "local")


def test_missing_java_is_one_line_saying_what_to_install(spark, tiny_model_dir, tmp_path, monkeypatch):
    from pyspark.sql import SparkSession

    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    monkeypatch.setattr("minilm_cli.spark._java_missing", lambda: True)
    args = [str(SAMPLE / "glosses.txt"), "-o", str(tmp_path / "o"), "--engine", "spark"]
    result = CliRunner().invoke(main, ["embed", *args, "--model", tiny_model_dir])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "Java 17" in result.stderr and "Traceback" not in result.output


def test_missing_pyspark_is_one_line_saying_what_to_install(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    args = [str(SAMPLE / "glosses.txt"), "-o", str(tmp_path / "o"), "--engine", "spark"]
    result = CliRunner().invoke(main, ["embed", *args, "--model", tiny_model_dir])
    assert result.exit_code == 2
    assert "pip install 'pyspark>=3.5'" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_failed_spark_job_is_named_by_the_workers_error_line():
    from minilm_cli.spark import task_error

    message = (
        "An error occurred while calling o95.collectToPython.\n"
        ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 3.0 failed"
        " 3 times, most recent failure: Lost task 0.2 (TID 9) (127.0.0.1 executor driver):"
        " org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        '  File "/x/minilm_cli/spark.py", line 97, in _fail_first_attempt\n'
        "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/missing'\n"
        "\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(...)\n"
    )
    assert task_error(RuntimeError(message)) == (
        "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/missing'"
    )
    assert task_error(RuntimeError("Job 3 cancelled\nmore")) == "Job 3 cancelled"
