"""Stdin's format guessed (issue 20 item 11): JSON objects after a BOM, blank lines or
indentation are JSON lines, and a guess is said on stderr. Real pipes (subprocesses): the
guess peeks at stdin, which CliRunner's input cannot offer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow

NOTE = "minilm: note: stdin read as {} (guessed; --input-format to choose)"
ROWS = [{"text": "alpha beta", "k": "first"}, {"text": "gamma delta", "k": "second"}]
JSON_LINES = "".join(json.dumps(r) + "\n" for r in ROWS).encode()


def embed_stdin(model: str, data: bytes, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    env.pop("MINILM_DEBUG", None)
    command = [sys.executable, "-m", "minilm_cli.cli", "embed", "-", "-o", "-", "--model", model]
    command += ["--precision", "fp32", "--device", "cpu", "--threads", "1", *extra]
    return subprocess.run(command, input=data, capture_output=True, cwd=REPO, env=env, timeout=120)


def indented(data: bytes, prefix: bytes) -> bytes:
    """What ``sed 's/^/  /'`` makes of it."""
    return b"".join(prefix + line for line in data.splitlines(keepends=True))


@pytest.fixture(scope="module")
def plain_vectors(tiny_model_dir) -> list:
    """The same texts as a text file's lines, format chosen."""
    proc = embed_stdin(tiny_model_dir, b"alpha beta\ngamma delta\n", "--input-format", "txt")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["embedding"] for line in proc.stdout.decode().splitlines()]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(indented(JSON_LINES, b"  "), id="indented"),
        pytest.param(indented(JSON_LINES, b"\t"), id="tab"),
        pytest.param(b"\xef\xbb\xbf" + indented(JSON_LINES, b"  "), id="bom-then-indent"),
        pytest.param(b"\n\r\n" + JSON_LINES, id="blank-lines-first"),
    ],
)
def test_json_after_whitespace_or_bom_is_json_lines(data, tiny_model_dir, plain_vectors):
    proc = embed_stdin(tiny_model_dir, data, "--keep-columns", "k")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["k"] for r in rows] == ["first", "second"]  # the fields were read: JSON, not text
    assert [r["embedding"] for r in rows] == plain_vectors
    assert proc.stderr.decode().splitlines()[0] == NOTE.format("jsonl")


def test_text_guess_is_said_too(tiny_model_dir):
    proc = embed_stdin(tiny_model_dir, b"  plain text\n{ a brace later\n")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.decode().splitlines()) == 2
    assert proc.stderr.decode().splitlines()[0] == NOTE.format("txt")


@pytest.mark.parametrize("extra", [["--input-format", "jsonl"], ["-q"]])
def test_no_note_when_chosen_or_quiet(extra, tiny_model_dir):
    proc = embed_stdin(tiny_model_dir, indented(JSON_LINES, b"  "), *extra)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.decode().splitlines()) == 2
    assert "note:" not in proc.stderr.decode()
