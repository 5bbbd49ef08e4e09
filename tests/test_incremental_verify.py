"""Incremental runs, checked: verify reads each shard's key file and checks every row a --reuse
run took from an earlier output against that output; --overflow mean writes key files and
counts the windows it embeds."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import WORDS, assert_one_line_error, cli, embeddings, manifest, model_args

from minilm_cli.output.writers import KEY_DTYPE

PLAN = ["--shard-rows", "150", "--chunk-size", "64"]


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 10))) + f" #{seed}-{i}" for i in range(n)]


def embed(args: list[str], model: str) -> None:
    result = cli(["embed", *args, *PLAN, *model_args(model), "-q"])
    assert result.exit_code == 0, result.output


def verify(out: Path):
    return cli(["verify", str(out)])


def problems(result) -> list[str]:
    return [line[4:] for line in result.output.splitlines() if line.startswith("  - ")]


def warnings(result) -> list[str]:
    return [line[11:] for line in result.output.splitlines() if line.startswith("  warning: ")]


def rewrite(out: Path, rel: str, data: bytes) -> None:
    """Replace a listed file and make the manifest agree (size, sha256): only deeper checks see it."""
    (out / rel).write_bytes(data)
    doc = json.loads((out / "manifest.json").read_text())
    for shard in doc["shards"]:
        for rec in shard["files"].values():
            if rec["path"] == rel:
                rec["bytes"], rec["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))


def set_vector(out: Path, shard: int, row: int, vector: np.ndarray) -> None:
    rel = manifest(out)["shards"][shard]["files"]["data"]["path"]
    table = pq.read_table(out / rel)
    column = table.column("embedding").combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size).copy()
    values[row] = vector
    array = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding", array)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    rewrite(out, rel, sink.getvalue().to_pybytes())


@pytest.fixture(scope="module")
def reused(tmp_path_factory, tiny_model_dir) -> Path:
    """old/: 400 texts. new/: the same texts with 60 new ones among them, --reuse old."""
    root = tmp_path_factory.mktemp("reused")
    old, fresh = texts(400, seed=1), texts(60, seed=2)
    (root / "old.txt").write_text("\n".join(old) + "\n")
    both = old[:200] + fresh + old[200:] + old[395:] * 6  # 30 repeats in the last shard: copies
    (root / "new.txt").write_text("\n".join(both) + "\n")
    embed([str(root / "old.txt"), "-o", str(root / "old")], tiny_model_dir)
    embed([str(root / "new.txt"), "-o", str(root / "new"), "--reuse", str(root / "old")], tiny_model_dir)
    return root


@pytest.fixture
def copy(reused, tmp_path) -> Path:
    shutil.copytree(reused / "old", tmp_path / "old")
    shutil.copytree(reused / "new", tmp_path / "new")
    doc = json.loads((tmp_path / "new" / "manifest.json").read_text())
    for entry in doc["reuse"].values():  # the copy reuses the copied earlier output
        for source in entry["sources"]:
            source["location"] = str(tmp_path / "old")
    (tmp_path / "new" / "manifest.json").write_text(json.dumps(doc, indent=2))
    return tmp_path


def test_manifest_records_the_reuse_sources_and_verify_checks_every_reused_row(reused):
    doc = manifest(reused / "new")
    (entry,) = doc["reuse"].values()
    (source,) = entry["sources"]
    assert source["location"] == str(reused / "old")  # absolute: verify finds it from anywhere
    assert source["manifests"][0]["name"] == "manifest.json"
    assert source["manifests"][0]["shards"] == len(manifest(reused / "old")["shards"])
    assert {s["reuse"] for s in doc["shards"]} == set(doc["reuse"])
    assert sum(s["reused"] for s in doc["shards"]) == doc["totals"]["reused"] == 430
    assert doc["totals"]["embedded"] == 60
    result = verify(reused / "new")
    assert result.exit_code == 0, result.output
    assert "  430 reused rows are byte copies of their --reuse sources" in result.output.splitlines()


def test_a_reused_row_that_is_not_a_byte_copy_fails(copy):
    _, vectors = embeddings(copy / "new")
    changed = vectors[5].copy()
    changed[0] = np.nextafter(changed[0], np.float32(2))  # one ulp: still finite, still "close"
    set_vector(copy / "new", 0, 5, changed)
    result = verify(copy / "new")
    assert result.exit_code == 4, result.output
    (problem,) = problems(result)
    assert problem.startswith("shard 0: .minilm-keys/part-00000.npy: ")
    assert f"1 reused rows are not byte copies of {copy / 'old'} (e.g. row 5)" in problem


def test_a_source_gone_or_changed_is_a_warning_not_a_failure(copy, tiny_model_dir):
    (copy / "more.txt").write_text("\n".join(texts(20, seed=3)) + "\n")
    embed([str(copy / "more.txt"), "-o", str(copy / "old"), "--overwrite"], tiny_model_dir)
    changed = verify(copy / "new")
    assert changed.exit_code == 0, changed.output
    assert warnings(changed) == [
        f"--reuse source {copy / 'old'} has changed since this output reused it: "
        "the rows reused from it are not checked"
    ]
    shutil.rmtree(copy / "old")
    gone = verify(copy / "new")
    assert gone.exit_code == 0, gone.output
    assert warnings(gone) == [
        f"--reuse source {copy / 'old'} is gone: the rows reused from it are not checked"
    ]


def test_a_source_that_grew_by_append_still_checks_what_was_reused(copy, tiny_model_dir):
    old = copy / "old"
    doc = json.loads((old / "manifest.json").read_text())
    assert "generations" in doc
    (copy / "more.txt").write_text("\n".join(texts(20, seed=4)) + "\n")
    grown = cli(
        [
            "embed",
            str(copy / "more.txt"),
            "-o",
            str(old),
            "--append",
            *PLAN,
            *model_args(tiny_model_dir),
            "-q",
        ]
    )
    assert grown.exit_code == 0, grown.output
    assert len(manifest(old)["shards"]) > len(doc["shards"])
    result = verify(copy / "new")
    assert result.exit_code == 0, result.output
    assert "430 reused rows" in result.output and not warnings(result)


def test_the_reused_count_is_cross_checked(copy):
    doc = json.loads((copy / "new" / "manifest.json").read_text())
    doc["shards"][1]["reused"] -= 1
    (copy / "new" / "manifest.json").write_text(json.dumps(doc, indent=2))
    found = problems(verify(copy / "new"))
    assert len(found) == 1 and found[0].startswith("shard 1: .minilm-keys/part-00001.npy: ")
    assert "but the manifest says" in found[0]


# ---------------------------------------------------------------------------- key files


def keys_of(out: Path, shard: int) -> tuple[str, np.ndarray]:
    rel = manifest(out)["shards"][shard]["files"]["keys"]["path"]
    return rel, np.load(out / rel)


def npy_bytes(array: np.ndarray) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.PythonFile(sink, mode="w") as f:
        np.save(f, array, allow_pickle=False)
    return sink.getvalue().to_pybytes()


def row_twice(keys: np.ndarray) -> np.ndarray:
    keys = keys.copy()
    keys["row"][1] = keys["row"][0]
    return keys


@pytest.mark.parametrize(
    "damage,expected",
    [
        (lambda k: k[:-1], "holds 149 keys, the shard 150 rows"),
        (lambda k: k[::-1], "keys are not sorted"),
        (row_twice, "does not name each row of the shard exactly once"),
        (lambda k: np.stack([k["hi"], k["lo"]], axis=1), "not a key file"),
    ],
    ids=["short", "unsorted", "row-twice", "plain-array"],
)
def test_a_damaged_key_file_fails_naming_it(copy, damage, expected):
    rel, keys = keys_of(copy / "old", 0)
    rewrite(copy / "old", rel, npy_bytes(np.ascontiguousarray(damage(keys))))
    result = verify(copy / "old")
    assert result.exit_code == 4, result.output
    (problem,) = problems(result)
    assert problem.startswith(f"shard 0: {rel}: ") and expected in problem, problem


def test_a_missing_key_file_fails(copy):
    rel, _ = keys_of(copy / "old", 1)
    (copy / "old" / rel).unlink()
    result = verify(copy / "old")
    assert result.exit_code == 4
    assert problems(result) == [f"shard 1: {rel} is missing"]


def test_rows_that_share_a_key_must_share_the_vector(copy):
    out = copy / "new"
    _, keys = keys_of(out, 3)  # the last shard holds the 30 repeated texts
    same = np.flatnonzero((keys["hi"][1:] == keys["hi"][:-1]) & (keys["lo"][1:] == keys["lo"][:-1]))
    assert len(same)
    row = int(keys["row"][same[0] + 1])
    _, vectors = embeddings(out)
    first = sum(s["rows"] for s in manifest(out)["shards"][:3])
    set_vector(out, 3, row, -vectors[first + row])
    found = problems(verify(out))
    assert any("rows share a key but not the vector" in p for p in found), found


def test_key_files_are_the_sorted_keys_of_the_rows(reused):
    from minilm_cli.pipeline.dedup import text_keys

    rows = (reused / "old.txt").read_text().splitlines()
    rel, keys = keys_of(reused / "old", 1)
    assert keys.dtype == KEY_DTYPE
    want = text_keys(rows[150:300])
    assert np.array_equal(keys["hi"], want[keys["row"].astype(int), 0])
    assert np.array_equal(keys["lo"], want[keys["row"].astype(int), 1])


# ---------------------------------------------------------------------------- --overflow mean


def long_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(20, 160))) for _ in range(n)]


def test_mean_writes_document_keys_and_counts_the_windows_it_embeds(tmp_path, tiny_model_dir, model_rows):
    docs = long_docs(12, seed=5)
    docs = docs + docs[:4]  # four documents twice: the same key, the same vector
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n")
    base = [str(tmp_path / "docs.txt"), "--shard-rows", "100", *model_args(tiny_model_dir), "-q"]
    split = cli(["embed", *base, "-o", str(tmp_path / "split"), "--overflow", "split"])
    assert split.exit_code == 0, split.output
    model_rows.clear()
    mean = cli(["embed", *base, "-o", str(tmp_path / "mean"), "--overflow", "mean"])
    assert mean.exit_code == 0, mean.output
    doc, windows = manifest(tmp_path / "mean"), manifest(tmp_path / "split")
    (shard,) = doc["shards"]
    assert shard["rows"] == 16
    assert shard["embedded"] == doc["totals"]["embedded"] == sum(model_rows)
    assert sum(model_rows) == windows["totals"]["embedded"] < windows["totals"]["rows"]  # repeats copied
    rel, keys = keys_of(tmp_path / "mean", 0)
    assert len(keys) == 16 and sorted(keys["row"].tolist()) == list(range(16))
    by_row = {int(r): (int(h), int(lo)) for h, lo, r in keys}
    assert [by_row[i] == by_row[i + 12] for i in range(4)] == [True] * 4
    assert len(set(by_row.values())) == 12
    assert verify(tmp_path / "mean").exit_code == 0


def test_reuse_and_mean_refuse_each_other_in_one_line(tmp_path, tiny_model_dir):
    (tmp_path / "docs.txt").write_text("\n".join(long_docs(3, seed=6)) + "\n")
    base = [str(tmp_path / "docs.txt"), *model_args(tiny_model_dir), "-q"]
    assert cli(["embed", *base, "-o", str(tmp_path / "mean"), "--overflow", "mean"]).exit_code == 0
    reuse = ["--reuse", str(tmp_path / "mean")]
    both = cli(["embed", *base, "-o", str(tmp_path / "x"), "--overflow", "mean", *reuse])
    assert_one_line_error(both, 2, "--reuse does not work with --overflow mean")
    assert not (tmp_path / "x").exists()
    other = cli(["embed", *base, "-o", str(tmp_path / "y"), *reuse])
    assert_one_line_error(other, 2, f"--reuse {tmp_path / 'mean'}: its overflow differs")
