"""Job arrays over an uncompressed CSV whose quoted cells hold newlines (issue 20, item 1):
every part reads whole records from the true record starts, numbered as a whole-file read
numbers them; no fragment of a cell ever becomes a row."""

from __future__ import annotations

import csv
import io
import json
import random

import numpy as np
import pytest
from helpers import cli, model_args

import minilm_cli
from minilm_cli.sources import Columns, Split, read_file, resolve_inputs

PIECES = ["permission is", 'hereby "granted"', "free, of charge", "\n      source", "\r\nOR IMPLIED", "é"]
ROWS = 120
BAD_ROW = 90  # a row with two fields, after many multi-line cells: its line number is far larger


def _cell(rng: random.Random) -> str:
    return " ".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6)))


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def write_licenses(path, bad_row: int | None = None, seed: int = 3) -> list[tuple[str, str, str]]:
    """A CSV with CRLF line ends, multi-line cells, doubled quotes and a stray quote inside an
    unquoted field; returns (id, name, text) of its rows as written."""
    rng = random.Random(seed)
    rows = []
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("id,name,text,n\r\n")
        for i in range(1, ROWS + 1):
            if i == bad_row:
                f.write(f"id{i},{_quote(_cell(rng))}\r\n")
                continue
            name = f"5'10\" tall {i}" if i % 7 == 0 else _cell(rng)  # unquoted: the quote is text
            text = _cell(rng)
            shown_name = name if i % 7 == 0 else _quote(name)
            f.write(f"id{i},{shown_name},{_quote(text)},{i}\r\n")
            rows.append((f"id{i}", name, text))
    return rows


@pytest.fixture(scope="module")
def licenses(tmp_path_factory):
    path = tmp_path_factory.mktemp("licenses") / "licenses.csv"
    return path, write_licenses(path)


def _args(tiny_model_dir: str, *extra: str) -> list[str]:
    return [
        "--id-column",
        "id",
        "--keep-columns",
        "name",
        "--shard-rows",
        "25",
        "--chunk-size",
        "10",
        *model_args(tiny_model_dir),
        "-q",
        *extra,
    ]


def _read(out) -> tuple[list, list, np.ndarray]:
    table = minilm_cli.open_dataset(out).to_table()
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return table.column("id").to_pylist(), table.column("name").to_pylist(), vectors


@pytest.fixture(scope="module")
def unsharded(licenses, tiny_model_dir, tmp_path_factory):
    path, rows = licenses
    out = tmp_path_factory.mktemp("whole") / "out"
    result = cli(["embed", str(path), "-o", str(out), *_args(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    ids, names, vectors = _read(out)
    assert ids == [r[0] for r in rows] and names == [r[1] for r in rows]  # as written
    return ids, names, vectors


def _merge_and_verify(out) -> None:
    merged = cli(["merge-manifests", str(out)])
    assert merged.exit_code == 0, merged.output
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output


@pytest.mark.parametrize("n", [2, 3])
def test_parts_equal_an_unsharded_run(n, licenses, unsharded, tiny_model_dir, tmp_path):
    path, _ = licenses
    out = tmp_path / "out"
    for index in range(n):
        args = ["--num-shards", str(n), "--shard-index", str(index)]
        result = cli(["embed", str(path), "-o", str(out), *_args(tiny_model_dir, *args)])
        assert result.exit_code == 0, result.output
    _merge_and_verify(out)
    ids, names, vectors = _read(out)
    assert ids == unsharded[0]
    assert names == unsharded[1]
    np.testing.assert_allclose(vectors, unsharded[2], atol=1e-6)


def test_cpu_workers_equal_an_unsharded_run(licenses, unsharded, tiny_model_dir, tmp_path):
    path, _ = licenses
    out = tmp_path / "out"
    args = _args(tiny_model_dir)
    args[args.index("--device") + 1] = "cpu,cpu"
    result = cli(["embed", str(path), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output
    ids, names, vectors = _read(out)
    assert ids == unsharded[0] and names == unsharded[1]
    np.testing.assert_allclose(vectors, unsharded[2], atol=1e-6)


@pytest.mark.parametrize("n", [2, 3])
def test_a_bad_row_is_cited_by_its_real_row_number(n, tiny_model_dir, tmp_path):
    path = tmp_path / "licenses.csv"
    rows = write_licenses(path, bad_row=BAD_ROW)
    lines_before = path.read_bytes().split(b"id90,")[0].count(b"\n")
    assert lines_before > BAD_ROW + 20  # the row number and the line number differ widely
    out = tmp_path / "out"
    failed = []
    for index in range(n):
        args = ["--num-shards", str(n), "--shard-index", str(index)]
        result = cli(["embed", str(path), "-o", str(out), *_args(tiny_model_dir, *args)])
        if result.exit_code:
            failed.append(result.stderr.strip())
    assert failed == [
        f"minilm: error: bad row: {path}, row {BAD_ROW}: expected 4 columns, got 2 "
        "(use --on-error skip to set it aside)"
    ]
    skipped = tmp_path / "skipped"
    for index in range(n):
        args = ["--num-shards", str(n), "--shard-index", str(index), "--on-error", "skip"]
        result = cli(["embed", str(path), "-o", str(skipped), *_args(tiny_model_dir, *args)])
        assert result.exit_code == 0, result.output
    _merge_and_verify(skipped)
    ids, names, _ = _read(skipped)
    assert ids == [r[0] for r in rows] and names == [r[1] for r in rows]
    rejects = [
        json.loads(line)
        for p in sorted(skipped.glob("rejects/*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    assert [(r["row"], r["reason"]) for r in rejects] == [(BAD_ROW, "expected 4 columns, got 2")]


def _records(path, split: Split | None = None) -> list[tuple[str, int]]:
    (f,) = resolve_inputs([str(path)])
    if split is not None:
        split = Split(f, "bytes", split.start, split.end, split.extent)
    blocks = read_file(f, Columns("text", "id"), 1000, split=split)
    return [(t, n) for raw in blocks for t, n in zip(raw.texts, raw.locations)]


SMALL = {
    "cells": b'\xef\xbb\xbfid,text\r\n1,"a\r\nb"\r\n\r\n2,"say ""hi""\nthere"\n3,x"y\r4,"q,""\n"\n5,"",\n6,last',  # noqa: E501
    # row 2 opens a quote it never closes: a reject (the rest of the file would be its cell)
    "unterminated": b'id,text\n1,one\n2,"open\n3,three\n4,four\n',
}


@pytest.mark.parametrize("name,rows", [("cells", [1, 2, 3, 4, 6]), ("unterminated", [1])])
def test_every_cut_point_tiles_the_records(name, rows, tmp_path):
    """Two byte ranges cut at every byte (inside quoted cells, between \\r and \\n, inside a
    doubled quote) read exactly the whole file's records with its row numbers."""
    path = tmp_path / "small.csv"
    path.write_bytes(SMALL[name])
    whole = _records(path)
    assert [n for _, n in whole] == rows  # rejects (cells: row 5, 3 fields; unterminated: row 2) hold no text
    size = path.stat().st_size
    for cut in range(size + 1):
        parts = [Split(None, "bytes", 0, cut, size), Split(None, "bytes", cut, size, size)]  # type: ignore[arg-type]
        assert _records(path, parts[0]) + _records(path, parts[1]) == whole, cut


def _oracle(data: bytes, delimiter: str) -> list[tuple[int, bool]]:
    """(first byte, blank?) of every record as Python's csv module splits the file."""
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    skip = len(data) - len(body)
    stream = io.StringIO(body.decode("latin-1"), newline="")  # one char per byte
    consumed = [0]

    def lines():
        for line in stream:
            consumed[0] += len(line)
            yield line

    starts, position = [], 0
    for record in csv.reader(lines(), delimiter=delimiter):
        starts.append((skip + position if starts else 0, record == []))
        position = consumed[0]
    return starts


def test_record_starts_agree_with_the_csv_module(tmp_path, monkeypatch):
    import minilm_cli.sources.boundaries as boundaries
    from minilm_cli.sources.boundaries import record_starts

    rng = random.Random(11)
    alphabet = [b'"', b'""', b",", b"\t", b"\n", b"\r", b"\r\n", b"a", b" ", b"\xc3\xa9"]
    path = tmp_path / "f.csv"
    for trial in range(1500):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        data = (b"\xef\xbb\xbf" if trial % 9 == 0 else b"") + data
        path.write_bytes(data)
        delimiter = rng.choice([",", "\t"])
        monkeypatch.setattr(boundaries, "READ_BLOCK_BYTES", rng.choice([1, 2, 3, 7, 1 << 20]))
        starts = _oracle(data, delimiter)
        targets = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, 5)))
        want = []
        for target in targets:
            later = [(i, s) for i, (s, _) in enumerate(starts) if s >= target]
            at, offset = later[0] if later else (len(starts), len(data))
            want.append((offset, sum(not blank for _, blank in starts[:at])))
        got = record_starts(str(path), targets, delimiter, True, len(data))
        assert [(s.offset, s.rows_before) for s in got] == want, (data, delimiter, targets)
