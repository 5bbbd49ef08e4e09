"""Hostile inputs and hostile outputs (issue 15, and the hostile rows of issue 8).

Every case builds its inputs in tmp_path and checks the four invariants:

(a) the documented exit code (0 done, 1 runtime, 2 bad input or flags, 3 OUTPUT conflict,
    4 verify failed, 130/143 interrupted);
(b) a failure prints exactly one ``minilm: error: ...`` line on stderr, never a traceback;
(c) rows in = rows out + rejects, read back from the Parquet shards and rejects/*.jsonl;
(d) a good OUTPUT, and unrelated files beside it (a Spark ``part-00000-3f2a9c.snappy.parquet``,
    ``./part-list.txt``, an app's ``manifest.json``), are byte for byte intact afterwards.

The cases encode what the issues say MUST happen, not what happens today.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from minilm_cli.cli import main
from minilm_cli.testing import write_tiny_bert

REPO = Path(__file__).resolve().parent.parent
LOCK = ".manifest.json.lock"  # the tool's own lock file: rewritten by any run, never content
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


# ---------------------------------------------------------------------------- helpers


def model_args(model: str) -> list[str]:
    return ["--model", model, "--device", "cpu", "--precision", "fp32", "--threads", "1"]


def invoke(args: list, env: dict | None = None, input: str | bytes | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, input=input)


def embed(model: str, *args, env: dict | None = None, input: str | bytes | None = None):
    return invoke(["embed", *args, *model_args(model), "-q"], env=env, input=input)


def assert_one_error(result, code: int, *fragments: str) -> str:
    """(a) + (b): exit ``code``, stderr exactly one 'minilm: error:' line, no traceback; each
    fragment is a regular expression the line must match."""
    assert result.exit_code == code, f"exit {result.exit_code}, stderr: {result.stderr!r}"
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    assert "Traceback" not in result.output and "Exception ignored" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"not one line: {result.stderr!r}"
    assert lines[0].startswith("minilm: error: "), lines[0]
    for fragment in fragments:
        assert re.search(fragment, lines[0]), f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def assert_ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}, stderr: {result.stderr!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Exception ignored" not in result.output


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too, but not our lock) and its sha256."""
    return {
        str(p.relative_to(folder)): sha(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != LOCK
    }


def rows_out(out: Path) -> int:
    """(c) rows actually on disk: every published Parquet data shard, read with pyarrow."""
    files = sorted(out.glob("part-*.parquet")) + sorted((out / "metadata").glob("part-*.parquet"))
    return sum(pq.read_table(p).num_rows for p in files)


def rejects(out: Path) -> list[dict]:
    found: list[dict] = []
    for p in sorted((out / "rejects").glob("*.jsonl")):
        found += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
    return found


def assert_rows(out: Path, rows_in: int, rejected: int) -> None:
    got_rejects = rejects(out)
    assert rows_out(out) + len(got_rejects) == rows_in, (rows_out(out), got_rejects)
    assert len(got_rejects) == rejected, got_rejects


def assert_verifies(out: Path) -> None:
    result = invoke(["verify", out])
    assert result.exit_code == 0, result.output


def lines(n: int, start: int = 0) -> str:
    return "".join(f"{WORDS[i % len(WORDS)]} text number {i}\n" for i in range(start, start + n))


def csv_rows(n: int) -> str:
    return "id,text,body\n" + "".join(f"{i},{WORDS[i % len(WORDS)]} row {i},other {i}\n" for i in range(n))


class Workspace:
    """tmp_path as the current directory, with bystanders that no run may touch (d)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        spark = pa.table({"x": [1, 2, 3]})
        pq.write_table(spark, root / "part-00000-3f2a9c.snappy.parquet", compression="snappy")
        (root / "part-list.txt").write_text("a list an operator keeps here\n")
        (root / "manifest.json").write_text(json.dumps({"app": "someone else's", "version": 3}))
        self.before = self._state()

    def _state(self) -> dict[str, str]:
        names = ("part-00000-3f2a9c.snappy.parquet", "part-list.txt", "manifest.json")
        return {n: sha(self.root / n) if (self.root / n).exists() else "missing" for n in names}

    def assert_intact(self) -> None:
        assert self._state() == self.before


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.chdir(tmp_path)
    for name in ("MINILM_DEBUG", "RANK", "WORLD_SIZE", "JOB_COMPLETION_INDEX", "MINILM_NUM_SHARDS"):
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name, raising=False)
    return Workspace(tmp_path)


@pytest.fixture(scope="module")
def good_output(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str) -> tuple[Path, Path]:
    """(input, OUTPUT): a finished run of 20 rows in 4 shards, copied by the tests that use it."""
    root = tmp_path_factory.mktemp("good")
    src = root / "corpus.txt"
    src.write_text(lines(20))
    out = root / "out"
    result = embed(tiny_model_dir, src, "-o", out, *GOOD_FLAGS)
    assert_ok(result)
    assert rows_out(out) == 20
    return src, out


GOOD_FLAGS = ["--shard-rows", 5]  # how good_output was made: a --resume of it repeats them


def copy_output(good_output: tuple[Path, Path], where: Path) -> tuple[Path, Path, dict[str, str]]:
    src, out = good_output
    dest = where / "good_out"
    shutil.copytree(out, dest)
    return src, dest, snapshot(dest)


# ---------------------------------------------------------------------------- 1: mixed settings


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-other"), seed=1))


@pytest.mark.parametrize(
    "setting, value, named",
    [
        ("--pooling", "cls", "pooling"),
        ("--text-column", "body", "text[-_ ]column"),
        ("--model", None, "model"),
    ],
)
def test_01_parts_with_different_settings_are_not_merged(
    setting, value, named, ws, tiny_model_dir, other_model_dir
):
    src = ws.root / "in.csv"
    src.write_text(csv_rows(20))
    out = ws.root / "out"
    first = embed(tiny_model_dir, src, "-o", out, "--num-shards", 2, "--shard-index", 0)
    assert_ok(first)
    second_args = [src, "-o", out, "--num-shards", 2, "--shard-index", 1]
    if setting == "--model":
        second = embed(other_model_dir, *second_args)
    else:
        second = embed(tiny_model_dir, *second_args, setting, value)
    assert_ok(second)
    assert_rows(out, 20, 0)
    parts_before = snapshot(out)

    merged = invoke(["merge-manifests", out])
    assert merged.exit_code == 4, merged.output
    assert "Traceback" not in merged.output
    assert re.search(named, merged.stderr), merged.stderr
    assert not (out / "manifest.json").exists()  # no manifest over a mix
    assert snapshot(out) == parts_before

    verified = invoke(["verify", out])
    assert verified.exit_code == 4, verified.output
    assert re.search(named, verified.output), verified.output
    ws.assert_intact()


# ---------------------------------------------------------------------------- 2: foreign files, -o ""


def test_02_overwrite_refuses_a_folder_of_foreign_files(ws, tiny_model_dir):
    src = ws.root / "in.txt"
    src.write_text(lines(5))
    # the folder *is* the workspace: a Spark part file and an app's manifest.json
    before = snapshot(ws.root)
    result = embed(tiny_model_dir, src, "-o", ws.root, "--overwrite")
    assert_one_error(result, 3, re.escape(str(ws.root)))
    assert snapshot(ws.root) == before
    ws.assert_intact()


def test_02_overwrite_refuses_a_good_output_holding_a_spark_file(ws, tiny_model_dir, good_output):
    src, out, _ = copy_output(good_output, ws.root)
    shutil.copy(ws.root / "part-00000-3f2a9c.snappy.parquet", out / "part-00000-3f2a9c.snappy.parquet")
    before = snapshot(out)
    result = embed(tiny_model_dir, src, "-o", out, "--overwrite")
    assert_one_error(result, 3, re.escape(str(out)))
    assert snapshot(out) == before
    ws.assert_intact()


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume"]])
def test_02_empty_output_is_a_usage_error(extra, ws, tiny_model_dir):
    src = ws.root / "in.txt"
    src.write_text(lines(5))
    before = snapshot(ws.root)
    result = embed(tiny_model_dir, src, "-o", "", *extra)
    assert_one_error(result, 2)
    assert snapshot(ws.root) == before  # nothing written into, or removed from, the cwd
    ws.assert_intact()


@pytest.mark.parametrize("command", ["verify", "merge-manifests"])
def test_02_empty_output_of_verify_and_merge_is_a_usage_error(command, ws):
    # the cwd holds an app's manifest.json: an unset variable must not make it the OUTPUT
    before = snapshot(ws.root)
    result = invoke([command, ""])
    assert_one_error(result, 2)
    assert snapshot(ws.root) == before
    ws.assert_intact()


# ---------------------------------------------------------------------------- 3: parts into a finished run


def test_03_sharded_parts_into_a_finished_single_run_are_refused(ws, tiny_model_dir, good_output):
    src, out, before = copy_output(good_output, ws.root)
    for index in (0, 1):
        result = embed(tiny_model_dir, src, "-o", out, *GOOD_FLAGS, "--num-shards", 2, "--shard-index", index)
        assert_one_error(result, 3, re.escape(str(out)))
    assert snapshot(out) == before
    assert_rows(out, 20, 0)
    assert_verifies(out)
    ws.assert_intact()


# ---------------------------------------------------------------------------- 4: resume over damage


@pytest.mark.parametrize("damage", ["deleted", "truncated", "emptied"])
def test_04_resume_never_reports_complete_over_a_damaged_shard(damage, ws, tiny_model_dir, good_output):
    src, out, _ = copy_output(good_output, ws.root)
    shard = out / "part-00001.parquet"
    if damage == "deleted":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        shard.write_bytes(b"")
    result = embed(tiny_model_dir, src, "-o", out, *GOOD_FLAGS, "--resume")
    if result.exit_code == 0:  # redone: the output verifies, and every row is back
        assert_ok(result)
        assert_verifies(out)
        assert_rows(out, 20, 0)
    else:  # refused: one clear line, an OUTPUT conflict (or, as verify calls it, damage)
        code = result.exit_code if result.exit_code in (3, 4) else 3
        assert_one_error(result, code, re.escape(str(out)))
    ws.assert_intact()


# ---------------------------------------------------------------------------- 5: OUTPUT inside an input dir


def test_05_output_inside_the_input_directory_is_not_read_back(ws, tiny_model_dir):
    data = ws.root / "data"
    data.mkdir()
    (data / "a.txt").write_text(lines(6))
    (data / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines(4).splitlines()))
    out = data / "out"
    assert_ok(embed(tiny_model_dir, data, "-o", out))
    assert_rows(out, 10, 0)
    again = embed(tiny_model_dir, data, "-o", out, "--overwrite")
    assert_ok(again)
    assert_rows(out, 10, 0)
    resumed = embed(tiny_model_dir, data, "-o", out, "--resume")
    assert_ok(resumed)
    assert_rows(out, 10, 0)
    assert_verifies(out)
    ws.assert_intact()


def test_05_a_minilm_output_inside_an_input_directory_is_skipped(ws, tiny_model_dir):
    data = ws.root / "data"
    data.mkdir()
    (data / "a.txt").write_text(lines(6))
    assert_ok(embed(tiny_model_dir, data / "a.txt", "-o", data / "earlier", "--format", "npy"))
    out = ws.root / "out"
    result = embed(tiny_model_dir, data, "-o", out)
    assert_ok(result)
    assert_rows(out, 6, 0)  # not the earlier run's metadata/*.parquet or rejects
    ws.assert_intact()


# ---------------------------------------------------------------------------- 6: brackets in names


def test_06_an_existing_path_is_taken_literally_before_globbing(ws, tiny_model_dir):
    (ws.root / "data[1].txt").write_text(lines(3))
    (ws.root / "data1.txt").write_text(lines(5))
    out = ws.root / "out"
    assert_ok(embed(tiny_model_dir, ws.root / "data[1].txt", "-o", out))
    assert_rows(out, 3, 0)
    doc = json.loads((out / "manifest.json").read_text())
    assert [Path(i["path"]).name for i in doc["inputs"]] == ["data[1].txt"]
    ws.assert_intact()


# ---------------------------------------------------------------------------- 7: CR-only line ends


@pytest.mark.parametrize(
    "name, content, rows",
    [
        ("cr.txt", b"one\rtwo\rthree", 3),
        ("cr2.txt", b"one\rtwo\r\nthree\nfour\r", 4),
        ("cr.jsonl", b'{"text": "one"}\r{"text": "two"}\r{"text": "three"}\r', 3),
    ],
)
def test_07_cr_only_line_endings_are_lines(name, content, rows, ws, tiny_model_dir):
    src = ws.root / name
    src.write_bytes(content)
    out = ws.root / "out"
    result = embed(tiny_model_dir, src, "-o", out, "--on-error", "skip")
    assert_ok(result)
    assert_rows(out, rows, 0)
    ws.assert_intact()


# ---------------------------------------------------------------------------- 8: bad UTF-8 + ragged CSV


@pytest.mark.parametrize(
    "content",
    [
        b"id,text\n1,alpha\n2,bad \xff bytes,extra\n3,gamma\n",
        b"id,text\n1,alpha\n2\xff\n3,gamma\n",
        b"id\ttext\n1\talpha\n2\tbad \xfe\textra\n3\tgamma\n",
    ],
)
def test_08_ragged_row_with_invalid_utf8_is_a_reject(content, ws, tiny_model_dir):
    src = ws.root / ("in.tsv" if b"\t" in content else "in.csv")
    src.write_bytes(content)
    out = ws.root / "out"
    result = embed(tiny_model_dir, src, "-o", out, "--on-error", "skip")
    assert_ok(result)
    assert_rows(out, 3, 1)
    assert [r.get("row") for r in rejects(out)] == [2]
    ws.assert_intact()


# ---------------------------------------------------------------------------- 9: values Python chokes on

DEEP = "[" * 10_000 + "]" * 10_000
BIG = str(2**63)
SURROGATE = "\\ud800"  # a JSON escape for a lone surrogate: valid JSON, not valid UTF-8 text
# case: (flags, the bad line 2, the field the good lines 1 and 3 carry beside their text)
JSON_CASES = {
    "surrogate-text": ([], f'{{"text": "a {SURROGATE} b"}}', {}),
    "surrogate-id": (["--id-column", "doc"], f'{{"doc": "{SURROGATE}", "text": "fine"}}', {"doc": "d"}),
    "surrogate-kept": (["--keep-columns", "k"], f'{{"k": "x{SURROGATE}", "text": "fine"}}', {"k": "v"}),
    "deep-json": ([], f'{{"text": "fine", "k": {DEEP}}}', {}),
    "deep-json-kept": (["--keep-columns", "k"], f'{{"text": "fine", "k": {DEEP}}}', {"k": [1]}),
    "huge-int-id": (["--id-column", "doc"], f'{{"doc": {BIG}, "text": "fine"}}', {"doc": 1}),
    "huge-int-kept": (["--keep-columns", "k"], f'{{"k": {BIG}, "text": "fine"}}', {"k": 7}),
    "huge-negative-kept": (["--keep-columns", "k"], f'{{"k": -{BIG}0, "text": "fine"}}', {"k": 7}),
}


def json_input(ws: Workspace, case: str) -> tuple[Path, list]:
    flags, bad, extra = JSON_CASES[case]
    first = {**extra, "text": "first"}
    third = {k: (v + 2 if isinstance(v, int) else f"{v}3") for k, v in extra.items() if k != "k"}
    third = {**extra, **third, "text": "third"}
    src = ws.root / "in.jsonl"
    src.write_text("\n".join([json.dumps(first), bad, json.dumps(third)]) + "\n", encoding="utf-8")
    return src, flags


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_09_hostile_value_is_a_reject_under_skip(case, ws, tiny_model_dir):
    src, flags = json_input(ws, case)
    out = ws.root / "out"
    result = embed(tiny_model_dir, src, "-o", out, "--on-error", "skip", *flags)
    assert_ok(result)
    assert_rows(out, 3, 1)
    assert [r.get("line") for r in rejects(out)] == [2]
    assert_verifies(out)
    ws.assert_intact()


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_09_hostile_value_names_file_and_line_under_fail(case, ws, tiny_model_dir):
    src, flags = json_input(ws, case)
    out = ws.root / "out"
    result = embed(tiny_model_dir, src, "-o", out, *flags)
    assert_one_error(result, 2, re.escape(f"{src}, line 2"))
    if out.exists():
        assert rows_out(out) == 0
    ws.assert_intact()


# ---------------------------------------------------------------------------- 10, 11: Parquet text


def bad_utf8_parquet(path: Path) -> Path:
    raw = pa.array([b"ok one", b"bad \xff here", b"fine three"], pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # unchecked: invalid UTF-8
    pq.write_table(pa.table({"text": text}), path)
    return path


def test_10_parquet_invalid_utf8_is_a_row_reject_under_skip(ws, tiny_model_dir):
    src = bad_utf8_parquet(ws.root / "in.parquet")
    out = ws.root / "out"
    result = embed(tiny_model_dir, src, "-o", out, "--on-error", "skip")
    assert_ok(result)
    assert_rows(out, 3, 1)
    assert [r.get("row") for r in rejects(out)] == [2]
    ws.assert_intact()


def test_10_parquet_invalid_utf8_is_replaced_under_replace(ws, tiny_model_dir):
    src = bad_utf8_parquet(ws.root / "in.parquet")
    out = ws.root / "out"
    result = embed(tiny_model_dir, src, "-o", out, "--encoding-errors", "replace", "--keep-columns", "text")
    assert_ok(result)
    assert_rows(out, 3, 0)
    kept = pq.read_table(out / "part-00000.parquet").column("text").to_pylist()
    assert kept == ["ok one", "bad \ufffd here", "fine three"]
    ws.assert_intact()


def test_10_parquet_invalid_utf8_names_the_row_under_fail(ws, tiny_model_dir):
    src = bad_utf8_parquet(ws.root / "in.parquet")
    result = embed(tiny_model_dir, src, "-o", ws.root / "out")
    assert_one_error(result, 2, re.escape(f"{src}, row 2"))
    ws.assert_intact()


def test_11_parquet_null_typed_text_column_is_all_rejects(ws, tiny_model_dir):
    src = ws.root / "in.parquet"
    pq.write_table(pa.table({"text": pa.nulls(4, pa.null())}), src)
    out = ws.root / "out"
    result = embed(tiny_model_dir, src, "-o", out, "--on-error", "skip")
    assert_ok(result)
    assert_rows(out, 4, 4)
    assert {r["reason"] for r in rejects(out)} == {"null text"}
    ws.assert_intact()


# ---------------------------------------------------------------------------- 12, 13: damaged manifest


@pytest.mark.parametrize("damage", ["manifest-deleted", "folder-emptied"])
def test_12_verify_of_a_damaged_output_exits_4(damage, ws, good_output):
    _, out, _ = copy_output(good_output, ws.root)
    if damage == "manifest-deleted":
        (out / "manifest.json").unlink()
    else:
        shutil.rmtree(out)
        out.mkdir()
    result = invoke(["verify", out])
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    ws.assert_intact()


@pytest.mark.parametrize("content", ["[]", "null", '"x"', "5", '{"shards": 5}'])
def test_13_resume_over_a_malformed_manifest_exits_3(content, ws, tiny_model_dir, good_output):
    src, out, _ = copy_output(good_output, ws.root)
    (out / "manifest.json").write_text(content)
    before = snapshot(out)
    result = embed(tiny_model_dir, src, "-o", out, *GOOD_FLAGS, "--resume")
    assert_one_error(result, 3, "manifest", "malformed")
    assert snapshot(out) == before
    ws.assert_intact()


# ---------------------------------------------------------------------------- 14: newlines in names


def test_14_newline_in_a_missing_input_path(ws, tiny_model_dir):
    result = embed(tiny_model_dir, ws.root / "no\nsuch.txt", "-o", ws.root / "out")
    assert_one_error(result, 2, "such")
    ws.assert_intact()


def test_14_newline_in_an_input_path_with_a_bad_row(ws, tiny_model_dir):
    src = ws.root / "bad\nname.txt"
    src.write_text("alpha\n\u00a0\ngamma\n", encoding="utf-8")
    result = embed(tiny_model_dir, src, "-o", ws.root / "out")
    assert_one_error(result, 2, "line 2", "empty text")
    ws.assert_intact()


def test_14_newline_in_the_text_column_flag(ws, tiny_model_dir):
    src = ws.root / "in.csv"
    src.write_text(csv_rows(3))
    result = embed(tiny_model_dir, src, "-o", ws.root / "out", "--text-column", "te\nxt")
    assert_one_error(result, 2, "te", "xt")
    ws.assert_intact()


def test_14_newline_in_a_csv_header(ws, tiny_model_dir):
    src = ws.root / "in.csv"
    src.write_text('id,"te\nxt"\n1,alpha\n')
    result = embed(tiny_model_dir, src, "-o", ws.root / "out")
    assert_one_error(result, 2, "'text'", "te", "xt")
    ws.assert_intact()


# ---------------------------------------------------------------------------- 15: links, env, big numbers


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_15_bad_symlink_in_an_input_directory(link, ws, tiny_model_dir):
    data = ws.root / "data"
    data.mkdir()
    (data / "a.txt").write_text(lines(3))
    bad = data / "b.txt"
    if link == "dangling":
        bad.symlink_to(data / "gone.txt")
    else:
        bad.symlink_to(bad)
    result = embed(tiny_model_dir, data, "-o", ws.root / "out")
    assert_one_error(result, 2, "b.txt")
    assert "--resume" not in result.stderr  # nothing ran: there is nothing to resume
    ws.assert_intact()


@pytest.mark.parametrize(
    "env, named",
    [
        ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE"),
        ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY_TASK_ID"),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "n"}, "SLURM_ARRAY_TASK_COUNT"),
        (
            {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "?"},
            "SLURM_ARRAY_TASK_MIN",
        ),
        ({"JOB_COMPLETION_INDEX": "1.5"}, "JOB_COMPLETION_INDEX"),
    ],
)
def test_15_malformed_scheduler_variable(env, named, ws, tiny_model_dir):
    src = ws.root / "in.txt"
    src.write_text(lines(4))
    result = embed(tiny_model_dir, src, "-o", ws.root / "out", env=env)
    assert_one_error(result, 2, named)
    assert not (ws.root / "out").exists()
    ws.assert_intact()


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--chunk-size", "1e20"),
        ("--chunk-size", str(10**20)),
        ("--threads", "1e20"),
        ("--threads", str(10**20)),
    ],
)
def test_15_absurd_numbers_are_usage_errors(flag, value, ws, tiny_model_dir):
    src = ws.root / "in.parquet"
    pq.write_table(pa.table({"text": lines(4).splitlines()}), src)
    model = ["--model", tiny_model_dir, "--device", "cpu", "--precision", "fp32", "-q"]
    result = invoke(["embed", src, "-o", ws.root / "out", *model, flag, value])  # no other --threads
    line = assert_one_error(result, 2, flag)
    assert "unexpected" not in line
    ws.assert_intact()


def test_15_output_below_a_file_is_an_output_conflict(ws, tiny_model_dir):
    src = ws.root / "in.txt"
    src.write_text(lines(4))
    afile = ws.root / "afile"
    afile.write_text("a file, not a folder")
    result = embed(tiny_model_dir, src, "-o", afile / "out")
    line = assert_one_error(result, 3, "afile")
    assert "--resume" not in line
    assert afile.read_text() == "a file, not a folder"
    ws.assert_intact()


# ---------------------------------------------------------------------------- 16: keep a column twice


@pytest.mark.parametrize("keep", ["k,k", "k, k", "body,k,body"])
def test_16_a_column_kept_twice(keep, ws, tiny_model_dir):
    src = ws.root / "in.jsonl"
    src.write_text(json.dumps({"text": "alpha", "k": 1, "body": "b"}) + "\n")
    result = embed(tiny_model_dir, src, "-o", ws.root / "out", "--keep-columns", keep)
    twice = "body" if keep.startswith("body") else "k"
    assert_one_error(result, 2, f"'?{twice}'? is listed twice")
    ws.assert_intact()


# ---------------------------------------------------------------------------- 17: FIFOs


class FifoWriter:
    """Feeds ``data`` into a FIFO from a thread; ``finish`` never blocks, whatever the reader did."""

    def __init__(self, path: Path, data: bytes) -> None:
        os.mkfifo(path)
        self.path = path
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, args=(data,), daemon=True)
        self.thread.start()

    def _write(self, data: bytes) -> None:
        try:
            with open(self.path, "wb") as fifo:  # blocks until a reader opens the FIFO
                fifo.write(data)
        except BrokenPipeError as exc:
            self.error = exc

    def finish(self) -> None:
        # If the run never opened the FIFO, open it ourselves so the writer's open returns.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            self.thread.join(timeout=30)
        finally:
            os.close(fd)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("name", ["in.csv", "in.tsv", "in.jsonl", "in.txt"])
def test_17_a_fifo_is_streamed(name, ws, tiny_model_dir):
    sep = "\t" if name.endswith(".tsv") else ","
    data = ("id" + sep + "text\n" + "".join(f"{i}{sep}row number {i}\n" for i in range(7))).encode()
    if name.endswith(".jsonl"):
        data = "".join(json.dumps({"text": f"row number {i}"}) + "\n" for i in range(7)).encode()
    elif name.endswith(".txt"):  # txt and JSONL FIFOs are streamed today: the contrast
        data = "".join(f"row number {i}\n" for i in range(7)).encode()
    fifo = FifoWriter(ws.root / name, data)
    out = ws.root / "out"
    try:
        result = embed(tiny_model_dir, ws.root / name, "-o", out)
    finally:
        fifo.finish()
    assert_ok(result)
    assert_rows(out, 7, 0)
    ws.assert_intact()


# ---------------------------------------------------------------------------- found by tests/test_fuzz.py


@pytest.mark.parametrize("name", ["in.txt.gz", "in.jsonl.gz", "in.csv.gz"])
@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_fuzz_finding_a_damaged_deflate_stream_is_bad_input(name, on_error, ws, tiny_model_dir):
    """A gzip file with one byte of its header dropped: zlib.error must be exit 2, not
    'unexpected error' exit 1 (found by the fuzz: txt.gz and jsonl.gz, not csv.gz)."""
    data = gzip.compress(b"id,text\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(8)), mtime=0)
    src = ws.root / name
    src.write_bytes(data[:3] + data[4:])
    result = embed(tiny_model_dir, src, "-o", ws.root / "out", "--on-error", on_error)
    assert_one_error(result, 2, re.escape(str(src)))
    ws.assert_intact()


# ---------------------------------------------------------------------------- issue 8: the hostile rows


@pytest.mark.parametrize(
    "header, flags, named",
    [
        ("text,id,text", [], "text"),
        ("id,text,id", ["--id-column", "id"], "id"),
        ("k,text,k", ["--keep-columns", "k"], "k"),
    ],
)
def test_i8_csv_repeated_header_name(header, flags, named, ws, tiny_model_dir):
    src = ws.root / "in.csv"
    src.write_text(header + "\n" + "a,b,c\n")
    result = embed(tiny_model_dir, src, "-o", ws.root / "out", *flags)
    assert_one_error(result, 2, f"['\"`]{named}['\"`]")  # the column, quoted
    ws.assert_intact()


def test_i8_overwrite_with_a_wrong_text_column_leaves_output_untouched(ws, tiny_model_dir):
    src = ws.root / "in.csv"
    src.write_text(csv_rows(6))
    out = ws.root / "out"
    assert_ok(embed(tiny_model_dir, src, "-o", out))
    before = snapshot(out)
    assert "manifest.json" in before
    result = embed(tiny_model_dir, src, "-o", out, "--overwrite", "--text-column", "nosuch")
    assert_one_error(result, 2, "'nosuch'")
    assert snapshot(out) == before
    assert_rows(out, 6, 0)
    assert_verifies(out)
    ws.assert_intact()


def test_i8_rejects_are_recorded_on_stderr_with_stdout_output_and_quiet(ws, tiny_model_dir):
    src = ws.root / "in.jsonl"
    src.write_text('{"text": "alpha"}\n{"text": null}\n{"text": "gamma"}\n{"text": 7}\n')
    result = embed(tiny_model_dir, src, "-o", "-", "--on-error", "skip")  # embed() adds -q
    assert_ok(result)
    out_lines = result.stdout.splitlines()
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert all(isinstance(r, dict) for r in records)
    assert sorted(r.get("line") for r in records) == [2, 4]
    assert len(out_lines) + len(records) == 4
    ws.assert_intact()


def test_i8_model_folder_that_does_not_exist(ws):
    src = ws.root / "in.txt"
    src.write_text(lines(2))
    result = invoke(["embed", src, "-o", ws.root / "out", "--model", "./nonexistent_dir", "-q"])
    line = assert_one_error(result, 2, "nonexistent_dir")
    assert re.search(r"does not exist|no such (folder|directory)", line, re.I), line
    assert not re.search(r"repo[ _]?id", line, re.I), line  # not a hub-id complaint
    ws.assert_intact()


def test_i8_verify_of_a_missing_path_exits_2(ws):
    result = invoke(["verify", ws.root / "nothere"])
    assert_one_error(result, 2, "nothere")
    assert not (ws.root / "nothere").exists()
    ws.assert_intact()


def debug_cases(root: Path, model: str) -> dict[str, tuple[list, dict, int]]:
    (root / "in.txt").write_text(lines(3))
    (root / "in.jsonl").write_text(json.dumps({"text": "alpha", "k": 1}) + "\n")
    (root / "bad.txt").write_text("alpha\n\u00a0\n", encoding="utf-8")
    (root / "full").mkdir()
    (root / "full" / "data.csv").write_text("keep me")
    m = model_args(model)
    src = root / "in.txt"
    return {
        "missing-input": (["embed", root / "nothere.txt", "-o", root / "o1", *m], {}, 2),
        "bad-row": (["embed", root / "bad.txt", "-o", root / "o2", *m], {}, 2),
        "output-conflict": (["embed", src, "-o", root / "full", *m], {}, 3),
        "kept-twice": (["embed", root / "in.jsonl", "-o", root / "o3", "--keep-columns", "k,k", *m], {}, 2),
        "bad-rank": (["embed", src, "-o", root / "o4", *m], {"RANK": "abc", "WORLD_SIZE": "2"}, 2),
        "usage": (["embed", src, "-o", root / "o5", "--batch-size", "0", *m], {}, 2),
        "verify-missing": (["verify", root / "nothere"], {}, 2),
    }


@pytest.mark.parametrize(
    "case",
    ["missing-input", "bad-row", "output-conflict", "kept-twice", "bad-rank", "usage", "verify-missing"],
)
def test_i8_minilm_debug_does_not_change_exit_codes(case, ws, tiny_model_dir):
    args, env, code = debug_cases(ws.root, tiny_model_dir)[case]
    quiet = invoke(args, env=env)
    debug = invoke(args, env={**env, "MINILM_DEBUG": "1"})
    assert quiet.exit_code == code, quiet.stderr
    assert debug.exit_code == code, debug.output
    assert isinstance(debug.exception, SystemExit), repr(debug.exception)
    assert any(line.startswith("minilm: error: ") for line in debug.stderr.splitlines()), debug.stderr
    ws.assert_intact()


# ---------------------------------------------------------------------------- real processes


def run_minilm(args: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("MINILM_DEBUG", "RANK", "WORLD_SIZE")}
    full_env.update({"PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "minilm_cli.cli", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
    )


def test_real_process_hostile_inputs_one_line_each(ws, tiny_model_dir):
    """One process, the environment and flag parsing as a shell gives them."""
    src = ws.root / "in.txt"
    src.write_text(lines(3))
    proc = run_minilm(
        ["embed", src, "-o", ws.root / "out", "--keep-columns", "k,k", *model_args(tiny_model_dir)],
        ws.root,
        env={"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("minilm: error: ")
    assert "Traceback" not in proc.stderr
    ws.assert_intact()


def test_real_process_minilm_debug_keeps_the_exit_code(ws, tiny_model_dir):
    missing = ws.root / "nothere.txt"
    proc = run_minilm(
        ["embed", missing, "-o", ws.root / "out", *model_args(tiny_model_dir)],
        ws.root,
        env={"MINILM_DEBUG": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr  # debug shows one
    assert proc.stderr.splitlines()[-1] == f"minilm: error: input not found: {missing}"
    ws.assert_intact()


# ---------------------------------------------------------------------------- the fixes, unit by unit


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"}, (4, 2)),
        ({"SLURM_ARRAY_TASK_ID": " 1 ", "SLURM_ARRAY_TASK_COUNT": "2"}, (2, 1)),
        ({"JOB_COMPLETION_INDEX": "0"}, (1, 0)),
        ({"RANK": "3", "WORLD_SIZE": "4"}, (4, 3)),
        ({"RANK": "abc"}, (1, 0)),  # RANK alone is not a sharded run: it is not read
    ],
)
def test_shard_from_env_reads_well_formed_variables(env, expected):
    from minilm_cli.sharding import shard_from_env

    assert shard_from_env(None, None, env) == expected


@pytest.mark.parametrize(
    "env, named",
    [
        ({"RANK": "-1", "WORLD_SIZE": "4"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": str(10**20)}, "WORLD_SIZE"),
        ({"SLURM_ARRAY_TASK_ID": "1e3", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY_TASK_ID"),
        ({"JOB_COMPLETION_INDEX": "x\ny"}, "JOB_COMPLETION_INDEX"),
    ],
)
def test_shard_from_env_names_a_malformed_variable(env, named):
    from minilm_cli.errors import InputError
    from minilm_cli.sharding import shard_from_env

    with pytest.raises(InputError, match=named) as caught:
        shard_from_env(None, None, env)
    assert "\n" not in str(caught.value)


def test_fail_writes_one_line_whatever_the_message_holds(capsys):
    from minilm_cli.cli import fail

    with pytest.raises(SystemExit) as caught:
        fail("a\nb\rc\x0bd\x0ce\x1cf\x1dg\x1eh\x85i\u2028j\u2029k", 2)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err == "minilm: error: a\\nb\\rc\\x0bd\\x0ce\\x1cf\\x1dg\\x1eh\\x85i\\u2028j\\u2029k\n"
