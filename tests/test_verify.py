"""`minilm verify OUTPUT`: exit 0 on a sound output, exit 4 and a report naming the shard
and the problem for each way an output can go bad on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cli, model_args, sha256

ROWS = 300
PLAN = ["--shard-rows", "100", "--chunk-size", "40"]


def load(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def save(out: Path, doc: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")


def problems(result) -> list[str]:
    return [line[4:] for line in result.output.splitlines() if line.startswith("  - ")]


def assert_fails(out: Path, *expected: str) -> list[str]:
    """verify exits 4; its first line says FAILED; each expected text is in some problem."""
    result = cli(["verify", str(out)])
    assert result.exit_code == 4, result.output
    assert result.output.startswith(f"FAILED: {out}:"), result.output
    found = problems(result)
    assert found, result.output
    for text in expected:
        assert any(text in p for p in found), (text, found)
    assert "Traceback" not in result.output
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("verify-in")
    lines = [
        json.dumps({"id": f"r{i}", "text": f"sentence number {i} about {'cats' if i % 2 else 'dogs'}"})
        for i in range(ROWS)
    ]
    lines[150] = json.dumps({"id": "r150", "text": ""})  # one reject, in shard 1
    (folder / "in.jsonl").write_text("\n".join(lines) + "\n")
    dup = lines[:]
    dup[250] = json.dumps({"id": "r10", "text": "a row whose id is already in shard 0"})
    (folder / "dup.jsonl").write_text("\n".join(dup) + "\n")
    return folder


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, tiny_model_dir, inputs):
    """A sound output per layout, built once; tests corrupt copies of it."""
    root = tmp_path_factory.mktemp("verify-fresh")
    outs = {}
    for fmt in ("parquet", "npy"):
        out = root / fmt
        result = cli(
            [
                "embed",
                str(inputs / "in.jsonl"),
                "-o",
                str(out),
                "--format",
                fmt,
                "--id-column",
                "id",
                "--on-error",
                "skip",
                *PLAN,
                *model_args(tiny_model_dir),
                "-q",
            ]
        )
        assert result.exit_code == 0, result.output
        outs[fmt] = out
    return outs


@pytest.fixture(params=["parquet", "npy"])
def output(request, fresh, tmp_path) -> tuple[str, Path]:
    out = tmp_path / "out"
    shutil.copytree(fresh[request.param], out)
    return request.param, out


def shard_file(out: Path, fmt: str, index: int, role: str | None = None) -> Path:
    role = role or ("data" if fmt == "parquet" else "embeddings")
    return out / load(out)["shards"][index]["files"][role]["path"]


def test_fresh_output_verifies(output):
    fmt, out = output
    result = cli(["verify", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"ok: {out}: 3 shard(s), {ROWS - 1} rows, 1 rejected, dim 32"
    doc = load(out)
    assert doc["settings"]["format"] == fmt
    assert [s["rows"] for s in doc["shards"]] == [100, 100, 99]


def test_truncated_shard(output):
    fmt, out = output
    path = shard_file(out, fmt, 1)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    rel = str(path.relative_to(out))
    found = assert_fails(out, f"shard 1: {rel} is {size // 2} bytes, manifest says {size}")
    assert all(p.startswith("shard 1:") for p in found), found


def test_deleted_shard(output):
    fmt, out = output
    path = shard_file(out, fmt, 2)
    path.unlink()
    assert_fails(out, f"shard 2: {path.relative_to(out)} is missing")


def test_deleted_metadata_of_npy_shard(fresh, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fresh["npy"], out)
    (out / "metadata" / "part-00000.parquet").unlink()
    assert_fails(out, "shard 0: metadata/part-00000.parquet is missing")


def test_deleted_rejects_file(output):
    fmt, out = output
    (out / "rejects" / "part-00001.jsonl").unlink()
    assert_fails(out, "shard 1: rejects/part-00001.jsonl is missing")


def test_flipped_byte(output):
    fmt, out = output
    path = shard_file(out, fmt, 0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    found = assert_fails(out, f"shard 0: {path.relative_to(out)}: checksum mismatch")
    assert len(found) == 1, found


def test_manifest_lies_about_rows(output):
    fmt, out = output
    doc = load(out)
    doc["shards"][1]["rows"] += 5
    save(out, doc)
    assert_fails(out, "shard 1: holds 100 embeddings and 100 id rows, manifest says 105")


def test_manifest_lies_about_rejects(output):
    fmt, out = output
    doc = load(out)
    doc["shards"][1]["rejected"] = 3
    save(out, doc)
    assert_fails(out, "shard 1: rejects file has 1 lines, manifest says 3")


def test_extra_unlisted_part_file(output):
    fmt, out = output
    src = shard_file(out, fmt, 0)
    extra = src.with_name("part-00007" + src.suffix)
    shutil.copy(src, extra)
    found = assert_fails(out, f"{extra.relative_to(out)} is not listed in any manifest")
    assert len(found) == 1, found


def test_extra_unlisted_rejects_file(output):
    fmt, out = output
    (out / "rejects" / "part-00002.jsonl").write_text(
        '{"source": "x", "line": 1, "reason": "?", "raw": ""}\n'
    )
    assert_fails(out, "rejects/part-00002.jsonl is not listed in any manifest")


def rewrite_with(out: Path, fmt: str, index: int, value: float) -> None:
    """Put ``value`` into row 7 of a shard's embeddings, and update the manifest's bytes and
    sha256 for the file, so only the NaN/Inf check can tell."""
    doc = load(out)
    files = doc["shards"][index]["files"]
    if fmt == "npy":
        path = out / files["embeddings"]["path"]
        arr = np.load(path)
        arr[7, 3] = value
        np.save(path, arr)
        role = "embeddings"
    else:
        path = out / files["data"]["path"]
        table = pq.read_table(path)
        column = table.column("embedding").combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size).copy()
        values[7, 3] = value
        new = pa.FixedSizeListArray.from_arrays(
            pa.array(values.reshape(-1), column.type.value_type), column.type.list_size
        )
        table = table.set_column(
            table.schema.get_field_index("embedding"), table.schema.field("embedding"), new
        )
        pq.write_table(table, path)
        role = "data"
    files[role]["bytes"] = path.stat().st_size
    files[role]["sha256"] = sha256(path)
    save(out, doc)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nan_or_inf_in_a_shard(output, value):
    fmt, out = output
    rewrite_with(out, fmt, 1, value)
    found = assert_fails(out, "shard 1: 1 row holds NaN or Inf")
    assert len(found) == 1, found  # sizes and checksums match: only the values are wrong


def test_rewritten_shard_with_finite_values_passes(output):
    """The NaN test's rewrite itself is sound: with a finite value, verify passes."""
    fmt, out = output
    rewrite_with(out, fmt, 1, 0.5)
    result = cli(["verify", str(out)])
    assert result.exit_code == 0, result.output


def warnings_of(result) -> list[str]:
    head = "  warning: "
    return [line[len(head) :] for line in result.output.splitlines() if line.startswith(head)]


def test_duplicate_ids_across_shards_warn_under_id_column(tmp_path, tiny_model_dir, inputs):
    """--id-column ids are the user's: a repeat is reported and counted, not a failure."""
    out = tmp_path / "out"
    result = cli(
        [
            "embed",
            str(inputs / "dup.jsonl"),
            "-o",
            str(out),
            "--id-column",
            "id",
            "--on-error",
            "skip",
            *PLAN,
            *model_args(tiny_model_dir),
            "-q",
        ]
    )
    assert result.exit_code == 0, result.output
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output
    assert check.output.startswith(f"ok: {out}:")
    assert warnings_of(check) == ["shard 2: 1 ids also appear in an earlier shard, e.g. 'r10'"]
    from minilm_cli.output import count_duplicate_ids, verify_output

    assert verify_output(out).duplicate_ids == 1
    assert count_duplicate_ids(out) == 1


def test_duplicate_ids_inside_a_shard_warn_under_id_column(tmp_path, tiny_model_dir):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,one\n2,two\n1,three\n3,four\n")
    out = tmp_path / "out"
    result = cli(["embed", str(src), "-o", str(out), "--id-column", "id", *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output
    assert warnings_of(check) == ["shard 0: 1 duplicate ids inside the shard, e.g. '1'"]  # CSV ids are text


def test_duplicate_default_ids_fail(tmp_path, tiny_model_dir):
    """Default ids are row numbers: a repeat means rows were written twice, a failure.
    Shard 0's file is copied over shard 1's (manifest bytes and sha256 updated to match)."""
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {i}\n" for i in range(300)))
    out = tmp_path / "out"
    result = cli(["embed", str(src), "-o", str(out), *PLAN, *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    doc = load(out)
    first, second = (out / doc["shards"][i]["files"]["data"]["path"] for i in (0, 1))
    shutil.copy(first, second)
    doc["shards"][1]["files"]["data"].update(bytes=second.stat().st_size, sha256=sha256(second))
    save(out, doc)
    found = assert_fails(out, "shard 1: 100 ids also appear in an earlier shard, e.g. 0")
    assert len(found) == 1, found


def test_incomplete_run_is_reported(output):
    fmt, out = output
    doc = load(out)
    doc["status"] = "interrupted"
    save(out, doc)
    found = assert_fails(out, "manifest.json: run is 'interrupted', not complete; rerun it with --resume")
    assert len(found) == 1


def test_shard_replaced_by_garbage_is_unreadable_not_a_crash(output):
    fmt, out = output
    path = shard_file(out, fmt, 0)
    path.write_bytes(b"not a shard at all")
    doc = load(out)
    role = "data" if fmt == "parquet" else "embeddings"
    doc["shards"][0]["files"][role].update(bytes=path.stat().st_size, sha256=sha256(path))
    save(out, doc)
    assert_fails(out, "shard 0: unreadable")


def test_unreadable_manifest_is_reported(output):
    fmt, out = output
    (out / "manifest.json").write_text("{ not json")
    assert_fails(out, "manifest.json: unreadable")


def test_not_an_output(tmp_path):
    """A folder without a manifest (emptied, or its manifest deleted) is damage: exit 4."""
    result = cli(["verify", str(tmp_path)])
    assert result.exit_code == 4, result.output
    assert result.output.strip().splitlines() == [
        f"minilm: error: {tmp_path} holds no manifest.json: not a minilm output, or its manifest was deleted"
    ]


def test_deleted_manifest_is_damage(output):
    fmt, out = output
    (out / "manifest.json").unlink()
    result = cli(["verify", str(out)])
    assert result.exit_code == 4, result.output
    assert "holds no manifest.json" in result.stderr
    assert "Traceback" not in result.output


def test_missing_output_path_is_a_usage_error(tmp_path):
    result = cli(["verify", str(tmp_path / "nowhere")])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output


def test_live_run_is_reported_in_progress(output):
    from minilm_cli.output.layout import Layout
    from minilm_cli.output.outdir import OutputDir

    fmt, out = output
    holder = OutputDir(Layout(str(out)))
    holder.acquire()
    try:
        found = assert_fails(out, "manifest.json: a run is in progress (pid")
    finally:
        holder.release()
    assert len(found) == 1, found
    assert not (out / ".manifest.json.lock").exists()
    assert cli(["verify", str(out)]).exit_code == 0


def test_manifest_from_a_newer_version_is_one_line(output):
    fmt, out = output
    doc = load(out)
    doc["format_version"] = 99
    save(out, doc)
    result = cli(["verify", str(out)])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "format_version 99, written by a newer minilm-cli" in lines[0], lines


@pytest.mark.parametrize("damage", ["shard-without-rows", "files-not-a-dict", "manifest-is-a-list"])
def test_malformed_manifest_is_a_finding_not_a_crash(output, damage):
    """Regression: verify used to end in 'unexpected KeyError' (exit 1) here."""
    fmt, out = output
    doc = load(out)
    if damage == "shard-without-rows":
        del doc["shards"][1]["rows"]
    elif damage == "files-not-a-dict":
        doc["shards"][0]["files"] = None
    else:
        doc = [doc]
    save(out, doc)
    result = cli(["verify", str(out)])
    assert result.exit_code == 4, result.output
    assert "unexpected" not in result.output
    assert any("manifest.json: malformed manifest" in p for p in problems(result)), result.output


def test_verify_finds_shards_whose_columns_disagree(tmp_path, tiny_model_dir):
    """A shard written with other column types (a writer bug, a hand edit with a fixed-up
    manifest) is a finding: readers cannot read the shards as one table."""
    import hashlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from minilm_cli.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"row {i}", "n": i}) + "\n" for i in range(4)))
    out = tmp_path / "out"
    args = ["embed", str(src), "-o", str(out), "--keep-columns", "n", "--shard-rows", "2", "-q"]
    result = CliRunner().invoke(main, [*args, "--model", tiny_model_dir, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    second = out / "part-00001.parquet"
    table = pq.read_table(second)
    table = table.set_column(table.schema.get_field_index("n"), "n", table.column("n").cast(pa.string()))
    pq.write_table(table, second)
    doc = json.loads((out / "manifest.json").read_text())
    entry = doc["shards"][1]["files"]["data"]
    entry["bytes"] = second.stat().st_size
    entry["sha256"] = hashlib.sha256(second.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc))
    check = CliRunner().invoke(main, ["verify", str(out)])
    assert check.exit_code == 4
    assert "part-00001.parquet" in check.output or "shard 1" in check.output
    assert "n string) differ from" in check.output
