"""--append: a nightly job adds new files as new shards, re-embeds a changed file (its old
shards superseded), skips what OUTPUT already holds, and readers see exactly the current rows."""

from __future__ import annotations

import os
import random

import pytest
from helpers import WORDS, cli, manifest, model_args

import minilm_cli


def write_texts(path, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rows = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) + f" {seed}/{i}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return rows


def rows_read_back(out) -> dict[str, int]:
    table = minilm_cli.open_dataset(out).to_table()
    return {"rows": table.num_rows, "ids": len(set(table.column("id").to_pylist()))}


@pytest.mark.parametrize(
    "shard_rows,redone",
    [(150, 210), (140, 510)],
    ids=["b-has-its-own-shards", "a-and-b-share-a-shard"],
)
def test_append_embeds_only_new_and_changed_files(tmp_path, tiny_model_dir, model_rows, shard_rows, redone):
    data = tmp_path / "data"
    data.mkdir()
    write_texts(data / "a.txt", 300, seed=1)
    write_texts(data / "b.txt", 200, seed=2)
    out = tmp_path / "out"
    args = [
        "embed",
        str(data),
        "-o",
        str(out),
        "--append",
        "--shard-rows",
        str(shard_rows),
        *model_args(tiny_model_dir),
        "-q",
    ]
    first = cli(args)
    assert first.exit_code == 0, first.output
    assert sum(model_rows) == 500
    assert rows_read_back(out) == {"rows": 500, "ids": 500}

    model_rows.clear()
    again = cli(args)  # nothing new: nothing embedded
    assert again.exit_code == 0, again.output
    assert sum(model_rows) == 0

    write_texts(data / "c.txt", 120, seed=3)  # a new file lands overnight
    third = cli(args)
    assert third.exit_code == 0, third.output
    assert sum(model_rows) == 120
    doc = manifest(out)
    assert [g["generation"] for g in doc["generations"]] == [1, 2]
    assert rows_read_back(out) == {"rows": 620, "ids": 620}
    assert cli(["verify", str(out)]).exit_code == 0

    model_rows.clear()
    write_texts(data / "b.txt", 210, seed=4)  # b changes: its shards (shared with a) are superseded
    stat = os.stat(data / "b.txt")
    os.utime(data / "b.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fourth = cli(args)
    assert fourth.exit_code == 0, fourth.output
    doc = manifest(out)
    superseded = [s["index"] for s in doc["shards"] if s.get("superseded")]
    assert superseded  # b's old rows are no longer read
    table = minilm_cli.open_dataset(out).to_table()
    assert table.num_rows == 300 + 210 + 120  # a, the new b, c: each exactly once
    assert sum(model_rows) == redone  # b, and a too where a shard holds rows of both
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output
    assert "630 rows" in check.output


def test_append_refuses_other_settings_and_unfinished_runs(tmp_path, tiny_model_dir):
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    out = tmp_path / "out"
    base = ["embed", str(tmp_path / "in.txt"), "-o", str(out), *model_args(tiny_model_dir), "-q"]
    assert cli([*base, "--append"]).exit_code == 0
    other = cli([*base, "--append", "--no-normalize"])
    assert other.exit_code == 3
    assert other.stderr.startswith("minilm: error: --append refused: normalize differs")
    both = cli([*base, "--append", "--resume"])
    assert both.exit_code == 2


def test_appended_output_equals_a_plain_full_run_by_id(tmp_path, tiny_model_dir):
    import json

    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(9)
    for name, start in (("a.jsonl", 0), ("b.jsonl", 1000)):
        lines = [
            json.dumps({"doc": f"d{start + i:05d}", "text": " ".join(rng.choices(WORDS, k=6))})
            for i in range(150)
        ]
        (data / name).write_text("\n".join(lines) + "\n")
    common = ["--id-column", "doc", "--shard-rows", "100", *model_args(tiny_model_dir), "-q"]
    first = cli(["embed", str(data / "a.jsonl"), "-o", str(tmp_path / "out"), "--append", *common])
    assert first.exit_code == 0, first.output
    second = cli(["embed", str(data), "-o", str(tmp_path / "out"), "--append", *common])
    assert second.exit_code == 0, second.output
    plain = cli(["embed", str(data), "-o", str(tmp_path / "plain"), *common])
    assert plain.exit_code == 0, plain.output

    def by_id(out):
        table = minilm_cli.open_dataset(out).to_table()
        vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
        return dict(zip(table.column("id").to_pylist(), vectors))

    got, want = by_id(tmp_path / "out"), by_id(tmp_path / "plain")
    assert sorted(got) == sorted(want)
    assert max(np.abs(got[k] - want[k]).max() for k in want) < 1e-5


def test_a_first_append_cut_short_continues_when_run_again(tmp_path, tiny_model_dir, model_rows):
    from minilm_cli.output import OutputSession

    data = tmp_path / "data"
    data.mkdir()
    write_texts(data / "a.txt", 300, seed=1)
    args = ["embed", str(data), "-o", str(tmp_path / "out"), "--append", "--shard-rows", "100"]
    args += ["--chunk-size", "50", *model_args(tiny_model_dir), "-q"]

    def disk_full(session) -> None:
        if session.shards:
            raise OSError(28, "No space left on device")

    OutputSession.on_shard_in_flight = disk_full
    try:
        assert cli(args).exit_code == 1
    finally:
        OutputSession.on_shard_in_flight = None
    write_texts(data / "b.txt", 40, seed=2)  # lands before the rerun: it waits for the next one
    model_rows.clear()
    assert cli(args).exit_code == 0
    assert sum(model_rows) == 200  # the shards after the first, of a only
    assert rows_read_back(tmp_path / "out") == {"rows": 300, "ids": 300}
    assert cli(args).exit_code == 0
    assert rows_read_back(tmp_path / "out") == {"rows": 340, "ids": 340}
    assert cli(["verify", str(tmp_path / "out")]).exit_code == 0
