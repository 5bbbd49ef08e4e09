"""TSV quoting (issue 20, item 6): quotes quote by default, as the tools that write TSV
(pyarrow, pandas, Polars) and read it (the same, DuckDB) do; --tsv-quoting none keeps them."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pa_csv
from helpers import cli, manifest, model_args

import minilm_cli
from minilm_cli.sources import Columns, Split, read_file, resolve_inputs


def _read(path, tsv_quoting: str = "csv", id_column: str | None = "id", split=None) -> list[tuple]:
    (f,) = resolve_inputs([str(path)], tsv_quoting=tsv_quoting)
    if split is not None:
        split = Split(f, "bytes", *split)
    rows = []
    for raw in read_file(f, Columns("text", id_column), 100, split=split):
        ids = raw.ids.to_pylist() if raw.ids is not None else [None] * len(raw)
        rows += list(zip(raw.texts, ids, raw.locations))
    return rows


def test_pyarrow_written_tsv_reads_back_as_written(tmp_path):
    texts = ['a "quoted" word', "tab\tinside", "two\nlines", "plain"]
    ids = ["00123", "007", "1e5", "x"]
    path = tmp_path / "arrow.tsv"
    pa_csv.write_csv(pa.table({"id": ids, "text": texts}), str(path), pa_csv.WriteOptions(delimiter="\t"))
    assert path.read_bytes().startswith(b'"id"\t"text"\n"00123"\t')  # pyarrow quotes every string
    assert _read(path) == [(t, i, n) for n, (t, i) in enumerate(zip(texts, ids), start=1)]


def test_pandas_style_quoting(tmp_path):
    path = tmp_path / "pandas.tsv"
    path.write_bytes(b'"text"\t"id"\n"a ""b"" c"\t"00123"\nplain words\t42\n')
    assert _read(path) == [('a "b" c', "00123", 1), ("plain words", "42", 2)]


def test_none_keeps_stray_quotes_as_text(tmp_path):
    path = tmp_path / "plain.tsv"
    path.write_bytes(b'text\tid\n"half open\t"00123"\n5\'10" tall\t7\n')
    assert _read(path, "none") == [('"half open', '"00123"', 1), ("5'10\" tall", "7", 2)]


def test_quoted_tsv_cut_anywhere_reads_every_record_once(tmp_path):
    path = tmp_path / "cells.tsv"
    path.write_bytes(b'id\ttext\n1\t"a\nb\tc"\n2\t"say ""hi"""\r\n\n3\tz\n')
    whole = _read(path)
    assert whole == [("a\nb\tc", "1", 1), ('say "hi"', "2", 2), ("z", "3", 3)]
    size = path.stat().st_size
    for cut in range(1, size):
        assert _read(path, split=(0, cut, size)) + _read(path, split=(cut, size, size)) == whole, cut


def test_cli_reads_quoted_header_and_records_the_setting(tmp_path, tiny_model_dir):
    path = tmp_path / "in.tsv"
    path.write_bytes(b'"id"\t"text"\n"00123"\t"first ""row"""\n"00124"\t"second\trow"\n')
    out = tmp_path / "out"
    result = cli(["embed", str(path), "-o", str(out), "--id-column", "id", *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert minilm_cli.open_dataset(out).to_table().column("id").to_pylist() == ["00123", "00124"]
    assert manifest(out)["settings"]["tsv_quoting"] == "csv"

    # Quotes as text: the header is '"text"', so 'text' is not found (the old behaviour, on request).
    off = cli(
        [
            "embed",
            str(path),
            "-o",
            str(tmp_path / "off"),
            "--tsv-quoting",
            "none",
            *model_args(tiny_model_dir),
        ]
    )
    assert off.exit_code == 2, off.output
    assert "text column 'text' not found" in off.stderr

    # A manifest without the key ran with quotes as text: resuming it needs --tsv-quoting none.
    doc_path = out / "manifest.json"
    doc = json.loads(doc_path.read_text())
    del doc["settings"]["tsv_quoting"]
    doc_path.write_text(json.dumps(doc))
    again = cli(
        ["embed", str(path), "-o", str(out), "--resume", "--id-column", "id", *model_args(tiny_model_dir)]
    )
    assert again.exit_code == 3, again.output
    assert "tsv_quoting" in again.stderr


def test_csv_inputs_record_no_tsv_setting(tmp_path, tiny_model_dir):
    path = tmp_path / "in.csv"
    path.write_text("text\nhello\n")
    out = tmp_path / "out"
    result = cli(["embed", str(path), "-o", str(out), *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert "tsv_quoting" not in manifest(out)["settings"]


def _rejects(path, tsv_quoting: str = "csv") -> list[tuple[int, str]]:
    (f,) = resolve_inputs([str(path)], tsv_quoting=tsv_quoting)
    blocks = read_file(f, Columns("text", "id"), 100)
    return [(r.location, r.reason) for raw in blocks for r in raw.parse_rejects]


def test_a_quote_never_closed_is_a_bad_row_not_the_rest_of_the_file(tmp_path, tiny_model_dir):
    """A TSV written without quoting may hold a cell that is a lone quote: read with quoting on,
    the csv module takes it as a quoted cell running to the end of the file, and the rows after
    it vanished into that cell (3 rows in, 1 row out, exit 0). It is now a bad row, with the way out."""
    path = tmp_path / "raw.tsv"
    path.write_bytes(b'id\ttext\tnote\n1\thello\t"\n2\tworld\tx\n3\tagain\ty\n')
    assert _read(path) == []
    ((row, reason),) = _rejects(path)
    assert row == 1 and reason == (
        "malformed TSV: a quoted field is never closed: it runs to the end of the file"
        "; --tsv-quoting none reads quotes as text"
    )
    result = cli(["embed", str(path), "-o", str(tmp_path / "out"), *model_args(tiny_model_dir)])
    assert result.exit_code != 0 and "row 1: malformed TSV: a quoted field is never closed" in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert [n for _, _, n in _read(path, "none")] == [1, 2, 3]


def test_unclosed_quotes_in_csv_with_and_without_a_final_newline(tmp_path):
    for data in (b'id,text\n1,one\n2,"open\n3,three', b'id,text\n1,one\n2,"open\n3,three\n'):
        path = tmp_path / "open.csv"
        path.write_bytes(data)
        assert _read(path) == [("one", "1", 1)]
        assert [r for r, _ in _rejects(path)] == [2]


def test_a_closed_quote_at_the_very_end_is_read_as_written(tmp_path):
    """No false alarm: quoted last cells, with and without a newline inside or after them."""
    cases = {
        b'id,text\n1,"ends ""quoted"""': 'ends "quoted"',
        b'id,text\n1,"two\nlines\n"\n': "two\nlines\n",
        b'id,text\n1,"x"\r\n': "x",
        b'id,text\n1,plain"quote': 'plain"quote',
    }
    for data, text in cases.items():
        path = tmp_path / "closed.csv"
        path.write_bytes(data)
        assert _read(path) == [(text, "1", 1)], data
        assert _rejects(path) == []
