"""The Spark engine against the local engine, on one local Spark (local[2], 3 tries per task)."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
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


def _embed(args: list[str], stdin: str | None = None):
    result = CliRunner().invoke(main, ["embed", *args], input=stdin)
    assert result.exit_code == 0, result.output
    return result


def _table(out: Path) -> tuple[pa.Table, np.ndarray]:
    table = minilm_cli.open_dataset(out).to_table()
    return table, np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def _assert_same_output(spark_out: Path, local_out: Path, same_shards: bool = True) -> None:
    assert verify_output(spark_out).ok
    local, local_vectors = _table(local_out)
    ours, our_vectors = _table(spark_out)
    assert ours.schema == local.schema  # kept columns' exact types
    assert ours.drop_columns(["embedding"]).equals(local.drop_columns(["embedding"]))
    np.testing.assert_allclose(our_vectors, local_vectors, atol=1e-6, rtol=0)
    if same_shards:  # driver mode cuts shards as the local engine does (parts mode: per part)
        shards = [json.loads((o / "manifest.json").read_text())["shards"] for o in (spark_out, local_out)]
        assert [s["rows"] for s in shards[0]] == [s["rows"] for s in shards[1]]


def _csv_with_quoted_newlines(tmp_path: Path) -> Path:
    """glosses.csv with a newline and quotes inside every seventh text (records span lines)."""
    import csv

    with open(SAMPLE / "glosses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        if i % 7 == 0:
            row["text"] = f'{row["text"]}\nsee "{row["word"]}",\nalso'
    path = tmp_path / "quoted.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _input(fmt: str, tmp_path: Path) -> str:
    return str(_csv_with_quoted_newlines(tmp_path) if fmt == "csv" else SAMPLE / f"glosses.{fmt}")


def _mode(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["runtime"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_spark_parts_mode_matches_local_engine(spark, fmt, tiny_model_dir, tmp_path):
    columns = [*COLUMNS[:-1], COLUMNS[-1] + ",text"]  # the texts kept too: newlines and all
    args = [_input(fmt, tmp_path), "--model", tiny_model_dir, *columns, *PLAN]
    _embed([*args, "-o", str(tmp_path / "local")])
    _embed([*args, "-o", str(tmp_path / "spark"), "--engine", "spark", "--spark-parts", "3"])
    _assert_same_output(tmp_path / "spark", tmp_path / "local", same_shards=False)
    runtime = _mode(tmp_path / "spark")
    assert runtime["engine"] == "spark" and runtime["spark"]["mode"] == "parts"
    assert runtime["spark"]["parts"] == 3
    assert len(list((tmp_path / "spark").glob("manifest-*-of-00003.json"))) == 3
    if fmt == "csv":  # CSV values are the text written, under Spark too; the newlines kept
        table = minilm_cli.open_dataset(tmp_path / "spark").to_table()
        assert table.schema.field("id").type == pa.string()
        assert sum("\n" in t for t in table.column("text").to_pylist()) == 43


@pytest.mark.parametrize("layer", [[], ["--layer", "1"]])
def test_spark_driver_mode_reads_stdin_and_matches_local_engine(spark, layer, tiny_model_dir, tmp_path):
    args = ["-", "--input-format", "jsonl", "--model", tiny_model_dir, *COLUMNS, *PLAN, *layer]
    stdin = (SAMPLE / "glosses.jsonl").read_text()
    _embed([str(SAMPLE / "glosses.jsonl"), *args[3:], "-o", str(tmp_path / "local")])
    _embed([*args, "-o", str(tmp_path / "spark"), "--engine", "spark"], stdin)
    _assert_same_output(tmp_path / "spark", tmp_path / "local")
    assert _mode(tmp_path / "spark")["spark"]["mode"] == "driver"


def _rejects(out: Path) -> list[dict]:
    lines = [line for f in sorted((out / "rejects").glob("*.jsonl")) for line in f.read_text().splitlines()]
    return sorted((json.loads(line) for line in lines), key=lambda r: r["line"])


@pytest.mark.parametrize("mode", ["parts", "driver"])
def test_spark_engine_sets_bad_rows_aside_like_the_local_engine(spark, mode, tiny_model_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a cat"}\n{"text": ""}\nnot json\n{"text": "dogs"}\n{"text": null}\n')
    args = ["--model", tiny_model_dir, "--on-error", "skip", "--input-format", "jsonl", *PLAN]
    _embed([str(source), *args, "-o", str(tmp_path / "local")])
    read = ["-"] if mode == "driver" else [str(source)]
    _embed([*read, *args, "-o", str(tmp_path / "spark"), "--engine", "spark"], source.read_text())
    assert _mode(tmp_path / "spark")["spark"]["mode"] == mode
    local = _rejects(tmp_path / "local")
    assert [r["line"] for r in local] == [2, 3, 5]
    ours = _rejects(tmp_path / "spark")
    if mode == "driver":  # stdin is named "-" there
        local = [{**r, "source": "-"} for r in local]
    assert ours == local
    _assert_same_output(tmp_path / "spark", tmp_path / "local", same_shards=mode == "driver")


@pytest.mark.parametrize("mode", ["parts", "driver"])
def test_a_task_that_fails_once_leaves_no_duplicate_rows(spark, mode, tiny_model_dir, tmp_path, monkeypatch):
    failed = tmp_path / "failed"
    failed.mkdir()
    args = ["--model", tiny_model_dir, "--input-format", "jsonl", *COLUMNS, *PLAN]
    _embed([str(SAMPLE / "glosses.jsonl"), *args, "-o", str(tmp_path / "local")])
    monkeypatch.setenv("MINILM_SPARK_FAIL_FIRST_ATTEMPT", str(failed))
    read = ["-"] if mode == "driver" else [str(SAMPLE / "glosses.jsonl"), "--spark-parts", "2"]
    _embed(
        [*read, *args, "-o", str(tmp_path / "spark"), "--engine", "spark"],
        (SAMPLE / "glosses.jsonl").read_text(),
    )
    assert len(list(failed.iterdir())) == 1  # the hook failed a task once, and Spark retried it
    ids = minilm_cli.open_dataset(tmp_path / "spark").to_table().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 300
    _assert_same_output(tmp_path / "spark", tmp_path / "local", same_shards=mode == "driver")


def test_resume_in_driver_mode_skips_committed_shards(spark, tiny_model_dir, tmp_path):
    """A single run's OUTPUT (here the local engine's, stopped after two shards) is continued
    in driver mode, as it was written: the committed shards are not embedded again."""
    args = [str(SAMPLE / "glosses.jsonl"), "--model", tiny_model_dir, *COLUMNS, *PLAN]
    out = tmp_path / "spark"
    real_write = ShardWriter.write

    def write(self, chunk, embeddings):  # the run stops once shard 2 is committed
        record = real_write(self, chunk, embeddings)
        if record is not None and record.index >= 2:
            raise Interrupted(signal.SIGTERM)
        return record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardWriter, "write", write)
        result = CliRunner().invoke(main, ["embed", *args, "-o", str(out)])
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
    assert _mode(out)["spark"]["mode"] == "driver"
    _embed([*args, "-o", str(tmp_path / "local")])
    _assert_same_output(out, tmp_path / "local")


def _stamps(out: Path, prefix: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.rglob(f"{prefix}*")}


def test_resume_in_parts_mode_skips_a_finished_part(spark, tiny_model_dir, tmp_path):
    """Part 0 of 3 finished (here by a job-array task); --resume runs the others only, and
    takes OUTPUT's own 3 parts without --spark-parts."""
    args = [_input("csv", tmp_path), "--model", tiny_model_dir, *COLUMNS, *PLAN]
    out = tmp_path / "spark"
    _embed([*args, "-o", str(out), "--num-shards", "3", "--shard-index", "0"])
    before = {**_stamps(out, "part-00000-"), **_stamps(out, "manifest-00000-")}
    assert before and not _stamps(out, "part-00001-")
    refused = CliRunner().invoke(
        main, ["embed", *args, "-o", str(out), "--engine", "spark", "--spark-parts", "4"]
    )
    assert refused.exit_code == 2 and "holds a run of 3 parts" in refused.stderr
    _embed([*args, "-o", str(out), "--engine", "spark", "--resume"])
    assert {**_stamps(out, "part-00000-"), **_stamps(out, "manifest-00000-")} == before
    part = json.loads((out / "manifest-00001-of-00003.json").read_text())  # part 0 is the local task's
    assert part["runtime"]["spark"] == {**part["runtime"]["spark"], "mode": "parts", "parts": 3}
    _embed([*args, "-o", str(tmp_path / "local")])
    _assert_same_output(out, tmp_path / "local", same_shards=False)
    every = _stamps(out, "part-")
    loud = [a for a in args if a != "--quiet"]
    again = _embed([*loud, "-o", str(out), "--engine", "spark", "--resume"])  # all parts complete
    assert _stamps(out, "part-") == every
    assert again.stderr.strip().splitlines()[-1].startswith("added 0 rows; ")
    assert "holds 300 rows in" in again.stderr and again.stdout == ""


def test_a_part_whose_lock_is_held_waits_for_it(spark, tiny_model_dir, tmp_path):
    """A speculative second attempt finds its part locked: it waits for the lock, then
    continues (or finds complete) that part, and the job does not fail."""
    import threading

    from minilm_cli.output.layout import Layout
    from minilm_cli.storage import storage_for

    out = tmp_path / "spark"
    out.mkdir()
    layout = Layout(str(out), 1, 2)
    lock = storage_for(str(out)).lock(layout.lock_path, owns=layout.owns)
    released = []

    def release_once_part_0_is_complete() -> None:  # so part 1's task surely found it locked
        first = out / "manifest-00000-of-00002.json"
        for _ in range(600):
            if first.exists() and json.loads(first.read_text()).get("status") == "complete":
                break
            time.sleep(0.1)
        released.append(time.time_ns())
        lock.release(remove=True)

    holder = threading.Thread(target=release_once_part_0_is_complete)
    holder.start()
    args = [str(SAMPLE / "glosses.jsonl"), "--model", tiny_model_dir, *COLUMNS, *PLAN]
    _embed([*args, "-o", str(out), "--engine", "spark", "--spark-parts", "2"])
    holder.join()
    assert min(_stamps(out, "part-00001-").values()) >= released[0]  # written after the wait
    _embed([*args, "-o", str(tmp_path / "local")])
    _assert_same_output(out, tmp_path / "local", same_shards=False)


def test_int8_parts_share_one_calibration(spark, tiny_model_dir, tmp_path):
    args = [str(SAMPLE / "glosses.jsonl"), "--model", tiny_model_dir, *COLUMNS, *PLAN, "--dtype", "int8"]
    out = tmp_path / "spark"
    _embed([*args, "-o", str(out), "--engine", "spark", "--spark-parts", "3"])
    assert verify_output(out).ok
    ranges = [json.loads(p.read_text())["settings"]["ranges"] for p in sorted(out.glob("manifest-*.json"))]
    assert len(ranges) == 3 and ranges[1] == ranges[0] == ranges[2]
    _embed([*args, "-o", str(tmp_path / "local")])
    _, local = _table(tmp_path / "local")
    _, ours = _table(out)
    assert np.abs(ours.astype(np.int16) - local.astype(np.int16)).max() <= 1


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
