"""Error lines are short and printable whatever the data they quote (issue 20, item 7)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_line_error, cli, model_args


def test_shown_escapes_and_cuts():
    from minilm_cli.errors import shown

    assert shown("plain é text") == "plain é text"
    assert shown("a\x00b\nc\udcff") == "a\\x00b\\nc\\udcff"
    cut = shown("x" * 500, 80)
    assert cut == "x" * 80 + "…" and cut.isprintable()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_a_parquet_file_read_as_text_fails_with_one_short_line(fmt, tmp_path, tiny_model_dir):
    src = tmp_path / "data.parquet"
    texts = [f"row {i} with some words to fill the pages " * 3 for i in range(300)]
    pq.write_table(pa.table({"text": texts, "n": list(range(300))}), src)
    assert b"\x00" in src.read_bytes()[:4096]  # binary, as the issue saw it
    result = cli(
        ["embed", str(src), "--input-format", fmt, "-o", str(tmp_path / "out"), *model_args(tiny_model_dir)]
    )
    line = assert_one_line_error(result, 2)
    message = line[len("minilm: error: ") :]
    assert message.isprintable(), message
    assert len(line) - len(str(src)) < 200, len(line)  # the path is the only piece not cut
