"""The input side (issues 8, 14, 15): column fidelity, one schema per job, hostile inputs.

Each test names the row of the issue's table it holds. Readers are checked directly where
that is enough; the CLI (tiny random model) where exit codes, stderr and output files matter.
"""

from __future__ import annotations

import json
import lzma
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cli, manifest, model_args

from minilm_cli.config import EmbedConfig
from minilm_cli.errors import InputError
from minilm_cli.pipeline import run_job
from minilm_cli.sources import (
    CheckedRows,
    Columns,
    check_rows,
    parse_column_types,
    read_file,
    resolve_inputs,
    resolve_schema,
    schema_to_json,
)
from minilm_cli.sources import schema as schema_module


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    from minilm_cli.model import Embedder

    return Embedder(model=tiny_model_dir, device="cpu", precision="fp32", threads=1)


def job(tmp_path: Path, embedder, inputs, **kw) -> tuple[Path, object]:
    out = tmp_path / kw.pop("out", "out")
    cfg = EmbedConfig([str(p) for p in inputs], str(out), device="cpu", precision="fp32", quiet=True, **kw)
    return out, run_job(cfg, embedder=embedder)


def output(out: Path) -> pa.Table:
    from minilm_cli import open_dataset

    return open_dataset(out).to_table()


def rejects(out: Path) -> list[dict]:
    found = []
    for p in sorted((out / "rejects").glob("part-*.jsonl")) if (out / "rejects").is_dir() else []:
        found += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    return found


def read_all(
    path: Path, columns: Columns, errors: str = "strict", on_error: str = "skip"
) -> list[CheckedRows]:
    files = resolve_inputs([str(path)])
    schema = resolve_schema(files, columns)
    return [
        check_rows(raw, 0, errors, on_error) for raw in read_file(files[0], columns, 4, errors, None, schema)
    ]


def embed_cli(tmp_path: Path, model: str, args: list) -> object:
    return cli(["embed", *[str(a) for a in args], *model_args(model)])


def one_error_line(result) -> str:
    assert "Traceback" not in result.output and "Exception ignored" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("minilm: error: ")
    return lines[0]


# ---------------------------------------------------------------------------- issue 8: CSV and TSV


def test_csv_leading_zeros_and_commas_stay_text(tmp_path, embedder):
    src = tmp_path / "in.csv"
    src.write_text('sku,zip,text\n00123,02139,"hello, world"\n', encoding="utf-8")
    out, _ = job(tmp_path, embedder, [src], id_column="sku", keep_columns=("zip", "text"))
    table = output(out)
    assert table.column("id").to_pylist() == ["00123"]
    assert table.column("zip").to_pylist() == ["02139"]
    assert table.column("text").to_pylist() == ["hello, world"]
    for name in ("id", "zip", "text"):
        assert table.schema.field(name).type == pa.string()


def test_csv_stdout_holds_text_not_bytes_repr(tmp_path, tiny_model_dir):
    src = tmp_path / "in.csv"
    src.write_text('sku,zip,text\n00123,02139,"hello, world"\n', encoding="utf-8")
    result = embed_cli(
        tmp_path, tiny_model_dir, [src, "-o", "-", "--id-column", "sku", "--keep-columns", "zip,text"]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    assert (row["id"], row["zip"], row["text"]) == ("00123", "02139", "hello, world")


def test_csv_values_are_never_inferred(tmp_path, embedder):
    src = tmp_path / "in.csv"
    src.write_text("id,v,text\n1,NA,a\n2,null,b\n3,1e5,c\n", encoding="utf-8")
    out, _ = job(tmp_path, embedder, [src], id_column="id", keep_columns=("v",))
    assert output(out).column("v").to_pylist() == ["NA", "null", "1e5"]


def test_csv_id_numeric_then_letters_just_works(tmp_path, embedder):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"{i},row {i}\n" for i in range(1, 40)) + "A1800,last\n")
    out, result = job(tmp_path, embedder, [src], id_column="id", chunk_size=4, shard_rows=8)
    assert result.rows == 40
    table = output(out)
    assert table.column("id").to_pylist()[-1] == "A1800"
    assert len(manifest(out)["shards"]) == 5


@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_csv_invalid_utf8_in_kept_or_id_column(tmp_path, embedder, errors):
    src = tmp_path / "in.csv"
    src.write_bytes(b"id,k,text\n1,ok,good\n2,bad \xff,kept bad\n\xfe3,x,id bad\n4,fine,also good\n")
    out, result = job(
        tmp_path,
        embedder,
        [src],
        id_column="id",
        keep_columns=("k",),
        on_error="skip",
        encoding_errors=errors,
    )
    table = output(out)
    if errors == "strict":
        assert table.column("id").to_pylist() == ["1", "4"]
        got = rejects(out)
        assert [(r["row"], r["reason"]) for r in got] == [
            (2, "column 'k': invalid UTF-8"),
            (3, "column 'id': invalid UTF-8"),
        ]
    else:
        assert table.column("k").to_pylist() == ["ok", "bad \ufffd", "x", "fine"]
        assert table.column("id").to_pylist()[2] == "\ufffd3"
    assert table.schema.field("k").type == pa.string()


def test_csv_invalid_utf8_in_kept_column_fails_under_fail(tmp_path, tiny_model_dir):
    src = tmp_path / "in.csv"
    src.write_bytes(b"k,text\nok,good\nbad \xff,kept bad\n")
    result = embed_cli(tmp_path, tiny_model_dir, [src, "-o", tmp_path / "out", "--keep-columns", "k"])
    assert result.exit_code == 2
    assert f"{src}, row 2: column 'k': invalid UTF-8" in one_error_line(result)


def test_csv_repeated_header_is_one_line(tmp_path, tiny_model_dir):
    src = tmp_path / "in.csv"
    src.write_text("a,a,text\n1,2,hello\n", encoding="utf-8")
    result = embed_cli(tmp_path, tiny_model_dir, [src, "-o", tmp_path / "out"])
    assert result.exit_code == 2
    assert "column 'a' appears twice" in one_error_line(result)


def test_tsv_quote_processing_is_csv_unless_none(tmp_path, embedder):
    """Default (issue 20): a quote at a field start opens a quoted field, as in CSV; a quote
    later in a field is text. --tsv-quoting none: every quote is text."""
    src = tmp_path / "in.tsv"
    src.write_text('id\ttext\n2\t"Quoted" at start and "more"\n3\ta "b\n', encoding="utf-8")
    out, _ = job(tmp_path, embedder, [src], id_column="id", keep_columns=("text",))
    assert output(out).column("text").to_pylist() == ['Quoted at start and "more"', 'a "b']
    kept, _ = job(
        tmp_path, embedder, [src], out="kept", id_column="id", keep_columns=("text",), tsv_quoting="none"
    )
    assert output(kept).column("text").to_pylist() == ['"Quoted" at start and "more"', 'a "b']


def test_csv_follows_rfc_4180(tmp_path, embedder):
    src = tmp_path / "in.csv"
    src.write_bytes(b'id,text\r\n1,"line one\r\nline two"\r\n2,"say ""hi"", twice"\r\n3,plain\r\n')
    out, _ = job(tmp_path, embedder, [src], id_column="id", keep_columns=("text",))
    assert output(out).column("text").to_pylist() == ["line one\r\nline two", 'say "hi", twice', "plain"]


def test_empty_csv_id_is_a_null_id(tmp_path, embedder):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,a\n,b\n3,c\n", encoding="utf-8")
    out, result = job(tmp_path, embedder, [src], id_column="id", on_error="skip")
    assert output(out).column("id").to_pylist() == ["1", "3"]
    assert [(r["row"], r["reason"]) for r in rejects(out)] == [(2, "null id")]


# ---------------------------------------------------------------------------- issue 8: JSON lines


def test_jsonl_type_change_across_shards_is_one_schema(tmp_path, embedder):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"text": f"t {i}", "score": 1 if i < 6 else 1.5}) + "\n" for i in range(12))
    )
    out, _ = job(tmp_path, embedder, [src], keep_columns=("score",), shard_rows=3, chunk_size=2)
    assert len(manifest(out)["shards"]) == 4
    schemas = {str(pq.read_schema(p)) for p in sorted(out.glob("part-*.parquet"))}
    assert len(schemas) == 1
    table = output(out)  # pyarrow.dataset reads every shard as one table
    assert table.schema.field("score").type == pa.float64()
    assert table.column("score").to_pylist() == [1.0] * 6 + [1.5] * 6
    import polars as pl

    assert pl.scan_parquet(str(out / "part-*.parquet")).collect().height == 12


def test_jsonl_value_that_does_not_fit_is_a_bad_row(tmp_path, embedder, monkeypatch):
    monkeypatch.setattr(schema_module, "SAMPLE_RECORDS", 2)
    src = tmp_path / "in.jsonl"
    lines = [
        {"text": "a", "n": 1},
        {"text": "b", "n": 2},
        {"text": "c", "n": "seven"},
        {"text": "d", "n": 14},
    ]
    src.write_text("".join(json.dumps(o) + "\n" for o in lines))
    out, result = job(tmp_path, embedder, [src], keep_columns=("n",), on_error="skip")
    assert output(out).column("n").to_pylist() == [1, 2, 14]
    (reject,) = rejects(out)
    assert reject["line"] == 3
    assert reject["reason"] == "column 'n': \"seven\" is a string, the column is int64"


def test_jsonl_strings_are_never_json_encoded_twice(tmp_path, embedder):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a", "s": "seven", "o": {"k": [1, "x"]}}\n{"text": "b", "s": "14", "o": [2]}\n')
    out, _ = job(tmp_path, embedder, [src], keep_columns=("s", "o"))
    table = output(out)
    assert table.column("s").to_pylist() == ["seven", "14"]
    assert [json.loads(v) for v in table.column("o").to_pylist()] == [{"k": [1, "x"]}, [2]]


def test_jsonl_kept_column_typo_is_exit_2_naming_the_keys(tmp_path, tiny_model_dir):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a", "module": "x"}\n')
    result = embed_cli(tmp_path, tiny_model_dir, [src, "-o", tmp_path / "out", "--keep-columns", "modul"])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "'modul'" in line and "keys seen: text, module" in line


def test_column_type_overrides_the_sample(tmp_path, embedder):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a", "n": 1}\n{"text": "b", "n": 2.5}\n')
    out, _ = job(tmp_path, embedder, [src], keep_columns=("n",))
    assert output(out).schema.field("n").type == pa.float64()
    cfg = EmbedConfig([str(src)], str(tmp_path / "o2"), keep_columns=("n",), quiet=True, on_error="skip")
    cfg.column_types = {"n": "json"}  # what --column-type n=json sets
    run_job(cfg, embedder=embedder)
    assert output(tmp_path / "o2").column("n").to_pylist() == ["1", "2.5"]


def test_parse_column_types():
    assert parse_column_types(["a=int64", "b=JSON", "x=y=string"]) == {
        "a": "int64",
        "b": "json",
        "x=y": "string",
    }
    for bad in (["a"], ["a=int32"], ["=int64"], ["a=int64", "a=string"]):
        with pytest.raises(InputError):
            parse_column_types(bad)


def test_resolve_schema_rules_and_json(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"text": "t", "i": 1, "f": 1, "b": true, "s": "x", "o": {"a": 1}, "z": null}\n'
        '{"text": "t", "i": 2, "f": 2.5, "b": false, "s": "y", "o": [1], "z": null}\n'
    )
    files = resolve_inputs([str(src)])
    schema = resolve_schema(files, Columns("text", "i", ("f", "b", "s", "o", "z")), {"s": "json"})
    assert schema.names == ["i", "f", "b", "s", "o", "z"]
    assert [f["type"] for f in schema_to_json(schema)] == [
        "int64",
        "float64",
        "bool",
        "json",
        "json",
        "string",
    ]
    with pytest.raises(InputError, match="k is listed twice"):
        resolve_schema(files, Columns("text", None, ("k", "k")))


# ---------------------------------------------------------------------------- issue 8: Parquet


@pytest.mark.parametrize(
    "kind", [pa.string(), pa.large_string(), pa.string_view(), pa.dictionary(pa.int32(), pa.string())]
)
def test_parquet_string_like_text_id_and_kept(tmp_path, embedder, kind):
    src = tmp_path / "in.parquet"
    words = pa.array(["alpha beta", "gamma", "delta"]).cast(kind)
    pq.write_table(pa.table({"text": words, "doc": words, "k": words}), src)
    out, result = job(tmp_path, embedder, [src], id_column="doc", keep_columns=("k",))
    assert result.rows == 3
    table = output(out)
    assert table.column("id").to_pylist() == ["alpha beta", "gamma", "delta"]
    assert table.column("k").to_pylist() == ["alpha beta", "gamma", "delta"]


def test_parquet_types_pass_through(tmp_path):
    import datetime
    import decimal

    src = tmp_path / "in.parquet"
    table = pa.table(
        {
            "text": ["a"],
            "ts": pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5)], pa.timestamp("us", tz="UTC")),
            "dec": pa.array([decimal.Decimal("1.25")], pa.decimal128(10, 2)),
            "nest": pa.array([{"a": [1, 2]}]),
            "cat": pa.array(["x"]).dictionary_encode(),
        }
    )
    pq.write_table(table, src)
    cols = Columns("text", None, ("ts", "dec", "nest", "cat"))
    schema = resolve_schema(resolve_inputs([str(src)]), cols)
    file_schema = pq.read_schema(src)
    assert [schema.field(n).type for n in cols.keep] == [file_schema.field(n).type for n in cols.keep]
    (rows,) = read_all(src, cols)
    assert rows.keep.schema == schema


def test_parquet_later_file_of_another_type_is_refused(tmp_path):
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["x"], "n": pa.array([1], pa.int64())}), a)
    pq.write_table(pa.table({"text": ["x"], "n": pa.array([1], pa.int32())}), b)  # widens: fine
    pq.write_table(pa.table({"text": ["x"], "n": ["one"]}), c)
    cols = Columns("text", None, ("n",))
    assert resolve_schema(resolve_inputs([str(a), str(b)]), cols).field("n").type == pa.int64()
    with pytest.raises(InputError, match="c.parquet: column 'n' is string"):
        resolve_schema(resolve_inputs([str(a), str(c)]), cols)


# ---------------------------------------------------------------------------- issue 8: discovery


def test_directory_input_says_which_files_it_skipped(tmp_path, embedder):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello\n")
    (data / "notes.md").write_text("# not an input\n")
    (data / ".hidden.txt").write_text("hidden\n")
    told: list[str] = []
    files = resolve_inputs([str(data)], log=told.append)
    assert [f.path for f in files] == [str(data / "a.txt")]
    assert told == [  # hidden files are named too (issue 20, item 9)
        f"skipped {data / '.hidden.txt'}: hidden",
        f"skipped {data / 'notes.md'}: not a supported input format (by its extension)",
    ]


def test_xz_input_works(tmp_path, embedder):
    src = tmp_path / "in.jsonl.xz"
    src.write_bytes(lzma.compress(b'{"text": "hello"}\n{"text": "there"}\n'))
    out, result = job(tmp_path, embedder, [src])
    assert result.rows == 2


# ---------------------------------------------------------------------------- issue 15


def test_output_inside_an_input_directory_is_never_read(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("one\ntwo\n")
    out = data / "out"
    for extra in ([], ["--overwrite"], ["--resume"]):
        result = embed_cli(tmp_path, tiny_model_dir, [data, "-o", out, "--format", "npy", *extra])
        assert result.exit_code == 0, result.output
        assert manifest(out)["totals"]["rows"] == 2
    # another run's output folder (it holds a manifest) is passed over, unless named
    other = tmp_path / "other"
    result = embed_cli(tmp_path, tiny_model_dir, [data, "-o", other, "--format", "npy"])
    assert result.exit_code == 0, result.output
    assert manifest(other)["totals"]["rows"] == 2
    assert f"skipped {out}" in result.stderr
    files = resolve_inputs([str(out / "metadata")])
    assert files  # named explicitly: read


def test_existing_path_is_taken_before_glob(tmp_path):
    (tmp_path / "data[1].txt").write_text("bracket\n")
    (tmp_path / "data1.txt").write_text("plain\n")
    assert [f.path for f in resolve_inputs([str(tmp_path / "data[1].txt")])] == [
        str(tmp_path / "data[1].txt")
    ]


@pytest.mark.parametrize(
    "name,content",
    [("in.txt", b"one\rtwo\rthree"), ("in.jsonl", b'{"text":"one"}\r{"text":"two"}\r{"text":"three"}')],
)
def test_cr_only_line_endings(tmp_path, name, content):
    src = tmp_path / name
    src.write_bytes(content)
    (rows,) = read_all(src, Columns())
    assert rows.texts == ["one", "two", "three"]


def test_csv_ragged_row_with_invalid_utf8_goes_to_rejects(tmp_path, tiny_model_dir):
    src = tmp_path / "in.csv"
    src.write_bytes(b"id,text\n1,good\n2,bad \xff,extra\n3,fine\n")
    out = tmp_path / "out"
    result = embed_cli(tmp_path, tiny_model_dir, [src, "-o", out, "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert "Exception ignored" not in result.output
    (reject,) = rejects(out)
    assert (reject["row"], reject["reason"], reject["raw"]) == (
        2,
        "expected 2 columns, got 3",
        "2,bad \\xff,extra",
    )


HOSTILE_JSON = [
    ("surrogate-text", '{"id": 1, "text": "\\ud800", "k": "x"}', "lone surrogate"),
    ("surrogate-id", '{"id": "\\ud800", "text": "t", "k": "x"}', "column 'id'"),
    ("surrogate-kept", '{"id": 1, "text": "t", "k": "\\ud800"}', "column 'k': lone surrogate"),
    ("deep", "[" * 10000 + "]" * 10000, "nested too deeply"),
    ("deep-kept", '{"id": 1, "text": "t", "k": ' + "[" * 10000 + "]" * 10000 + "}", "nested too deeply"),
    ("big-int-id", '{"id": 9223372036854775808, "text": "t", "k": "x"}', "does not fit in int64"),
    ("big-int-kept", '{"id": 1, "text": "t", "k": 18446744073709551616}', "column 'k'"),
]


@pytest.mark.parametrize("name,line,reason", HOSTILE_JSON, ids=[h[0] for h in HOSTILE_JSON])
def test_hostile_json_values_are_bad_rows(tmp_path, tiny_model_dir, name, line, reason):
    src = tmp_path / "in.jsonl"
    first = (
        '{"id": "s", "text": "first", "k": "k0"}'
        if name == "surrogate-id"
        else '{"id": 0, "text": "first", "k": "k0"}'
    )
    src.write_text(first + "\n" + line + "\n" + first + "\n")
    args = [src, "--id-column", "id", "--keep-columns", "k"]
    out = tmp_path / "out"
    result = embed_cli(tmp_path, tiny_model_dir, [*args, "-o", out, "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    (reject,) = rejects(out)
    assert reject["line"] == 2 and reason in reject["reason"], reject
    result = embed_cli(tmp_path, tiny_model_dir, [*args, "-o", tmp_path / "fail"])
    assert result.exit_code == 2
    assert f"{src}, line 2: " in one_error_line(result)


@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_parquet_invalid_utf8_is_per_row(tmp_path, embedder, errors):
    src = tmp_path / "in.parquet"
    bad = pa.array([b"good one", b"bad \xff", b"good two"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": bad, "k": bad}), src)
    out, result = job(tmp_path, embedder, [src], keep_columns=("k",), on_error="skip", encoding_errors=errors)
    if errors == "strict":
        assert result.rows == 2
        assert [(r["row"], r["reason"]) for r in rejects(out)] == [(2, "invalid UTF-8")]
    else:
        assert output(out).column("k").to_pylist() == ["good one", "bad \ufffd", "good two"]


def test_parquet_null_text_column_rejects_every_row(tmp_path, embedder):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": pa.array([None, None], pa.null()), "n": [1, 2]}), src)
    out, result = job(tmp_path, embedder, [src], on_error="skip")
    assert result.rows == 0 and result.rejected == 2
    assert {r["reason"] for r in rejects(out)} == {"null text"}


def test_dangling_symlink_and_loop_in_an_input_dir(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello there\n")
    os.symlink(data / "gone.txt", data / "dangling.txt")
    os.symlink(data / "loop.txt", data / "loop.txt")
    # A broken link inside a folder stops the run before anything is written (issue 15, row 15).
    result = embed_cli(tmp_path, tiny_model_dir, [data, "-o", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert "dangling.txt: dangling symlink" in one_error_line(result)
    assert not (tmp_path / "out").exists()
    os.unlink(data / "dangling.txt")
    result = embed_cli(tmp_path, tiny_model_dir, [data, "-o", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert "loop.txt: symlink loop" in one_error_line(result)
    os.symlink(data / "gone.txt", data / "dangling.txt")
    result = embed_cli(tmp_path, tiny_model_dir, [data / "dangling.txt", "-o", tmp_path / "out2"])
    assert result.exit_code == 2
    assert "dangling symlink" in one_error_line(result)


def test_csv_from_a_fifo_streams(tmp_path, embedder):
    src = tmp_path / "in.csv"
    os.mkfifo(src)

    def feed() -> None:
        with open(src, "w", encoding="utf-8") as f:
            f.write('id,text\n007,"hello, fifo"\n008,second\n')

    writer = threading.Thread(target=feed)
    writer.start()
    out, result = job(tmp_path, embedder, [src], id_column="id")
    writer.join()
    assert output(out).column("id").to_pylist() == ["007", "008"]


def test_empty_shard_has_the_job_schema(tmp_path, embedder):
    src = tmp_path / "in.csv"
    src.write_text("id,k,text\n,a,null id\n2,b,good\n,c,null id\n", encoding="utf-8")
    out, _ = job(
        tmp_path, embedder, [src], id_column="id", keep_columns=("k",), on_error="skip", shard_rows=1
    )
    schemas = {pq.read_schema(p).remove_metadata() for p in sorted(out.glob("part-*.parquet"))}
    assert len(schemas) == 1


def test_jsonl_schema_is_the_same_for_every_part_of_a_job_array(tmp_path, embedder):
    src = tmp_path / "in.jsonl"
    values = [1] * 3 + [1.5] + [2] * 16  # the part that reads the tail sees ints only
    src.write_text("".join(json.dumps({"text": f"row {i}", "n": v}) + "\n" for i, v in enumerate(values)))
    out = tmp_path / "out"
    for index in (0, 1):
        cfg = EmbedConfig(
            [str(src)], str(out), keep_columns=("n",), quiet=True, num_shards=2, shard_index=index
        )
        run_job(cfg, embedder=embedder)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 2
    assert [pq.read_schema(p).field("n").type for p in parts] == [pa.float64(), pa.float64()]
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 20


def test_txt_blank_lines_are_not_records(tmp_path, tiny_model_dir):
    """Prose with paragraph breaks embeds as is: blank and whitespace-only lines take no
    number (as in JSON lines), a bad line is still cited by its real line number."""
    src = tmp_path / "prose.txt"
    src.write_bytes(b"first paragraph\n\n  \t\nsecond paragraph\r\n\r\nthird\n\n")
    out = tmp_path / "out"
    result = embed_cli(tmp_path, tiny_model_dir, [str(src), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    table = output(out)
    assert table.column("id").to_pylist() == [0, 1, 2]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"one\n\n\xff\n")
    result = embed_cli(tmp_path, tiny_model_dir, [str(bad), "-o", str(tmp_path / "bad_out")])
    assert result.exit_code == 2
    assert "bad.txt, line 3: invalid UTF-8" in result.stderr


def test_txt_manifest_without_blank_line_rule_is_not_resumed(tmp_path, tiny_model_dir):
    """A text output written when blank lines were records would resume off by one: refused."""
    src = tmp_path / "a.txt"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    out = tmp_path / "out"
    assert embed_cli(tmp_path, tiny_model_dir, [str(src), "-o", str(out)]).exit_code == 0
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    assert data["settings"]["txt_blank_lines"] == "skipped"
    del data["settings"]["txt_blank_lines"]
    path.write_text(json.dumps(data))
    result = embed_cli(tmp_path, tiny_model_dir, [str(src), "-o", str(out), "--append"])
    assert result.exit_code == 3, result.stderr
    assert "txt_blank_lines" in result.stderr
