"""Kept columns (issue 20 item 12, issue 25 item 2): an --id-column kept as well, and
``--keep-columns NAME:NEWNAME`` renames, in every input format and both layouts; clashes are
one line, exit 2, before anything runs; a rename is a setting --resume refuses to change."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_line_error, cli, model_args

from minilm_cli import open_dataset
from minilm_cli.batching import Chunk
from minilm_cli.config import EmbedConfig
from minilm_cli.errors import InputError
from minilm_cli.output.layout import Layout
from minilm_cli.output.writers import ShardWriter
from minilm_cli.pipeline import run_job

ROWS = [
    {"text": "alpha beta", "i": "a-1", "k": "k1", "id": "x1"},
    {"text": "gamma delta", "i": "a-2", "k": "k2", "id": "x2"},
    {"text": "epsilon", "i": "a-3", "k": "k3", "id": "x3"},
]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    from minilm_cli.model import Embedder

    return Embedder(model=tiny_model_dir, device="cpu", precision="fp32", threads=1)


def write_input(folder: Path, fmt: str) -> Path:
    path = folder / f"in.{fmt}"
    names = list(ROWS[0])
    if fmt in ("csv", "tsv"):
        with path.open("w", newline="") as f:
            writer = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            writer.writerow(names)
            writer.writerows([row[n] for n in names] for row in ROWS)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


def run(tmp_path: Path, embedder, inputs: list[Path], **kw) -> Path:
    out = tmp_path / kw.pop("out", "out")
    cfg = EmbedConfig([str(p) for p in inputs], str(out), device="cpu", precision="fp32", quiet=True, **kw)
    run_job(cfg, embedder=embedder)
    return out


@pytest.mark.parametrize("layout", ["parquet", "npy"])
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_id_column_kept_too_and_renames(fmt, layout, tmp_path, embedder):
    src = write_input(tmp_path, fmt)
    keep = ("i", "k:kept_k", "id:source_id")
    out = run(tmp_path, embedder, [src], id_column="i", keep_columns=keep, format=layout, shard_rows=2)
    table = open_dataset(out).to_table()
    wanted = (
        ["id", "embedding", "i", "kept_k", "source_id"]
        if layout == "parquet"
        else ["id", "i", "kept_k", "source_id"]
    )
    assert table.column_names == wanted
    assert table.column("id").to_pylist() == [r["i"] for r in ROWS]
    assert table.column("i").to_pylist() == [r["i"] for r in ROWS]
    assert table.column("kept_k").to_pylist() == [r["k"] for r in ROWS]
    assert table.column("source_id").to_pylist() == [r["id"] for r in ROWS]
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["settings"]["keep_columns"] == ["i", "k:kept_k", "id:source_id"]


def test_rename_with_default_ids_and_column_type(tmp_path, embedder):
    src = tmp_path / "n.jsonl"
    src.write_text("".join(json.dumps({"text": f"t {n}", "n": n}) + "\n" for n in range(3)))
    # --column-type names the input column, not its output name
    out = run(tmp_path, embedder, [src], keep_columns=("n:number",), column_types={"n": "float64"})
    table = open_dataset(out).to_table()
    assert table.column_names == ["id", "embedding", "number"]
    assert table.column("id").to_pylist() == [0, 1, 2]
    assert table.schema.field("number").type == pa.float64()
    assert table.column("number").to_pylist() == [0.0, 1.0, 2.0]


def test_stdout_keeps_id_column_and_renames(tmp_path, tiny_model_dir):
    src = write_input(tmp_path, "csv")
    result = cli(
        ["embed", str(src), "-o", "-", "--id-column", "i", "--keep-columns", "i,id:source_id"]
        + model_args(tiny_model_dir)
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [list(r) for r in rows] == [["id", "i", "source_id", "embedding"]] * 3
    assert [(r["id"], r["i"], r["source_id"]) for r in rows] == [(r["i"], r["i"], r["id"]) for r in ROWS]


@pytest.mark.parametrize(
    "keep, extra, words",
    [
        ("id", [], ["'id' column", "id:input_id", "--id-column id"]),
        ("k:id", [], ["k:id", "'id' column"]),
        ("k:embedding", [], ["'embedding' column"]),
        ("k:x,i:x", [], ["k:x and i:x", "'x'"]),
        ("k:", [], ["NAME:NEWNAME"]),
        ("k,k:k2", [], ["k is listed twice"]),
        ("k:window", ["--overflow", "split"], ["--overflow split adds a 'window' column"]),
        ("tokens", ["--overflow", "mean"], ["--overflow mean uses a 'tokens' column", "tokens:input_tokens"]),
    ],
)
def test_clashes_are_one_line_before_anything_runs(keep, extra, words, tmp_path, tiny_model_dir):
    src = write_input(tmp_path, "csv")
    out = tmp_path / "out"
    result = cli(
        ["embed", str(src), "-o", str(out), "--keep-columns", keep, *extra] + model_args(tiny_model_dir)
    )
    line = assert_one_line_error(result, 2, *words)
    assert "Target schema" not in line
    assert not out.exists()


def test_python_api_refuses_a_clash_too(tmp_path, embedder):
    src = write_input(tmp_path, "jsonl")
    with pytest.raises(InputError, match="'embedding' column"):
        run(tmp_path, embedder, [src], keep_columns=("k:embedding",))
    assert not (tmp_path / "out").exists()


def test_resume_refuses_another_rename(tmp_path, tiny_model_dir):
    src = write_input(tmp_path, "jsonl")
    out = tmp_path / "out"
    base = ["embed", str(src), "-o", str(out), "--shard-rows", "1"] + model_args(tiny_model_dir)
    assert cli(base + ["--keep-columns", "k:kept_k"]).exit_code == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    result = cli(base + ["--keep-columns", "k:other", "--resume"])
    assert_one_line_error(result, 3, "keep_columns")
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    again = cli(base + ["--keep-columns", "k:kept_k", "--resume"])
    assert again.exit_code == 0, again.output


def test_a_type_change_at_the_writer_is_told_in_our_words(tmp_path):
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("k", pa.int64())])
    writer = ShardWriter(Layout(str(tmp_path)), "parquet", "float32", metadata_schema=schema)
    keep = pa.table({"k": pa.array(["not a number"])})
    chunk = Chunk(["t"], pa.array([0]), keep, [], 0, 1, True)
    with pytest.raises(InputError) as caught:
        writer.write(chunk, np.zeros((1, 4), np.float32))
    message = str(caught.value)
    assert "column 'k' is string here, int64 in the job's schema" in message
    assert "Target schema" not in message and "Failed to parse" not in message


def test_append_and_merge_refuse_another_rename(tmp_path, tiny_model_dir):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"text": "alpha", "k": 1}) + "\n")
    b.write_text(json.dumps({"text": "beta", "k": 2}) + "\n")
    out = tmp_path / "out"
    args = ["embed", str(a), str(b), "-o", str(out)] + model_args(tiny_model_dir)
    assert (
        cli(
            ["embed", str(a), "-o", str(out), "--keep-columns", "k:kk"] + model_args(tiny_model_dir)
        ).exit_code
        == 0
    )
    assert_one_line_error(
        cli(args + ["--keep-columns", "k:other", "--append"]), 3, "keep_columns", "k:kk", "k:other"
    )
    assert cli(args + ["--keep-columns", "k:kk", "--append"]).exit_code == 0
    parts = tmp_path / "parts"
    for index in (0, 1):
        flags = ["--keep-columns", f"k:k{index}", "--num-shards", "2", "--shard-index", str(index)]
        assert (
            cli(["embed", str(a), str(b), "-o", str(parts), *flags] + model_args(tiny_model_dir)).exit_code
            == 0
        )
    merged = cli(["merge-manifests", str(parts)])
    assert merged.exit_code == 4, merged.output
    assert "keep_columns differs" in merged.output
    assert not (parts / "manifest.json").exists()


def test_a_type_change_between_pieces_is_told_in_our_words():
    from minilm_cli.batching import chunk_rows
    from minilm_cli.sources import CheckedRows

    def piece(first: int, ids: pa.Array) -> CheckedRows:
        keep = pa.table({"k": pa.array(["a"])})
        return CheckedRows(["t"], ids, keep, np.asarray([first]), [], first, 1)

    pieces = [piece(0, pa.array([1], pa.int64())), piece(1, pa.array(["x"], pa.string()))]
    with pytest.raises(InputError) as caught:
        list(chunk_rows(pieces, chunk_size=8, shard_rows=8))
    message = str(caught.value)
    assert message == "the id or kept columns change type between inputs: id is int64 and string"
