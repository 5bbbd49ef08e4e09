"""--append and --reuse when OUTPUT (and the earlier output) are s3:// URLs: a real S3 protocol
server on loopback (moto, the ``s3_server`` fixture), reached through AWS_ENDPOINT_URL."""

from __future__ import annotations

import random

import numpy as np
import pytest
from helpers import WORDS, cli, model_args
from test_objstore_e2e import put, read_output

from minilm_cli.output.manifest import Manifest

PLAN = ["--shard-rows", "128", "--chunk-size", "64"]


def texts(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    rows = [" ".join(rng.choices(WORDS, k=rng.randint(3, 10))) + f" {seed}/{i}" for i in range(n)]
    return ("\n".join(rows) + "\n").encode()


def embed(args: list[str], model: str, fmt: list[str]) -> None:
    result = cli(["embed", *args, *fmt, *PLAN, *model_args(model), "-q"])
    assert result.exit_code == 0, result.output


def by_id(root: str) -> dict:
    ids, vectors = read_output(root)
    return dict(zip(ids, vectors))


@pytest.fixture(params=["parquet", "npy"])
def nights(request, s3_server, tiny_model_dir, tmp_path, model_rows):
    """Night 1 embeds a.txt into s3://B/out with --append; night 2 finds b.txt beside it."""
    fmt = ["--format", request.param]
    bucket = s3_server.new_bucket()
    local = tmp_path / "in"
    local.mkdir()
    for name, data in (("a.txt", texts(300, 1)), ("b.txt", texts(120, 2))):
        (local / name).write_bytes(data)
    out = f"s3://{bucket}/out"
    put(s3_server, "in/a.txt", (local / "a.txt").read_bytes(), bucket)
    embed([f"s3://{bucket}/in/", "-o", out, "--append"], tiny_model_dir, fmt)
    night1 = sum(model_rows)
    model_rows.clear()
    put(s3_server, "in/b.txt", (local / "b.txt").read_bytes(), bucket)
    embed([f"s3://{bucket}/in/", "-o", out, "--append"], tiny_model_dir, fmt)
    night2 = sum(model_rows)
    model_rows.clear()
    embed([str(local), "-o", str(tmp_path / "plain")], tiny_model_dir, fmt)  # the same rows, locally
    model_rows.clear()
    plain = str(tmp_path / "plain")
    return {"bucket": bucket, "out": out, "plain": plain, "counts": (night1, night2), "fmt": fmt}


def assert_same_rows(got: str, want: str) -> None:
    got_rows, want_rows = by_id(got), by_id(want)
    assert sorted(got_rows) == sorted(want_rows) == list(range(420))
    assert max(np.abs(got_rows[k] - want_rows[k]).max() for k in want_rows) < 1e-5


def test_append_to_s3_embeds_only_the_new_file(nights):
    assert nights["counts"] == (300, 120)
    doc = Manifest.load(nights["out"] + "/manifest.json").doc
    assert [g["generation"] for g in doc["generations"]] == [1, 2]
    assert_same_rows(nights["out"], nights["plain"])
    check = cli(["verify", nights["out"]])
    assert check.exit_code == 0, check.output
    assert "420 rows" in check.output


def test_reuse_from_s3_into_s3_sends_no_unchanged_row_to_the_model(nights, tiny_model_dir, model_rows):
    bucket, out = nights["bucket"], nights["out"]
    again = f"s3://{bucket}/again"
    embed([f"s3://{bucket}/in/", "-o", again, "--reuse", out], tiny_model_dir, nights["fmt"])
    assert sum(model_rows) == 0
    assert_same_rows(again, nights["plain"])
    earlier, now = by_id(out), by_id(again)
    assert all(now[k].tobytes() == earlier[k].tobytes() for k in earlier)  # byte copies
    doc = Manifest.load(again + "/manifest.json").doc
    (entry,) = doc["reuse"].values()
    assert [s["location"] for s in entry["sources"]] == [out]
    assert doc["totals"]["reused"] == 420 and doc["totals"]["embedded"] == 0
    check = cli(["verify", again])
    assert check.exit_code == 0, check.output
    assert "420 reused rows are byte copies of their --reuse sources" in check.output
