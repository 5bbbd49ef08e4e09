"""Byte-level fuzz of every input format (issue 15, "go further than this list").

A small valid file of each format (csv, tsv, jsonl, txt, parquet; the text formats plain and
gzip) is corrupted at the byte level (bit flips, truncation, overwritten or inserted bytes,
or wholly random bytes; for gzip, before or after compression) and embedded with
``--on-error skip`` or ``fail``. Whatever the bytes, the run must keep the four invariants:

(a) exit 0, or 2 (bad input): never 1 ("unexpected ..."), never a crash;
(b) a failure is exactly one ``minilm: error:`` line on stderr, no traceback;
(c) on exit 0, rows out + rejects == the records the reader saw, and the output verifies;
(d) files beside OUTPUT are untouched.

Examples are bounded and derandomized, so CI runs the same cases every time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from minilm_cli.cli import main

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
RECORDS = 8
CLEAN_ENV = {"MINILM_DEBUG": None, "RANK": None, "WORLD_SIZE": None, "JOB_COMPLETION_INDEX": None}
CLEAN_ENV.update({"SLURM_ARRAY_TASK_ID": None, "SLURM_ARRAY_TASK_COUNT": None, "MINILM_NUM_SHARDS": None})
COMBOS = [
    ("csv", ""),
    ("csv", ".gz"),
    ("tsv", ""),
    ("tsv", ".gz"),
    ("jsonl", ""),
    ("jsonl", ".gz"),
    ("txt", ""),
    ("txt", ".gz"),
    ("parquet", ""),  # .parquet.gz is refused by design (Parquet compresses inside the file)
]


def text(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]}, row {i}"


def valid_content(fmt: str) -> bytes:
    """A small valid file: RECORDS records with an id and a text."""
    if fmt == "csv":
        return ("id,text\n" + "".join(f'{i},"{text(i)}"\n' for i in range(RECORDS))).encode()
    if fmt == "tsv":
        return ("id\ttext\n" + "".join(f"{i}\t{text(i)}\n" for i in range(RECORDS))).encode()
    if fmt == "jsonl":
        return "".join(json.dumps({"id": i, "text": text(i)}) + "\n" for i in range(RECORDS)).encode()
    if fmt == "txt":
        return "".join(text(i) + "\n" for i in range(RECORDS)).encode()
    sink = io.BytesIO()
    table = pa.table({"id": list(range(RECORDS)), "text": [text(i) for i in range(RECORDS)]})
    pq.write_table(table, sink, row_group_size=3)
    return sink.getvalue()


NASTY = st.sampled_from(
    [b"\n", b"\r", b"\r\n", b'"', b",", b"\t", b"{", b"}", b"\x00", b"\xff", b"\xc3", b"\\"]
)
SOME_BYTES = st.lists(st.one_of(st.binary(min_size=1, max_size=4), NASTY), min_size=1, max_size=6).map(
    b"".join
)


@st.composite
def corruption(draw: st.DrawFn, size: int) -> tuple:
    kind = draw(st.sampled_from(["flip", "truncate", "overwrite", "insert", "delete", "random"]))
    if kind == "flip":
        return kind, draw(
            st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 7)), min_size=1, max_size=8)
        )
    if kind == "truncate":
        return kind, draw(st.integers(0, size - 1))
    if kind in ("overwrite", "insert"):
        return kind, (draw(st.integers(0, size)), draw(SOME_BYTES))
    if kind == "delete":
        start = draw(st.integers(0, size - 1))
        return kind, (start, draw(st.integers(start + 1, min(size, start + 32))))
    return kind, draw(st.binary(max_size=300))


def corrupt(data: bytes, how: tuple) -> bytes:
    kind, arg = how
    if kind == "flip":
        buf = bytearray(data)
        for pos, bit in arg:
            buf[pos % len(buf)] ^= 1 << bit
        return bytes(buf)
    if kind == "truncate":
        return data[:arg]
    if kind == "overwrite":
        pos, junk = arg
        return data[:pos] + junk + data[pos + len(junk) :]
    if kind == "insert":
        pos, junk = arg
        return data[:pos] + junk + data[pos:]
    if kind == "delete":
        start, end = arg
        return data[:start] + data[end:]
    return arg


def invoke(args: list):
    return CliRunner().invoke(main, [str(a) for a in args], env=CLEAN_ENV)


def reader_records(src: Path) -> int:
    """What the tool's own reader recognises in the file: records, plus lines it could not
    parse (those are rejects too). A reader that raises here has no business exiting 0."""
    from minilm_cli.sources import Columns, read_file, resolve_inputs

    (f,) = resolve_inputs([str(src)])
    return sum(len(raw) + len(raw.parse_rejects) for raw in read_file(f, Columns(), 4096, "strict"))


def rows_out(out: Path) -> int:
    return sum(pq.read_table(p).num_rows for p in sorted(out.glob("part-*.parquet")))


def rejects(out: Path) -> list[dict]:
    found: list[dict] = []
    for p in sorted((out / "rejects").glob("*.jsonl")):
        found += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
    return found


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_run(src: Path, on_error: str, model: str) -> None:
    """Run embed on ``src`` and assert the four invariants."""
    root = src.parent
    bystander = root / "part-00000-3f2a9c.snappy.parquet"
    bystander.write_bytes(b"PAR1 someone else's file PAR1")
    before = sha(bystander)
    out = root / "out"
    model_args = ["--model", model, "--device", "cpu", "--precision", "fp32", "--threads", "1"]
    result = invoke(
        ["embed", src, "-o", out, "--on-error", on_error, "--chunk-size", 3, "--shard-rows", 5, "-q"]
        + model_args
    )
    described = f"exit {result.exit_code}, stderr {result.stderr!r}, exception {result.exception!r}"
    assert result.exit_code in (0, 2), described  # (a)
    assert result.exception is None or isinstance(result.exception, SystemExit), described
    assert "Traceback" not in result.output and "Exception ignored" not in result.output, described
    assert result.stdout == "", described
    if result.exit_code:  # (b)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("minilm: error: "), described
    else:  # (c)
        got = rejects(out)
        assert rows_out(out) + len(got) == reader_records(src), (rows_out(out), got)
        if on_error == "fail":
            assert got == []
        doc = json.loads((out / "manifest.json").read_text())
        assert doc["totals"]["rows"] == rows_out(out)
        assert doc["totals"]["rejected"] == len(got)
        verified = invoke(["verify", out])
        assert verified.exit_code == 0, verified.output
    assert sha(bystander) == before  # (d)


@pytest.mark.parametrize("fmt, compression", COMBOS, ids=[f"{f}{c}" for f, c in COMBOS])
@settings(
    max_examples=10,  # per format and compression: 90 runs, 20 per text format
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays stable
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the drawn corruption is printed as is
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), on_error=st.sampled_from(["skip", "fail"]), before_compression=st.booleans())
def test_fuzz_corrupted_input(fmt, compression, data, on_error, before_compression, tiny_model_dir):
    content = valid_content(fmt)
    if compression and before_compression:  # a damaged file, compressed intact
        payload = gzip.compress(corrupt(content, data.draw(corruption(len(content)))), mtime=0)
    else:
        stored = gzip.compress(content, mtime=0) if compression else content
        payload = corrupt(stored, data.draw(corruption(len(stored))))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"in.{fmt}{compression}"
        src.write_bytes(payload)
        check_run(src, on_error, tiny_model_dir)


@pytest.mark.parametrize("fmt, compression", COMBOS, ids=[f"{f}{c}" for f, c in COMBOS])
def test_uncorrupted_base_file_embeds_every_record(fmt, compression, tiny_model_dir):
    """The fuzz's starting point is valid: all RECORDS rows out, nothing rejected."""
    content = valid_content(fmt)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"in.{fmt}{compression}"
        src.write_bytes(gzip.compress(content, mtime=0) if compression else content)
        check_run(src, "fail", tiny_model_dir)
        assert rows_out(Path(tmp) / "out") == RECORDS
        assert reader_records(src) == RECORDS
