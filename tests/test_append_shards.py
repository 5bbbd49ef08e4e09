"""--append, --reuse and dedup in a job array (--num-shards N --shard-index I): every night each
part embeds its stretch of what is new or changed, and the merged output holds every current
input's rows exactly once, as a plain single run over the same files would."""

from __future__ import annotations

import gzip
import json
import os
import random

import numpy as np
import pytest
from helpers import WORDS, assert_one_line_error, cli, manifest, model_args

import minilm_cli

PART = "manifest-{:05d}-of-00002.json"


def write_jsonl(path, prefix: str, n: int, seed: int) -> int:
    rng = random.Random(seed)
    rows = [
        json.dumps(
            {"key": f"{prefix}/{i}", "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 9))) + f" {i}"}
        )
        for i in range(n)
    ]
    data = ("\n".join(rows) + "\n").encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    if path.exists():  # a rewrite within the clock's resolution must still look changed
        before = os.stat(path).st_mtime_ns
        path.write_bytes(data)
        os.utime(path, ns=(before + 10**9, before + 10**9))
    else:
        path.write_bytes(data)
    return n


@pytest.fixture
def common(tiny_model_dir) -> list[str]:
    return [
        "--keep-columns",
        "key",
        "--shard-rows",
        "90",
        "--chunk-size",
        "32",
        *model_args(tiny_model_dir),
        "-q",
    ]


def embed_part(data, out, common, index: int, *extra: str, shards: int = 2):
    args = ["embed", str(data), "-o", str(out), "--append", "--num-shards", str(shards)]
    return cli([*args, "--shard-index", str(index), *common, *extra])


def night(data, out, common, workers=(0, 1)) -> None:
    """Every task of the array, then the merge (as a Slurm dependency job would run it)."""
    for index in workers:
        result = embed_part(data, out, common, index)
        assert result.exit_code == 0, result.output
    merged = cli(["merge-manifests", str(out)])
    assert merged.exit_code == 0, merged.output


def by_key(out) -> dict[str, tuple[int, np.ndarray]]:
    table = minilm_cli.open_dataset(out).to_table()
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)), "a key read twice"
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    return dict(zip(keys, zip(table.column("id").to_pylist(), vectors)))


def assert_same_rows(got: dict, want: dict, ids: bool = True) -> None:
    assert sorted(got) == sorted(want)
    if ids:  # ids, and so the order by id, as a plain run numbers them
        assert sorted(got, key=lambda k: got[k][0]) == sorted(want, key=lambda k: want[k][0])
        assert all(got[k][0] == want[k][0] for k in want)
    assert max(np.abs(got[k][1] - want[k][1]).max() for k in want) < 1e-5


def plain_run(data, out, common) -> dict:
    result = cli(["embed", str(data), "-o", str(out), *common])
    assert result.exit_code == 0, result.output
    return by_key(out)


def test_nightly_array_appends_new_and_changed_files(tmp_path, common, model_rows):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    rows = {
        "a.jsonl": write_jsonl(data / "a.jsonl", "a", 300, 1),
        "b.jsonl": write_jsonl(data / "b.jsonl", "b1", 200, 2),
    }
    night(data, out, common)  # night 1 on a new OUTPUT: a plain sharded run
    assert sum(model_rows) == 500

    rows["c.jsonl.gz"] = write_jsonl(data / "c.jsonl.gz", "c", 120, 3)  # whole: one part's stretch
    model_rows.clear()
    night(data, out, common)
    assert sum(model_rows) == 120  # only the new rows went through the model
    parts = [manifest(out, PART.format(i)) for i in (0, 1)]
    assert [len(p["generations"]) for p in parts] == [2, 2]
    assert sorted(len(p["generations"][1]["splits"]) for p in parts) == [0, 1]  # one part had nothing
    assert cli(["verify", str(out)]).exit_code == 0
    assert_same_rows(by_key(out), plain_run(data, tmp_path / "plain", common))

    model_rows.clear()
    before = {p.name: p.read_bytes() for p in out.glob("manifest*.json")}
    night(data, out, common)  # nothing new: a no-op in every part
    assert sum(model_rows) == 0
    assert {p.name: p.read_bytes() for p in out.glob("manifest-*.json")} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }

    rows["b.jsonl"] = write_jsonl(data / "b.jsonl", "b2", 210, 4)  # b changes
    model_rows.clear()
    for index in (0, 1):
        assert embed_part(data, out, common, index).exit_code == 0
    stale = cli(["verify", str(out)])  # manifest.json is the merge of the night before
    assert stale.exit_code == 4 and "run minilm merge-manifests" in stale.output
    assert cli(["merge-manifests", str(out)]).exit_code == 0
    plan = manifest(out, PART.format(0))["generations"][-1]["plan"]
    assert plan["changed"] == [str(data / "b.jsonl")] and plan["superseded"]
    redone = [os.path.basename(f["path"]) for f in plan["inputs"]]
    assert sum(model_rows) == sum(rows[name] for name in redone)  # b, and what shares its shards
    doc = manifest(out)
    superseded = {(s["part"], s["index"]) for s in doc["shards"] if s.get("superseded")}
    assert superseded == {tuple(key) for key in plan["superseded"]}
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output
    assert "630 rows" in check.output
    got = by_key(out)
    assert not [k for k in got if k.startswith("b1/")]  # no superseded rows
    assert_same_rows(got, plain_run(data, tmp_path / "plain2", common), ids=False)


def test_a_part_that_runs_late_embeds_what_the_first_part_planned(tmp_path, common, model_rows):
    from minilm_cli.sharding import coverage_problems

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    write_jsonl(data / "a.jsonl", "a", 200, 1)
    assert embed_part(data, out, common, 0).exit_code == 0  # night 1: part 0 starts generation 1
    write_jsonl(data / "b.jsonl", "b", 100, 2)  # lands before part 1 runs: it waits for generation 2
    assert embed_part(data, out, common, 1).exit_code == 0
    assert sum(model_rows) == 200
    assert cli(["merge-manifests", str(out)]).exit_code == 0
    assert sorted(k.split("/")[0] for k in by_key(out)) == ["a"] * 200

    model_rows.clear()
    assert embed_part(data, out, common, 0).exit_code == 0  # part 0 plans and embeds generation 2
    loud = [a for a in common if a != "-q"]
    ahead = embed_part(data, out, loud, 0)  # its task runs again before part 1's
    assert ahead.exit_code == 0
    assert "nothing is appended here until it has" in ahead.stderr
    parts = [manifest(out, PART.format(i)) for i in (0, 1)]
    assert coverage_problems(parts) == [
        "shard index 1 has 1 generation(s), others 2: run it again with --append"
    ]
    assert cli(["merge-manifests", str(out)]).exit_code == 4
    write_jsonl(data / "c.jsonl", "c", 50, 3)  # lands before part 1 runs: it waits for generation 3
    assert embed_part(data, out, common, 1).exit_code == 0
    assert sum(model_rows) == 100
    assert cli(["merge-manifests", str(out)]).exit_code == 0
    assert sorted(k.split("/")[0] for k in by_key(out)) == ["a"] * 200 + ["b"] * 100

    model_rows.clear()
    night(data, out, common)
    assert sum(model_rows) == 50
    assert cli(["verify", str(out)]).exit_code == 0
    assert_same_rows(by_key(out), plain_run(data, tmp_path / "plain", common))


def fail_after_shard(index: int):
    """A disk that fills once shard ``index`` of the part is written and the next is in flight."""
    from minilm_cli.output import OutputSession

    def disk_full(session) -> None:
        if session.shards and session.shards[-1]["index"] >= index:
            raise OSError(28, "No space left on device")

    OutputSession.on_shard_in_flight = disk_full
    return OutputSession


@pytest.mark.parametrize("generation", [1, 2])
def test_a_part_cut_short_continues_its_generation(tmp_path, common, generation):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    write_jsonl(data / "a.jsonl", "a", 400, 1)
    if generation == 2:
        night(data, out, common)
        write_jsonl(data / "b.jsonl", "b", 400, 2)
    session = fail_after_shard(0 if generation == 1 else 2)  # part 1 holds shards 0, 1 after night 1
    try:
        failed = embed_part(data, out, common, 1)
    finally:
        session.on_shard_in_flight = None
    assert failed.exit_code == 1, failed.output
    assert manifest(out, PART.format(1))["status"] == "failed"
    write_jsonl(data / "c.jsonl", "c", 30, 3)  # lands before the rerun: it waits for the next night
    loud = [a for a in common if a != "-q"]
    for index in (1, 0):  # the same commands again: part 1 continues its generation, part 0 joins
        again = embed_part(data, out, loud, index)
        assert again.exit_code == 0, again.output
    assert cli(["merge-manifests", str(out)]).exit_code == 0
    assert not [k for k in by_key(out) if k.startswith("c/")]
    night(data, out, common)
    assert cli(["verify", str(out)]).exit_code == 0
    assert_same_rows(by_key(out), plain_run(data, tmp_path / "plain", common))


def test_several_devices_append_and_merge(tmp_path, tiny_model_dir):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    write_jsonl(data / "a.jsonl", "a", 120, 1)
    args = ["embed", str(data), "-o", str(out), "--append", "--keep-columns", "key", "--shard-rows", "50"]
    args += [*model_args(tiny_model_dir), "--device", "cpu,cpu", "-q"]
    assert cli(args).exit_code == 0
    write_jsonl(data / "b.jsonl", "b", 80, 2)
    second = cli(args)  # both workers plan generation 2 at once, then the merge
    assert second.exit_code == 0, second.output
    doc = manifest(out)
    assert [[os.path.basename(f["path"]) for f in g["inputs"]] for g in doc["generations"]] == [
        ["a.jsonl"],
        ["b.jsonl"],
    ]
    assert cli(["verify", str(out)]).exit_code == 0
    assert len(by_key(out)) == 200


def test_array_append_refuses_other_settings_in_one_line(tmp_path, common):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    write_jsonl(data / "a.jsonl", "a", 40, 1)
    night(data, out, common)
    write_jsonl(data / "b.jsonl", "b", 40, 2)
    other = embed_part(data, out, common, 1, "--no-normalize")
    assert_one_line_error(other, 3, "--append refused: normalize differs")
    more = embed_part(data, out, common, 1, shards=3)
    assert_one_line_error(more, 3, "--num-shards 2", "this run has --num-shards 3")
    both = embed_part(data, out, common, 0, "--resume")
    assert_one_line_error(both, 2, "--append")


def test_sharded_reuse_and_dedup_send_no_repeated_text_to_the_model(tmp_path, common, model_rows):
    data = tmp_path / "data"
    data.mkdir()
    texts = [" ".join(random.Random(i).choices(WORDS, k=6)) + f" {i}" for i in range(150)]
    lines = [json.dumps({"key": f"{i}-{copy}", "text": t}) for i, t in enumerate(texts) for copy in (0, 1)]
    (data / "a.jsonl").write_text("\n".join(lines) + "\n")
    sharded = ["--num-shards", "2", "--chunk-size", "300", "--shard-rows", "300"]
    common = [a for a in common if a not in ("--chunk-size", "32", "--shard-rows", "90")]
    for index in (0, 1):
        first = cli(
            ["embed", str(data), "-o", str(tmp_path / "one"), *sharded, "--shard-index", str(index), *common]
        )
        assert first.exit_code == 0, first.output
    embedded = sum(manifest(tmp_path / "one", PART.format(i))["totals"]["embedded"] for i in (0, 1))
    assert sum(model_rows) == embedded <= 151  # each text once per part (a pair may straddle the cut)
    model_rows.clear()
    for index in (0, 1):
        again = cli(
            ["embed", str(data), "-o", str(tmp_path / "two"), *sharded, "--shard-index", str(index)]
            + ["--reuse", str(tmp_path / "one"), *common]
        )
        assert again.exit_code == 0, again.output
    assert sum(model_rows) == 0  # unchanged inputs: every vector comes from the earlier output
    assert cli(["merge-manifests", str(tmp_path / "two")]).exit_code == 0
    assert cli(["verify", str(tmp_path / "two")]).exit_code == 0
    assert_same_rows(by_key(tmp_path / "two"), plain_run(data, tmp_path / "plain", common))
