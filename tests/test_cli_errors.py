"""Failures: the documented exit code, one `minilm: error:` line on stderr, never a traceback."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
COLUMNS = "synset, word, pos, text"


def invoke(args: list, input: str | bytes | None = None, env: dict | None = None):
    from click.testing import CliRunner

    from minilm_cli.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=input, env=env)


def assert_error(result, code: int, *fragments: str) -> str:
    """Exit ``code``; stderr is exactly one line starting 'minilm: error:'; no traceback."""
    assert result.exit_code == code, f"exit {result.exit_code}, stderr: {result.stderr!r}"
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"not one line: {result.stderr!r}"
    line = lines[0]
    assert line.startswith("minilm: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert result.stdout == ""
    return line


def parts(out: Path) -> list[str]:
    """The shard files a reader sees (not the hidden .minilm-keys/ beside them)."""
    return sorted(
        p.name for p in out.rglob("part-*") if not any(x.startswith(".") for x in p.relative_to(out).parts)
    )


# ---------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "name", ["glosses.csv", "glosses.tsv", "glosses.jsonl", "glosses.parquet", "glosses.jsonl.gz"]
)
def test_missing_text_column_names_the_columns(name: str, tmp_path: Path, tiny_model_dir: str) -> None:
    result = invoke(
        ["embed", SAMPLE / name, "-o", tmp_path / "out", "--model", tiny_model_dir, "--text-column", "body"]
    )
    line = assert_error(result, 2, "'body'", name, COLUMNS)
    assert "text column" in line
    assert parts(tmp_path / "out") == []


@pytest.mark.parametrize("flag", ["--id-column", "--keep-columns"])
@pytest.mark.parametrize("name", ["glosses.csv", "glosses.parquet"])
def test_missing_id_or_kept_column(flag: str, name: str, tmp_path: Path, tiny_model_dir: str) -> None:
    result = invoke(
        ["embed", SAMPLE / name, "-o", tmp_path / "out", "--model", tiny_model_dir, flag, "nosuch"]
    )
    assert_error(result, 2, "'nosuch'", COLUMNS)


@pytest.mark.parametrize("flag", ["--id-column", "--keep-columns"])
def test_columns_asked_of_a_text_file_are_an_error(flag: str, tmp_path: Path, tiny_model_dir: str) -> None:
    result = invoke(
        ["embed", SAMPLE / "glosses.txt", "-o", tmp_path / "out", "--model", tiny_model_dir, flag, "word"]
    )
    assert_error(result, 2, "'word'")


def test_missing_input_file(tmp_path: Path, tiny_model_dir: str) -> None:
    missing = tmp_path / "nothere.csv"
    result = invoke(["embed", missing, "-o", tmp_path / "out", "--model", tiny_model_dir])
    assert_error(result, 2, str(missing), "not found")
    assert not (tmp_path / "out").exists()  # nothing is created for a run that cannot start


def test_one_missing_among_several_inputs(tmp_path: Path, tiny_model_dir: str) -> None:
    missing = tmp_path / "b.jsonl"
    result = invoke(
        ["embed", SAMPLE / "glosses.csv", missing, "-o", tmp_path / "out", "--model", tiny_model_dir]
    )
    assert_error(result, 2, str(missing))


def test_glob_matching_nothing(tmp_path: Path, tiny_model_dir: str) -> None:
    result = invoke(["embed", str(tmp_path / "*.jsonl"), "-o", tmp_path / "out", "--model", tiny_model_dir])
    assert_error(result, 2, "no files match")


def test_directory_without_inputs(tmp_path: Path, tiny_model_dir: str) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.md").write_text("not an input")
    result = invoke(["embed", folder, "-o", tmp_path / "out", "--model", tiny_model_dir])
    assert_error(result, 2, str(folder))


@pytest.mark.parametrize("name", ["data.xml", "data", "data.json"])
def test_unknown_extension(name: str, tmp_path: Path, tiny_model_dir: str) -> None:
    src = tmp_path / name
    src.write_text("<a>text</a>\n")
    result = invoke(["embed", src, "-o", tmp_path / "out", "--model", tiny_model_dir])
    assert_error(result, 2, "cannot tell the format", "--input-format")


def test_unknown_extension_is_fine_with_input_format(tmp_path: Path, tiny_model_dir: str) -> None:
    src = tmp_path / "data.xml"
    src.write_text("one line\nanother line\n")
    result = invoke(["embed", src, "-o", "-", "--model", tiny_model_dir, "--input-format", "txt"])
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_unknown_input_format_flag(tmp_path: Path, tiny_model_dir: str) -> None:
    # Rejected by click before the command runs: a usage error (exit 2), not a crash.
    result = invoke(["embed", SAMPLE / "glosses.csv", "-o", tmp_path / "out", "--input-format", "xml"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "--input-format" in result.stderr and "xml" in result.stderr
    assert not (tmp_path / "out").exists()


def test_compressed_parquet_is_refused(tmp_path: Path, tiny_model_dir: str) -> None:
    src = tmp_path / "glosses.parquet.gz"
    src.write_bytes(gzip.compress((SAMPLE / "glosses.parquet").read_bytes()))
    result = invoke(["embed", src, "-o", tmp_path / "out", "--model", tiny_model_dir])
    assert_error(result, 2, str(src))


@pytest.mark.parametrize(
    "name, payload, reason",
    [
        ("bad.parquet", b"this is not parquet at all", "not a readable Parquet file"),
        ("bad.jsonl.gz", b"not gzip", "not valid gzip data"),
        ("bad.csv.bz2", b"not bz2 either", "not valid bz2 data"),
        ("trunc.jsonl.gz", None, "the gzip stream ends early"),
    ],
)
def test_corrupt_input_file(
    name: str, payload: bytes | None, reason: str, tmp_path: Path, tiny_model_dir: str
) -> None:
    # our words say what is wrong; the library's own words may follow only as a detail
    src = tmp_path / name
    if payload is None:  # a gzip stream cut in half
        lines = "".join(json.dumps({"text": f"row {i} {os.urandom(8).hex()}"}) + "\n" for i in range(3000))
        data = gzip.compress(lines.encode())
        payload = data[: len(data) // 2]
    src.write_bytes(payload)
    result = invoke(["embed", src, "-o", tmp_path / "out", "--model", tiny_model_dir])
    assert_error(result, 2, str(src), reason)


def test_stdin_cannot_be_combined_with_files(tmp_path: Path, tiny_model_dir: str) -> None:
    result = invoke(["embed", "-", SAMPLE / "glosses.txt", "-o", "-", "--model", tiny_model_dir], input="x\n")
    assert_error(result, 2, "stdin")


def test_parquet_from_stdin_is_refused(tiny_model_dir: str) -> None:
    data = (SAMPLE / "glosses.parquet").read_bytes()
    result = invoke(
        ["embed", "-", "-o", "-", "--model", tiny_model_dir, "--input-format", "parquet"], input=data
    )
    assert_error(result, 2, "Parquet")


def test_text_column_of_wrong_type(tmp_path: Path, tiny_model_dir: str) -> None:
    src = tmp_path / "nums.parquet"
    pq.write_table(pa.table({"text": pa.array([1, 2, 3], pa.int64())}), src)
    result = invoke(["embed", src, "-o", tmp_path / "out", "--model", tiny_model_dir])
    assert_error(result, 2, "'text'", "int64")


def test_id_type_changing_between_inputs(tmp_path: Path, tiny_model_dir: str) -> None:
    # One schema per job, from the first input (issue 8): a later value that does not fit
    # it is a bad row naming the column and both types, not a crash mid-run.
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text(json.dumps({"doc": 1, "text": "first text"}) + "\n", encoding="utf-8")
    b.write_text(json.dumps({"doc": "x", "text": "second text"}) + "\n", encoding="utf-8")
    result = invoke(["embed", a, b, "-o", tmp_path / "out", "--model", tiny_model_dir, "--id-column", "doc"])
    assert_error(result, 2, f"bad row: {b}, line 1: column 'doc'", "string", "int64")


def test_csv_id_then_jsonl_string_id_is_one_string_column(tmp_path: Path, tiny_model_dir: str) -> None:
    a = tmp_path / "a.csv"
    b = tmp_path / "b.jsonl"
    a.write_text("doc,text\n1,first text\n", encoding="utf-8")
    b.write_text(json.dumps({"doc": "x", "text": "second text"}) + "\n", encoding="utf-8")
    result = invoke(["embed", a, b, "-o", "-", "--model", tiny_model_dir, "--id-column", "doc"])
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["1", "x"]


# ---------------------------------------------------------------------------- bad rows (--on-error fail)


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, content, where, reason",
    [
        ("e.csv", "id,text\n1,alpha\n2,beta\n3,\n4,delta\n", "row 3", "empty text"),
        ("w.csv", 'id,text\n1,alpha\n2,"   "\n', "row 2", "empty text"),
        ("e.tsv", "id\ttext\n1\talpha\n2\t\n", "row 2", "empty text"),
        ("n.jsonl", '{"text": "alpha"}\n{"text": null}\n{"text": "gamma"}\n', "line 2", "null text"),
        ("m.jsonl", '{"text": "alpha"}\n{"text": "beta"}\n{"other": 1}\n', "line 3", "null text"),
        ("e.jsonl", '{"text": "alpha"}\n\n{"text": ""}\n', "line 3", "empty text"),
        ("j.jsonl", '{"text": "alpha"}\n{"text": "beta"}\n{"text": "gam\n', "line 3", "invalid JSON"),
        ("k.jsonl", '{"text": "alpha"}\n["a list"]\n', "line 2", "not an object"),
        ("t.jsonl", '{"text": "alpha"}\n{"text": 42}\n', "line 2", "not a string"),
        ("b.txt", "alpha\nbeta\n\ngamma\n\u00a0\nepsilon\n", "line 5", "empty text"),  # NBSP only
        ("u.txt", b"alpha\nbeta\n\xff\xfe bad bytes\n", "line 3", "invalid UTF-8"),
    ],
)
def test_bad_row_fails_by_default(
    name: str, content: str | bytes, where: str, reason: str, tmp_path: Path, tiny_model_dir: str
) -> None:
    src = _write(tmp_path / name, content)
    out = tmp_path / "out"
    result = invoke(["embed", src, "-o", out, "--model", tiny_model_dir])
    line = assert_error(result, 2, f"{src}, {where}", reason)
    assert "--on-error skip" in line
    assert parts(out) == []  # nothing half-done is published


def test_bad_row_in_parquet_names_the_row(tmp_path: Path, tiny_model_dir: str) -> None:
    src = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c", "d", None, "f"]}), src)
    result = invoke(["embed", src, "-o", tmp_path / "out", "--model", tiny_model_dir])
    assert_error(result, 2, f"{src}, row 5", "null text")


def test_bad_row_in_second_input_names_that_file(tmp_path: Path, tiny_model_dir: str) -> None:
    good = _write(tmp_path / "a.txt", "alpha\nbeta\n")
    bad = _write(tmp_path / "b.txt", b"gamma\n\xff\n")
    result = invoke(["embed", good, bad, "-o", "-", "--model", tiny_model_dir])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("minilm: error: ") and "\n" not in line
    assert f"{bad}, line 2" in line


def test_null_id_is_a_bad_row(tmp_path: Path, tiny_model_dir: str) -> None:
    src = _write(tmp_path / "ids.jsonl", '{"doc": "a", "text": "alpha"}\n{"text": "beta"}\n')
    result = invoke(["embed", src, "-o", tmp_path / "out", "--model", tiny_model_dir, "--id-column", "doc"])
    assert_error(result, 2, f"{src}, line 2", "null id")


def test_bad_row_from_stdin(tiny_model_dir: str) -> None:
    result = invoke(["embed", "-", "-o", "-", "--model", tiny_model_dir], input="alpha\n\u00a0\ngamma\n")
    assert result.exit_code == 2
    # the guessed format is noted first (it explains many a bad row), then the one error line
    note, error = result.stderr.splitlines()
    assert note == "minilm: note: stdin read as txt (guessed; --input-format to choose)"
    assert error.startswith("minilm: error: bad row: -, line 2: empty text")


def test_skip_sets_bad_rows_aside(tmp_path: Path, tiny_model_dir: str) -> None:
    """The contrast: --on-error skip embeds the rest and records the reject with its place."""
    src = _write(tmp_path / "n.jsonl", '{"text": "alpha"}\n{"text": null}\n{"text": "gamma"}\n')
    out = tmp_path / "out"
    result = invoke(["embed", src, "-o", out, "--model", tiny_model_dir, "--on-error", "skip"])
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column("id").to_pylist() == [0, 2]
    rejects = [json.loads(x) for x in (out / "rejects" / "part-00000.jsonl").read_text().splitlines()]
    assert rejects == [
        {"id": 1, "source": str(src), "line": 2, "reason": "null text", "raw": '{"text": null}'}
    ]
    assert json.loads((out / "manifest.json").read_text())["totals"]["rejected"] == 1


# ---------------------------------------------------------------------------- the model and the device


def test_model_folder_without_weights(tmp_path: Path, tiny_model_dir: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    result = invoke(["embed", SAMPLE / "glosses.txt", "-o", tmp_path / "out", "--model", folder])
    assert_error(result, 2, str(folder), "config.json")


def test_model_folder_with_corrupt_weights(tmp_path: Path, tiny_model_dir: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    result = invoke(["embed", SAMPLE / "glosses.txt", "-o", tmp_path / "out", "--model", folder])
    assert_error(result, 2, "cannot load model", str(folder))


def test_model_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    result = invoke(["embed", SAMPLE / "glosses.txt", "-o", tmp_path / "out", "--model", path])
    assert_error(result, 2, str(path))


def test_unreadable_model_folder_via_env(tmp_path: Path) -> None:
    folder = tmp_path / "nomodel"
    folder.mkdir()
    result = invoke(
        ["embed", SAMPLE / "glosses.txt", "-o", tmp_path / "out"], env={"MINILM_MODEL": str(folder)}
    )
    assert_error(result, 2, str(folder))


@pytest.mark.parametrize("device", ["tpu", "gpu0", "cuda:banana"])
def test_bad_device(device: str, tmp_path: Path, tiny_model_dir: str) -> None:
    result = invoke(
        [
            "embed",
            SAMPLE / "glosses.txt",
            "-o",
            tmp_path / "out",
            "--model",
            tiny_model_dir,
            "--device",
            device,
        ]
    )
    assert_error(result, 2, device)


def test_cuda_when_none_is_visible(tmp_path: Path, tiny_model_dir: str) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    result = invoke(
        [
            "embed",
            SAMPLE / "glosses.txt",
            "-o",
            tmp_path / "out",
            "--model",
            tiny_model_dir,
            "--device",
            "cuda",
        ]
    )
    assert_error(result, 2, "cuda")


def test_max_length_beyond_the_model(tmp_path: Path, tiny_model_dir: str) -> None:
    result = invoke(
        ["embed", SAMPLE / "glosses.txt", "-o", "-", "--model", tiny_model_dir, "--max-length", "4096"]
    )
    assert_error(result, 2, "--max-length 4096", "128")


# ---------------------------------------------------------------------------- OUTPUT


@pytest.fixture
def finished(tmp_path: Path, tiny_model_dir: str) -> Path:
    out = tmp_path / "out"
    result = invoke(
        ["embed", SAMPLE / "glosses.parquet", "-o", out, "--model", tiny_model_dir, "--shard-rows", 100]
    )
    assert result.exit_code == 0, result.stderr
    assert parts(out) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    return out


def test_existing_output_needs_overwrite(finished: Path, tiny_model_dir: str) -> None:
    def snapshot() -> dict:  # the lock file is ours to rewrite; the rest must stay as it was
        return {p: p.read_bytes() for p in finished.rglob("*") if p.is_file() and not p.name.startswith(".")}

    before = snapshot()
    result = invoke(["embed", SAMPLE / "glosses.txt", "-o", finished, "--model", tiny_model_dir])
    assert_error(result, 3, str(finished), "--overwrite", "--resume")
    assert snapshot() == before


def test_overwrite_replaces_only_our_files(finished: Path, tiny_model_dir: str) -> None:
    foreign = finished / "notes.txt"
    foreign.write_text("mine, not minilm's")
    result = invoke(
        [
            "embed",
            SAMPLE / "glosses.txt",
            "-o",
            finished,
            "--model",
            tiny_model_dir,
            "--overwrite",
            "--format",
            "npy",
        ]
    )
    assert result.exit_code == 0, result.stderr
    assert not list(finished.glob("part-*.parquet"))  # the old layout's shards are gone
    assert parts(finished) == ["part-00000.npy", "part-00000.parquet"]
    assert (finished / "embeddings" / "part-00000.npy").exists()
    assert foreign.read_text() == "mine, not minilm's"
    manifest = json.loads((finished / "manifest.json").read_text())
    assert manifest["settings"]["format"] == "npy"
    assert manifest["totals"]["rows"] == 300
    assert manifest["inputs"][0]["path"].endswith("glosses.txt")


def test_foreign_non_empty_output_is_refused(tmp_path: Path, tiny_model_dir: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("keep me")
    result = invoke(["embed", SAMPLE / "glosses.txt", "-o", out, "--model", tiny_model_dir])
    assert_error(result, 3, str(out))
    assert (out / "data.csv").read_text() == "keep me"


def test_output_that_is_a_file(tmp_path: Path, tiny_model_dir: str) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    result = invoke(["embed", SAMPLE / "glosses.txt", "-o", out, "--model", tiny_model_dir, "--overwrite"])
    assert_error(result, 3, str(out))
    assert out.read_text() == "a file"


def test_resume_with_overwrite(finished: Path, tiny_model_dir: str) -> None:
    result = invoke(
        [
            "embed",
            SAMPLE / "glosses.parquet",
            "-o",
            finished,
            "--model",
            tiny_model_dir,
            "--resume",
            "--overwrite",
        ]
    )
    assert_error(result, 2, "--resume", "--overwrite")
    assert len(parts(finished)) == 3


def test_resume_of_a_foreign_directory(tmp_path: Path, tiny_model_dir: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("keep me")
    result = invoke(["embed", SAMPLE / "glosses.txt", "-o", out, "--model", tiny_model_dir, "--resume"])
    assert_error(result, 3, "--resume")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["-o", "-", "--format", "parquet"], "-o -"),
        (["-o", "-", "--resume"], "--resume"),
        (["--format", "jsonl"], "jsonl"),
    ],
)
def test_layout_flags_that_contradict(
    extra: list, fragment: str, tmp_path: Path, tiny_model_dir: str
) -> None:
    args = ["embed", SAMPLE / "glosses.txt", "--model", tiny_model_dir, *extra]
    if "-o" not in extra:
        args += ["-o", tmp_path / "out"]
    assert_error(invoke(args), 2, fragment)


def test_verify_of_a_non_output(tmp_path: Path) -> None:
    assert_error(invoke(["verify", tmp_path]), 4, "manifest.json")  # damage, not a conflict


# ---------------------------------------------------------------------------- usage errors and a real process


@pytest.mark.parametrize(
    "args",
    [
        ["embed", "-o", "out"],
        ["embed", "x.txt"],
        ["embed", "x.txt", "-o", "o", "--batch-size", "0"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(args: list) -> None:
    result = invoke(args)
    assert_error(result, 2, "--help")  # click's own usage errors are one line too


@pytest.mark.slow
def test_real_process_error_has_no_traceback(tmp_path: Path, tiny_model_dir: str) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MINILM_DEBUG", None)
    src = _write(tmp_path / "n.jsonl", '{"text": "alpha"}\n{"text": null}\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minilm_cli.cli",
            "embed",
            src,
            "-o",
            tmp_path / "out",
            "--model",
            tiny_model_dir,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("minilm: error: ")
    assert f"{src}, line 2" in lines[0] and "null text" in lines[0]


def test_bz2_csv_with_bad_row(tmp_path: Path, tiny_model_dir: str) -> None:
    src = tmp_path / "e.csv.bz2"
    src.write_bytes(bz2.compress(b'text\nalpha\n""\nbeta\n'))
    result = invoke(["embed", src, "-o", "-", "--model", tiny_model_dir])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"minilm: error: bad row: {src}, row 2: empty text")


def test_input_error_before_any_shard_leaves_no_output(tmp_path: Path, tiny_model_dir: str) -> None:
    out = tmp_path / "out"
    result = invoke(
        ["embed", SAMPLE / "glosses.csv", "-o", out, "--model", tiny_model_dir, "--text-column", "nosuch"]
    )
    assert_error(result, 2, "'nosuch'")
    assert not out.exists()  # so the corrected command runs without --overwrite
    result = invoke(["embed", SAMPLE / "glosses.csv", "-o", out, "--model", tiny_model_dir, "--quiet"])
    assert result.exit_code == 0, result.output
