"""Fuzz (issue 15): byte-level corruption of every input format never escapes the readers
as anything but bad rows or one InputError, and every record is embedded or rejected."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minilm_cli.errors import InputError
from minilm_cli.sources import Columns, check_rows, read_file, resolve_inputs, resolve_schema

ROWS = [{"id": f"{i:03d}", "text": f'row {i}, "quoted" é', "k": i} for i in range(12)]


def _clean(fmt: str) -> bytes:
    if fmt == "csv":
        return (
            "id,text,k\n"
            + "".join(f'{r["id"]},"{r["text"].replace(chr(34), 2 * chr(34))}",{r["k"]}\n' for r in ROWS)
        ).encode()
    if fmt == "tsv":
        return ("id\ttext\tk\n" + "".join(f"{r['id']}\t{r['text']}\t{r['k']}\n" for r in ROWS)).encode()
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    if fmt == "txt":
        return "".join(r["text"] + "\n" for r in ROWS).encode()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS), sink, row_group_size=4)
    return sink.getvalue()


EDIT = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
)


def corrupt(data: bytes, edits: list) -> bytes:
    buf = bytearray(data)
    for kind, at, arg in edits:
        if not buf:
            break
        at %= len(buf)
        if kind == "flip":
            buf[at] ^= 1 << arg
        elif kind == "cut":
            del buf[at:]
        else:
            buf.insert(at, arg)
    return bytes(buf)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["csv", "tsv", "jsonl", "txt", "parquet"]),
    gz=st.booleans(),
    edits=st.lists(EDIT, min_size=1, max_size=4),
    errors=st.sampled_from(["strict", "replace"]),
)
def test_corrupt_inputs_become_bad_rows_or_one_input_error(fmt, gz, edits, errors):
    gz = gz and fmt != "parquet"
    data = corrupt(_clean(fmt), edits)
    columns = Columns("text") if fmt == "txt" else Columns("text", "id", ("k",))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"in.{fmt}{'.gz' if gz else ''}"
        src.write_bytes(gzip.compress(data) if gz else data)
        try:
            files = resolve_inputs([str(src)])
            schema = resolve_schema(files, columns)
            good = rejected = records = 0
            for raw in read_file(files[0], columns, 5, errors, None, schema):
                checked = check_rows(raw, records, errors, "skip")
                records += len(raw)
                good += len(checked.texts)
                rejected += len(checked.rejects)
                assert len(checked.texts) == len(checked.ids) == len(checked.positions)
                assert checked.keep is None or checked.keep.num_rows == len(checked.texts)
                assert all("\n" not in r.reason for r in checked.rejects)
        except InputError as exc:
            assert "\n" not in str(exc)
            return
        assert good + rejected >= records  # every record embedded or rejected (parse rejects on top)
