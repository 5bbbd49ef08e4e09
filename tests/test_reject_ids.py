"""Reject records join back (issue 20 item 4): every record in rejects/ has the ``id`` its row
would have had. With default ids that is the number an unrejected row in its place gets,
checked against a run where the row is fixed; with --id-column it is the row's value (null
where the id was the problem). CSV and JSON lines, one part and two (--num-shards 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from minilm_cli.config import EmbedConfig
from minilm_cli.pipeline import run_job

LINES = 11
BAD = {4: "unparsable", 7: "empty text", 11: "unparsable"}  # 1-based record line -> what is wrong


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    from minilm_cli.model import Embedder

    return Embedder(model=tiny_model_dir, device="cpu", precision="fp32", threads=1)


def row(fmt: str, n: int, problem: str | None) -> str:
    text, tag, doc = f"words number {n}", f"t{n}", f"d{n}"
    if problem == "empty text":
        text = ""
    if fmt == "csv":
        return f"{text},{tag},{doc},surplus field" if problem == "unparsable" else f"{text},{tag},{doc}"
    if problem == "unparsable":
        return f"not a JSON object {n}"
    return json.dumps({"text": text, "tag": tag, "doc": doc})


def write(path: Path, fmt: str, fixed: int | None = None) -> Path:
    """The input with its bad rows, but row ``fixed`` (if given) good and tagged ``fixed``."""
    lines = ["text,tag,doc"] if fmt == "csv" else []
    for n in range(1, LINES + 1):
        if n == fixed:
            line = row(fmt, n, None).replace(f"t{n}", "fixed")
        else:
            line = row(fmt, n, BAD.get(n))
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def embed(embedder, src: Path, out: Path, num_shards: int, **kw) -> tuple[list[dict], list[dict]]:
    """(the output rows' id and tag, the reject records) over every part."""
    for index in range(num_shards):
        cfg = EmbedConfig(
            [str(src)],
            str(out),
            device="cpu",
            precision="fp32",
            quiet=True,
            on_error="skip",
            chunk_size=3,  # blocks end inside the input: rejects at block edges too
            keep_columns=("tag",),
            num_shards=num_shards,
            shard_index=index,
            **kw,
        )
        run_job(cfg, embedder=embedder)
    rows = [
        r
        for p in sorted(out.glob("part-*.parquet"))
        for r in pq.read_table(p).select(["id", "tag"]).to_pylist()
    ]
    rejects = [
        json.loads(x) for p in sorted((out / "rejects").glob("*.jsonl")) for x in p.read_text().splitlines()
    ]
    return rows, sorted(rejects, key=lambda r: r.get("line") or r.get("row"))


def place(record: dict) -> int:
    """The 1-based record line of a reject (a CSV's row 1 is its first line after the header)."""
    return record["line"] if "line" in record else record["row"]


@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_default_ids_are_the_fixed_rows_ids(fmt, num_shards, tmp_path, embedder):
    out = tmp_path / "out"
    rows, rejects = embed(embedder, write(tmp_path / f"in.{fmt}", fmt), out, num_shards)
    assert [place(r) for r in rejects] == sorted(BAD)
    assert len(list((out / "rejects").glob("*.jsonl"))) == num_shards  # each part holds some
    assert len(rows) == LINES - len(BAD)
    for record in rejects:
        n = place(record)
        fixed_src = write(tmp_path / f"fixed{n}.{fmt}", fmt, fixed=n)
        fixed_rows, _ = embed(embedder, fixed_src, tmp_path / f"fixed{n}", num_shards)
        [fixed_id] = [r["id"] for r in fixed_rows if r["tag"] == "fixed"]
        assert record["id"] == fixed_id, record
    # a rejected record keeps its number (line 7: record 5, as line 4 is no record); a line that is no
    # record takes the number it would once fixed (line 11: 9)
    assert [r["id"] for r in rejects] == [3, 5, 9]


@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_id_column_values_and_null_where_the_id_is_the_problem(fmt, num_shards, tmp_path, embedder):
    src = write(tmp_path / f"in.{fmt}", fmt)
    # line 9's id is missing too: a null id is the reason then, and the record's id is null
    lines = src.read_text().splitlines()
    at = 9 if fmt == "csv" else 8  # the header shifts the CSV's lines by one
    lines[at] = (
        lines[at].replace(",d9", ",")
        if fmt == "csv"
        else json.dumps({"text": "w 9", "tag": "t9", "doc": None})
    )
    src.write_text("\n".join(lines) + "\n")
    _, rejects = embed(embedder, src, tmp_path / "out", num_shards, id_column="doc")
    got = {place(r): (r["id"], r["reason"]) for r in rejects}
    assert sorted(got) == [4, 7, 9, 11]
    assert got[4][0] is None and got[11][0] is None  # not even a record: no id could be read
    assert got[7] == ("d7", "empty text")
    assert got[9] == (None, "null id")


def test_stdout_rejects_carry_the_id_too(tmp_path, tiny_model_dir):
    from helpers import cli, model_args

    src = write(tmp_path / "in.jsonl", "jsonl")
    result = cli(["embed", str(src), "-o", "-", "--on-error", "skip", *model_args(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    assert [(r["line"], r["id"]) for r in records] == [(4, 3), (7, 5), (11, 9)]


@pytest.mark.parametrize("id_column", [None, "doc"])
def test_overflow_reject_records_carry_the_id(id_column, tmp_path, embedder):
    src = tmp_path / "in.jsonl"
    texts = ["short one", "far too long " * 40, "short two"]  # 120 tokens: over the tiny model's 64
    src.write_text(
        "".join(json.dumps({"text": t, "tag": f"t{n}", "doc": f"d{n}"}) + "\n" for n, t in enumerate(texts))
    )
    _, rejects = embed(embedder, src, tmp_path / "out", 1, overflow="reject", id_column=id_column)
    assert [(r["line"], r["id"]) for r in rejects] == [(2, "d1" if id_column else 1)]
    assert "--overflow reject" in rejects[0]["reason"]
