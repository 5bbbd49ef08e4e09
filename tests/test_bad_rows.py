"""Bad rows: every kind stops the run under --on-error fail (exit 2, one line naming the
file and the line or row, no traceback) and is set aside under --on-error skip (a line in
OUTPUT/rejects/part-NNNNN.jsonl with source, line/row, reason and raw; counted in the
manifest and in the summary line). A property test throws random mixtures of good and
bad JSONL and CSV lines at the pipeline: every input record is either embedded or
rejected, and nothing but a MinilmError ever escapes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import REPO, cli, manifest, model_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minilm_cli.config import EmbedConfig
from minilm_cli.errors import MinilmError
from minilm_cli.output import verify_output
from minilm_cli.pipeline import run_job


def rejects(out: Path) -> list[dict]:
    found = []
    for p in sorted((out / "rejects").glob("part-*.jsonl")) if (out / "rejects").is_dir() else []:
        found += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    return found


def table(out: Path) -> pa.Table:
    paths = [out / s["files"]["data"]["path"] for s in manifest(out)["shards"] if "data" in s["files"]]
    return pa.concat_tables([pq.read_table(p) for p in paths])


def vectors(t: pa.Table) -> np.ndarray:
    column = t.column("embedding").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)


# ---------------------------------------------------------------------------- one case per kind


def parquet_bytes(data: dict) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(data), sink)
    return sink.getvalue()


# name, file name, content, extra flags, (kind, number), reason, raw, good rows
CASES = [
    (
        "csv-malformed",
        "in.csv",
        b"id,text\n1,hello there\n2,a,b\n3,fine words\n",
        [],
        ("row", 2),
        "expected 2 columns, got 3",
        "2,a,b",
        2,
    ),
    (
        "csv-too-few-columns",
        "in.csv",
        b"id,text\n1,hello there\nlonely\n3,fine words\n",
        [],
        ("row", 2),
        "expected 2 columns, got 1",
        "lonely",
        2,
    ),
    (
        "jsonl-unparsable",
        "in.jsonl",
        b'{"text": "hello there"}\n{"text": "half\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "invalid JSON",
        '{"text": "half',
        2,
    ),
    (
        "jsonl-not-object",
        "in.jsonl",
        b'{"text": "hello there"}\n["a", "list"]\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "not an object",
        '["a", "list"]',
        2,
    ),
    (
        "jsonl-bare-string",
        "in.jsonl",
        b'{"text": "hello there"}\n"just text"\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "not an object",
        '"just text"',
        2,
    ),
    (
        "jsonl-text-is-number",
        "in.jsonl",
        b'{"text": "hello there"}\n{"text": 42}\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "not a string",
        '{"text": 42}',
        2,
    ),
    (
        "jsonl-text-is-list",
        "in.jsonl",
        b'{"text": "hello there"}\n{"text": ["a"]}\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "not a string",
        '{"text": ["a"]}',
        2,
    ),
    (
        "txt-invalid-utf8",
        "in.txt",
        b"hello there\nbad \xff\xfe bytes\nfine words\n",
        [],
        ("line", 2),
        "invalid UTF-8",
        "bad \\xff\\xfe bytes",
        2,
    ),
    (
        "jsonl-invalid-utf8",
        "in.jsonl",
        b'{"text": "hello"}\n{"text": "bad \xff"}\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "invalid UTF-8",
        '{"text": "bad \\xff"}',
        2,
    ),
    (
        "csv-invalid-utf8",
        "in.csv",
        b"id,text\n1,hello there\n2,bad \xff cell\n3,fine words\n",
        [],
        ("row", 2),
        "invalid UTF-8",
        "bad \\xff cell",
        2,
    ),
    (
        "jsonl-null-text",
        "in.jsonl",
        b'{"text": "hello there"}\n{"text": null}\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "null text",
        '{"text": null}',
        2,
    ),
    (
        "jsonl-missing-text",
        "in.jsonl",
        b'{"text": "hello there"}\n{"title": "x"}\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "null text",
        '{"title": "x"}',
        2,
    ),
    (
        "parquet-null-text",
        "in.parquet",
        parquet_bytes({"text": ["hello there", None, "fine"]}),
        [],
        ("row", 2),
        "null text",
        None,
        2,
    ),
    (
        "txt-nbsp",
        "in.txt",
        "hello there\n\u00a0\nfine words\n".encode(),
        [],
        ("line", 2),
        "empty text",
        "\u00a0",
        2,
    ),
    (
        "txt-whitespace",
        "in.txt",
        "hello there\n \u3000\t \nfine words\n".encode(),
        [],
        ("line", 2),
        "empty text",
        " \u3000\t ",
        2,
    ),
    (
        "jsonl-empty",
        "in.jsonl",
        b'{"text": "hello"}\n{"text": ""}\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "empty text",
        '{"text": ""}',
        2,
    ),
    (
        "jsonl-whitespace",
        "in.jsonl",
        b'{"text": "hello"}\n{"text": " \\t\\n "}\n{"text": "fine"}\n',
        [],
        ("line", 2),
        "empty text",
        '{"text": " \\t\\n "}',
        2,
    ),
    (
        "csv-empty",
        "in.csv",
        b'id,text\n1,hello there\n2,""\n3,fine words\n',
        [],
        ("row", 2),
        "empty text",
        "",
        2,
    ),
    (
        "parquet-whitespace",
        "in.parquet",
        parquet_bytes({"text": ["hello there", "   ", "fine"]}),
        [],
        ("row", 2),
        "empty text",
        "   ",
        2,
    ),
    (
        "jsonl-null-id",
        "in.jsonl",
        b'{"id": "a", "text": "hello"}\n{"id": null, "text": "no id"}\n{"id": "c", "text": "fine"}\n',
        ["--id-column", "id"],
        ("line", 2),
        "null id",
        '{"id": null, "text": "no id"}',
        2,
    ),
    (
        "jsonl-missing-id",
        "in.jsonl",
        b'{"id": "a", "text": "hello"}\n{"text": "no id"}\n{"id": "c", "text": "fine"}\n',
        ["--id-column", "id"],
        ("line", 2),
        "null id",
        '{"text": "no id"}',
        2,
    ),
    (
        "parquet-null-id",
        "in.parquet",
        parquet_bytes({"id": [1, None, 3], "text": ["hello", "no id", "fine"]}),
        ["--id-column", "id"],
        ("row", 2),
        "null id",
        "no id",
        2,
    ),
]
CASE_IDS = [c[0] for c in CASES]
# Lines the reader cannot turn into a record at all: set aside, but not records, so they
# take no default id (the next good row gets the next number).
PARSE_REJECTS = {
    "csv-malformed",
    "csv-too-few-columns",
    "jsonl-unparsable",
    "jsonl-not-object",
    "jsonl-bare-string",
    "jsonl-invalid-utf8",
}


def write_case(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("name,fname,content,extra,where,reason,raw,good", CASES, ids=CASE_IDS)
def test_bad_row_fails_the_run_with_one_line(
    tmp_path, tiny_model_dir, name, fname, content, extra, where, reason, raw, good
):
    src = write_case(tmp_path, fname, content)
    out = tmp_path / "out"
    result = cli(["embed", str(src), "-o", str(out), *extra, *model_args(tiny_model_dir)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    kind, number = where
    assert lines[0].startswith(f"minilm: error: bad row: {src}, {kind} {number}: "), lines[0]
    assert reason in lines[0]
    assert "--on-error skip" in lines[0]
    # A new run that fails on its input before any shard leaves no OUTPUT behind, so the
    # corrected command needs no --overwrite; nothing half-done was ever published.
    assert not out.exists()


@pytest.mark.parametrize("name,fname,content,extra,where,reason,raw,good", CASES, ids=CASE_IDS)
def test_bad_row_is_set_aside_under_skip(
    tmp_path, tiny_model_dir, name, fname, content, extra, where, reason, raw, good
):
    src = write_case(tmp_path, fname, content)
    out = tmp_path / "out"
    result = cli(
        ["embed", str(src), "-o", str(out), "--on-error", "skip", *extra, *model_args(tiny_model_dir)]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"embedded {good} rows into 1 shard(s); 1 rejected,"), result.stderr

    kind, number = where
    got = rejects(out)
    assert len(got) == 1
    assert set(got[0]) == {"id", "source", kind, "reason", "raw"}
    assert got[0]["source"] == str(src)
    assert got[0][kind] == number
    assert reason in got[0]["reason"]
    assert got[0]["raw"] == raw
    assert (out / "rejects" / "part-00000.jsonl").exists()

    doc = manifest(out)
    assert doc["status"] == "complete"
    assert doc["totals"]["rejected"] == 1
    assert doc["totals"]["rows"] == good
    assert [s["rejected"] for s in doc["shards"]] == [1]
    assert doc["shards"][0]["files"]["rejects"]["path"] == "rejects/part-00000.jsonl"
    t = table(out)
    assert t.num_rows == good
    assert np.isfinite(vectors(t)).all()
    if "--id-column" in extra:
        assert None not in t.column("id").to_pylist()
    elif name in PARSE_REJECTS:
        assert t.column("id").to_pylist() == [0, 1]
    else:
        assert t.column("id").to_pylist() == [0, 2]  # ids are record positions; the bad one is missing
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output
    assert "1 rejected" in check.output


@pytest.mark.slow
def test_bad_row_in_a_real_process_prints_one_line(tmp_path, tiny_model_dir):
    src = write_case(tmp_path, "in.csv", b"id,text\n1,hello there\n2,a,b\n3,fine words\n")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("MINILM_DEBUG", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minilm_cli.cli",
            "embed",
            str(src),
            "-o",
            str(tmp_path / "out"),
            *model_args(tiny_model_dir),
        ],
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [
        f"minilm: error: bad row: {src}, row 2: expected 2 columns, got 3 "
        "(use --on-error skip to set it aside)"
    ]


@pytest.mark.parametrize(
    "fname,content",
    [
        ("in.txt", b"hello there\nbad \xff\xfe bytes\nfine words\n"),
        ("in.jsonl", b'{"text": "hello there"}\n{"text": "bad \xff\xfe bytes"}\n{"text": "fine words"}\n'),
        ("in.csv", b"text\nhello there\nbad \xff\xfe bytes\nfine words\n"),
    ],
    ids=["txt", "jsonl", "csv"],
)
def test_encoding_errors_replace_embeds_the_row(tmp_path, tiny_model_dir, fname, content):
    src = write_case(tmp_path, fname, content)
    fixed = write_case(tmp_path, "fixed-" + fname, content.replace(b"\xff\xfe", "\ufffd\ufffd".encode()))
    out, want = tmp_path / "out", tmp_path / "want"
    result = cli(
        ["embed", str(src), "-o", str(out), "--encoding-errors", "replace", *model_args(tiny_model_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "embedded 3 rows into 1 shard(s); 0 rejected" in result.stderr
    assert not (out / "rejects").exists()
    reference = cli(["embed", str(fixed), "-o", str(want), *model_args(tiny_model_dir), "-q"])
    assert reference.exit_code == 0, reference.output
    # the bad bytes became U+FFFD: same vectors as the text written with U+FFFD
    assert np.array_equal(vectors(table(out)), vectors(table(want)))
    assert manifest(out)["settings"]["encoding_errors"] == "replace"


def test_many_bad_rows_are_all_counted(tmp_path, tiny_model_dir):
    """Several kinds in one file, across chunks and shards: each reject once, in its shard."""
    lines = []
    bad = {}
    for i in range(1, 61):
        if i % 7 == 0:
            lines.append(b"{oops")
            bad[i] = "invalid JSON"
        elif i % 11 == 0:
            lines.append(b'{"text": ""}')
            bad[i] = "empty text"
        elif i % 13 == 0:
            lines.append(b'{"text": 13}')
            bad[i] = "not a string"
        else:
            lines.append(json.dumps({"text": f"row number {i}"}).encode())
    src = write_case(tmp_path, "in.jsonl", b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    result = cli(
        [
            "embed",
            str(src),
            "-o",
            str(out),
            "--on-error",
            "skip",
            "--chunk-size",
            "4",
            "--shard-rows",
            "10",
            *model_args(tiny_model_dir),
        ]
    )
    assert result.exit_code == 0, result.output
    got = rejects(out)
    assert sorted(r["line"] for r in got) == sorted(bad)
    for r in got:
        assert bad[r["line"]] in r["reason"]
    doc = manifest(out)
    assert doc["totals"]["rejected"] == len(bad) == sum(s["rejected"] for s in doc["shards"])
    assert doc["totals"]["rows"] == 60 - len(bad)
    assert sum(1 for s in doc["shards"] if s["rejected"]) > 1
    assert f"{len(bad)} rejected" in result.stderr
    texts = [f"row number {i}" for i in range(1, 61) if i not in bad]
    assert table(out).num_rows == len(texts)


@pytest.mark.parametrize(
    "fname,content,chunk,where",
    [
        ("in.jsonl", b'{"text": "one"}\n{"text": "two"}\n{broken\n', "2", ("line", 3)),
        ("in.jsonl", b"[1, 2]\n", "8", ("line", 1)),
        ("in.csv", b"id,text\n1,a,b\n", "8", ("row", 1)),
    ],
    ids=["jsonl-tail-after-full-block", "jsonl-only-bad-line", "csv-only-malformed-row"],
)
def test_unparsable_lines_at_the_end_are_not_lost(tmp_path, tiny_model_dir, fname, content, chunk, where):
    """Regression: a rejects-only read block at the very end of the input (no good row after
    it) was silently dropped under --on-error skip."""
    src = write_case(tmp_path, fname, content)
    out = tmp_path / "out"
    result = cli(
        [
            "embed",
            str(src),
            "-o",
            str(out),
            "--on-error",
            "skip",
            "--chunk-size",
            chunk,
            *model_args(tiny_model_dir),
        ]
    )
    assert result.exit_code == 0, result.output
    kind, number = where
    assert [r[kind] for r in rejects(out)] == [number]
    assert manifest(out)["totals"]["rejected"] == 1
    assert "1 rejected" in result.stderr


def test_csv_reject_rows_point_at_the_right_row(tmp_path, tiny_model_dir):
    """Regression: value-level rejects after a malformed row were numbered as if the
    malformed row did not exist (row 3 reported as row 2)."""
    src = write_case(tmp_path, "in.csv", b"id,text\n1,ok one\n2,a,b\n3,\n4,fine\n5,x,y\n6,\n7,last\n")
    out = tmp_path / "out"
    result = cli(["embed", str(src), "-o", str(out), "--on-error", "skip", *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    got = {r["row"]: r["reason"] for r in rejects(out)}
    assert got == {
        2: "expected 2 columns, got 3",
        3: "empty text",
        5: "expected 2 columns, got 3",
        6: "empty text",
    }


def test_unknown_text_column_is_an_input_error_not_a_bad_row(tmp_path, tiny_model_dir):
    src = write_case(tmp_path, "in.csv", b"id,body\n1,hello\n")
    result = cli(
        ["embed", str(src), "-o", str(tmp_path / "out"), "--on-error", "skip", *model_args(tiny_model_dir)]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"minilm: error: text column 'text' not found in {src}; columns are: id, body"
    )


# ---------------------------------------------------------------------------- property test


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    from minilm_cli.model import Embedder

    return Embedder(model=tiny_model_dir, device="cpu", precision="fp32", threads=1)


good_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=25).filter(
    lambda t: t.strip() != ""
)
blank_text = st.sampled_from(["", " ", "\t", "  \t ", "\u3000"])

JSON_LINE = st.one_of(
    good_text.map(lambda t: ("good", json.dumps({"text": t}, ensure_ascii=False).encode())),
    good_text.map(lambda t: ("good", json.dumps({"n": 1, "text": t, "x": [1]}).encode())),
    blank_text.map(lambda t: ("bad", json.dumps({"text": t}).encode())),
    st.just(("bad", b'{"text": null}')),
    st.integers().map(lambda n: ("bad", json.dumps({"text": n}).encode())),
    st.sampled_from([b"[1, 2]", b"3", b'"text"', b"true", b"null"]).map(lambda b: ("bad", b)),
    st.sampled_from([b"{", b"{text: 1}", b'{"text": "a"', b"nope", b"}{", b'{"text": "a"}}']).map(
        lambda b: ("bad", b)
    ),
    st.sampled_from([b'{"text": "caf\xe9"}', b'{"text": "\xff\xfe"}', b"\x80"]).map(lambda b: ("bad", b)),
    st.sampled_from([b"", b"   ", b"\t"]).map(lambda b: ("blank", b)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(JSON_LINE, max_size=30),
    chunk_size=st.integers(1, 6),
    shard_rows=st.integers(1, 9),
)
def test_property_jsonl_every_record_embedded_or_rejected(
    embedder, tiny_model_dir, lines, chunk_size, shard_rows
):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        src.write_bytes(b"\n".join(b for _, b in lines) + b"\n")
        out = Path(tmp) / "out"
        cfg = EmbedConfig(
            inputs=[str(src)],
            output=str(out),
            model=tiny_model_dir,
            device="cpu",
            precision="fp32",
            on_error="skip",
            quiet=True,
            chunk_size=chunk_size,
            shard_rows=shard_rows,
        )
        try:
            result = run_job(cfg, embedder=embedder)
        except MinilmError as exc:  # every object here has a text field: nothing should stop the run
            pytest.fail(f"{type(exc).__name__}: {exc}")
        good = [i for i, (kind, _) in enumerate(lines, start=1) if kind == "good"]
        bad = [i for i, (kind, _) in enumerate(lines, start=1) if kind == "bad"]
        assert result.rows == len(good)
        assert result.rejected == len(bad)
        got = rejects(out)
        assert sorted(r["line"] for r in got) == bad  # each bad line exactly once
        doc = manifest(out)
        assert doc["totals"]["rows"] + doc["totals"]["rejected"] == len(good) + len(bad)
        assert sum(
            pq.read_metadata(out / s["files"]["data"]["path"]).num_rows
            for s in doc["shards"]
            if "data" in s["files"]
        ) == len(good)
        assert verify_output(out).ok


CSV_ROW = st.one_of(
    good_text.filter(lambda t: "\x00" not in t and t.strip(" \t\r\n") != "").map(lambda t: ("good", t)),
    blank_text.map(lambda t: ("bad", t)),
    st.just(("bad-bytes", b"bad \xff\xfe")),
    st.sampled_from(["a,b", "x,y,z", '"q",1,2']).map(lambda t: ("malformed", t)),
    st.just(("malformed", "")),  # a row with only the id column
)


def csv_line(number: int, kind: str, value) -> bytes:
    if kind == "malformed":
        return f"{number},{value}".encode() if value else f"{number}".encode()
    if kind == "bad-bytes":
        return f"{number},".encode() + b'"' + value + b'"'
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow([number, value])  # quotes fields with \r or \n
    return buf.getvalue()[:-2].encode()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(CSV_ROW, max_size=30),
    chunk_size=st.integers(1, 6),
    shard_rows=st.integers(1, 9),
)
def test_property_csv_every_row_embedded_or_rejected(embedder, tiny_model_dir, rows, chunk_size, shard_rows):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.csv"
        body = [csv_line(i, kind, value) for i, (kind, value) in enumerate(rows, start=1)]
        src.write_bytes(b"id,text\n" + b"\n".join(body) + b"\n")
        out = Path(tmp) / "out"
        cfg = EmbedConfig(
            inputs=[str(src)],
            output=str(out),
            model=tiny_model_dir,
            device="cpu",
            precision="fp32",
            on_error="skip",
            quiet=True,
            chunk_size=chunk_size,
            shard_rows=shard_rows,
        )
        try:
            result = run_job(cfg, embedder=embedder)
        except MinilmError as exc:  # the header is sound: every row is embedded or rejected
            pytest.fail(f"{type(exc).__name__}: {exc}")
        good = sum(1 for kind, _ in rows if kind == "good")
        assert result.rows == good
        assert result.rows + result.rejected == len(rows)  # every data row accounted for
        got = rejects(out)
        assert len(got) == result.rejected
        malformed = [line.decode() for (kind, _), line in zip(rows, body) if kind == "malformed"]
        assert sorted(r["raw"] for r in got if r["reason"].startswith("expected 2 columns")) == sorted(
            malformed
        )
        assert all(r["source"] == str(src) for r in got)
        bad = [i for i, (kind, _) in enumerate(rows, start=1) if kind != "good"]
        assert sorted(r["row"] for r in got) == bad  # each bad row once, at its own row number
        assert verify_output(out).ok
