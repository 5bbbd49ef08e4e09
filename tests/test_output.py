"""The output side under many writers and hostile OUTPUTs (issues 13 and 15): parts that
share one OUTPUT never touch each other's files; --overwrite never removes what this tool
did not write; --resume never calls damaged output complete; the manifest costs a
constant number of bytes per shard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import REPO, assert_one_line_error, cli, manifest, model_args, sha256, write_corpus

import minilm_cli
from minilm_cli.config import EmbedConfig
from minilm_cli.output import OutputSession, merge_manifests, verify_output
from minilm_cli.pipeline import run_job
from minilm_cli.sharding import coverage_problems
from minilm_cli.storage.local import LocalStorage

PLAN = ["--shard-rows", "100", "--chunk-size", "50"]


def snapshot(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}


def ids_of(out: Path) -> list:
    return minilm_cli.open_dataset(out).to_table(columns=["id"]).column("id").to_pylist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("output-in") / "in.txt", 400, seed=41)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir, corpus) -> Path:
    out = tmp_path_factory.mktemp("output-finished") / "out"
    result = cli(["embed", str(corpus), "-o", str(out), *PLAN, *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def good(finished, tmp_path) -> Path:
    out = tmp_path / "good"
    shutil.copytree(finished, out)
    return out


def embed(corpus: Path, out: Path, model: str, *extra: str):
    return cli(["embed", str(corpus), "-o", str(out), *PLAN, *model_args(model), "-q", *extra])


# ---------------------------------------------------------------------------- many writers


def test_part_prepares_while_another_has_a_shard_in_flight(tmp_path, tiny_embedder, corpus):
    """Part 1 runs whole (its prepare and clean-up included) exactly while part 0 has a
    shard half-written: part 0's shard survives, and every row is there."""
    out = tmp_path / "out"
    ran = []

    def cfg(index: int) -> EmbedConfig:
        return EmbedConfig(
            inputs=[str(corpus)], output=str(out), quiet=True, shard_rows=100, chunk_size=50,
            num_shards=2, shard_index=index,
        )  # fmt: skip

    def part_one_now(session: OutputSession) -> None:
        if session.names.shard_index == 0 and not ran:
            ran.append(sorted(p.name for p in out.glob(".part-00000-*.tmp")))
            run_job(cfg(1), embedder=tiny_embedder)
            ran.append(sorted(p.name for p in out.glob(".part-00000-*.tmp")))

    OutputSession.on_shard_in_flight = part_one_now
    try:
        run_job(cfg(0), embedder=tiny_embedder)
    finally:
        OutputSession.on_shard_in_flight = None
    in_flight = [".part-00000-00000.parquet.tmp"]
    assert ran == [in_flight, in_flight]  # part 1 ran whole while this was in flight, and left it
    assert merge_manifests(out)[1] == []
    report = verify_output(out)
    assert report.ok, report.text()
    assert ids_of(out) == list(range(400))


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(2))
def test_four_processes_into_one_output(tmp_path, tiny_model_dir, corpus, attempt):
    """N = 4 real processes started together (staggered by a few ms), part 1 held at its
    prepare until part 0 has a shard in flight; every row present, merge and verify pass."""
    out, hooks = tmp_path / "out", tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "part-00001-.prepare.hold").touch()
    env = dict(os.environ, MINILM_TEST_HOOK=str(hooks), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    base = [sys.executable, "-m", "minilm_cli.cli", "embed", str(corpus), "-o", str(out), *PLAN]
    procs = []
    for index in range(4):
        argv = [*base, *model_args(tiny_model_dir), "-q", "--num-shards", "4", "--shard-index", str(index)]
        procs.append(subprocess.Popen(argv, env=env, cwd=REPO, stderr=subprocess.PIPE))
        time.sleep(0.01 * attempt * index)
    deadline = time.monotonic() + 300
    while not (hooks / "part-00000-.in-flight.reached").exists():
        assert time.monotonic() < deadline and procs[0].poll() is None
        time.sleep(0.005)
    (hooks / "part-00001-.prepare.go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode(errors="replace")
    assert cli(["merge-manifests", str(out)]).exit_code == 0
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output
    assert ids_of(out) == list(range(400))
    assert not list(out.glob(".*.lock"))


@pytest.mark.slow
def test_manifest_bytes_grow_linearly_with_shards(tmp_path, tiny_model_dir, monkeypatch):
    """5,000 one-row shards: every manifest byte written (header, markers, compaction)
    stays under a constant per shard; a manifest rewritten per shard would write ~GBs."""
    shards = 5000
    src = tmp_path / "in.txt"
    src.write_text("".join(f"w{i}\n" for i in range(shards)))
    out = tmp_path / "out"
    written = {"manifest": 0, "calls": 0}
    real = LocalStorage.write_atomic

    def counting(self, path: str, data: bytes) -> None:
        written["manifest"] += len(data)
        written["calls"] += 1
        real(self, path, data)

    monkeypatch.setattr(LocalStorage, "write_atomic", counting)
    result = cli(["embed", str(src), "-o", str(out), "--shard-rows", "1", *model_args(tiny_model_dir), "-q"])
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    assert len(manifest(out)["shards"]) == shards
    print(f"manifest bytes for {shards} shards: {written}")
    assert written["calls"] == shards + 2  # a marker per shard, the header at start and end
    assert written["manifest"] < 1500 * shards
    assert not (out / ".minilm-shards").exists()  # compacted


def test_coverage_problems_overlap_and_gap():
    def part(index: int, splits: list[tuple[int, int]], start: int, end: int) -> dict:
        return {
            "settings": {"plan": {"num_shards": 2, "shard_index": index}},
            "assignment": {
                "splits": [
                    {"path": "a.txt", "kind": "bytes", "start": s, "end": e, "extent": 100} for s, e in splits
                ],
                "record_start": start,
                "record_end": end,
            },
        }

    assert coverage_problems([part(0, [(0, 50)], 0, 5), part(1, [(50, 100)], 5, 9)]) == []
    overlap = coverage_problems([part(0, [(0, 60)], 0, 5), part(1, [(50, 100)], 5, 9)])
    assert overlap == ["a.txt: bytes 50..100 overlaps (expected start 60)"]
    gap = coverage_problems([part(0, [(0, 40)], 0, 5), part(1, [(50, 100)], 5, 9)])
    assert gap == ["a.txt: bytes 50..100 leaves a gap (expected start 40)"]
    short = coverage_problems([part(0, [(0, 50)], 0, 5), part(1, [(50, 90)], 6, 9)])
    assert short == [
        "a.txt: covered up to 90 of 100",
        "records of shard index 0 end at 5 but index 1 starts at 6",
    ]


# ---------------------------------------------------------------------------- issue 15, output rows


def test_parts_with_different_settings_do_not_merge(tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "out"
    for index, pooling in ((0, "mean"), (1, "cls")):
        result = embed(corpus, out, tiny_model_dir, "--num-shards", "2", "--shard-index", str(index),
                       "--pooling", pooling)  # fmt: skip
        assert result.exit_code == 0, result.output
    merged = cli(["merge-manifests", str(out)])
    assert merged.exit_code == 4, merged.output
    for word in ("pooling differs", "manifest-00000-of-00002.json", "manifest-00001-of-00002.json"):
        assert word in merged.stderr, merged.stderr
    assert not (out / "manifest.json").exists()
    check = cli(["verify", str(out)])
    assert check.exit_code == 4, check.output
    assert "pooling differs" in check.output


@pytest.mark.parametrize("foreign", ["spark", "app-manifest"])
def test_overwrite_refuses_files_it_did_not_write(good, tiny_model_dir, corpus, foreign):
    if foreign == "spark":
        (good / "part-00000-3f2a9c.snappy.parquet").write_bytes(b"PAR1 spark PAR1")
    else:
        (good / "manifest.json").write_text(json.dumps({"app": "other", "shards": []}))
    before = snapshot(good)
    line = assert_one_line_error(embed(corpus, good, tiny_model_dir, "--overwrite"), 3, "--overwrite refused")
    assert (
        "part-00000-3f2a9c.snappy.parquet" if foreign == "spark" else "is not a manifest minilm-cli wrote"
    ) in line
    assert snapshot(good) == before


def test_parts_refuse_a_finished_single_run(good, tiny_model_dir, corpus):
    before = snapshot(good)
    for index in (0, 1):
        result = embed(corpus, good, tiny_model_dir, "--num-shards", "2", "--shard-index", str(index))
        assert_one_line_error(result, 3, "holds another run's output")
    assert snapshot(good) == before
    assert cli(["verify", str(good)]).exit_code == 0


@pytest.mark.parametrize("damage", ["truncated", "deleted", "footer"])
def test_resume_redoes_a_damaged_shard(good, finished, tiny_model_dir, corpus, damage):
    path = good / manifest(good)["shards"][1]["files"]["data"]["path"]
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(data[:-4] + b"XXXX")  # same size, no Parquet footer magic
    result = cli(["embed", str(corpus), "-o", str(good), *PLAN, *model_args(tiny_model_dir), "--resume"])
    assert result.exit_code == 0, result.output
    assert "already complete" not in result.stderr
    assert "shard 1: part-00001.parquet" in result.stderr and "redoing" in result.stderr
    assert "resuming after 1 finished shard(s), 100 rows" in result.stderr
    shards = {k: v for k, v in snapshot(good).items() if k != "manifest.json"}
    assert shards == {k: v for k, v in snapshot(finished).items() if k != "manifest.json"}
    assert manifest(good)["shards"] == manifest(finished)["shards"]  # bit for bit, as a clean run


def test_verify_names_the_file_in_a_sharded_run(tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "out"
    for index in (0, 1):
        assert (
            embed(corpus, out, tiny_model_dir, "--num-shards", "2", "--shard-index", str(index)).exit_code
            == 0
        )
    (out / "part-00001-00000.parquet").unlink()
    check = cli(["verify", str(out)])
    assert check.exit_code == 4, check.output
    assert "  - part-00001-00000.parquet: part-00001-00000.parquet is missing" in check.output
    assert "shard 0:" not in check.output
    assert cli(["merge-manifests", str(out)]).exit_code == 4
    with pytest.raises(minilm_cli.errors.OutputConflict, match="part-00001-00000.parquet is missing"):
        minilm_cli.open_dataset(out)


def test_output_under_a_file_is_one_line(tmp_path, tiny_model_dir, corpus):
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(
        embed(corpus, tmp_path / "afile" / "out", tiny_model_dir), 3, "cannot create OUTPUT"
    )
    assert (tmp_path / "afile").read_text() == "x"


def test_no_lock_file_left_in_a_finished_output(finished):
    assert manifest(finished)["format_version"] == 2
    assert not (finished / ".manifest.json.lock").exists()
    assert not (finished / ".minilm-shards").exists()


@pytest.mark.parametrize("doc", ["[]", "null", '"x"', '{"settings": {}, "shards": 5}'])
def test_resume_with_a_malformed_manifest(good, tiny_model_dir, corpus, doc):
    (good / "manifest.json").write_text(doc)
    before = snapshot(good)
    line = assert_one_line_error(
        embed(corpus, good, tiny_model_dir, "--resume"), 3, "manifest.json is malformed"
    )
    assert "unexpected" not in line
    assert snapshot(good) == before


def test_resume_with_a_newer_manifest(good, tiny_model_dir, corpus):
    doc = manifest(good)
    doc["format_version"] = 7
    (good / "manifest.json").write_text(json.dumps(doc))
    assert_one_line_error(
        embed(corpus, good, tiny_model_dir, "--resume"), 3, "format_version 7", "newer minilm-cli"
    )


def test_format_version_1_manifest_still_reads(good, tiny_model_dir, corpus):
    doc = manifest(good)
    doc["format_version"] = 1
    doc.pop("markers", None)
    (good / "manifest.json").write_text(json.dumps(doc, indent=2))
    assert ids_of(good) == list(range(400))
    assert cli(["verify", str(good)]).exit_code == 0
    again = embed(corpus, good, tiny_model_dir, "--resume")
    assert again.exit_code == 0, again.output
    assert manifest(good)["format_version"] == 1  # complete: nothing redone, nothing rewritten


def test_live_run_reads_header_plus_markers(tmp_path, tiny_embedder, corpus):
    """While a run is going, readers see its finished shards through the commit markers."""
    out = tmp_path / "out"
    seen = []

    def look(session: OutputSession) -> None:
        if len(session.shards) == 2 and not seen:
            header = json.loads((out / "manifest.json").read_text())
            seen.append((header["status"], len(header["shards"]), len(manifest(out)["shards"])))
            seen.append(len(pq.read_table(minilm_cli.finished_files(out)[0])))

    OutputSession.on_shard_in_flight = look
    try:
        run_job(EmbedConfig(inputs=[str(corpus)], output=str(out), quiet=True, shard_rows=100, chunk_size=50),
                embedder=tiny_embedder)  # fmt: skip
    finally:
        OutputSession.on_shard_in_flight = None
    assert seen == [("running", 0, 2), 100]


def test_vanished_temp_file_is_an_error_not_an_empty_shard(tmp_path, tiny_model_dir, corpus):
    """Someone removes the shard being written: the run fails (exit 1), and no shard is
    recorded without its files."""
    out = tmp_path / "out"

    def remove_it(session: OutputSession) -> None:
        for temp in out.glob(".part-00001.parquet.tmp"):
            temp.unlink()

    OutputSession.on_shard_in_flight = remove_it
    try:
        result = embed(corpus, out, tiny_model_dir)
    finally:
        OutputSession.on_shard_in_flight = None
    assert_one_line_error(result, 1, "part-00001.parquet.tmp", "--resume")
    doc = manifest(out)
    assert doc["status"] == "failed"
    assert [(s["index"], sorted(s["files"])) for s in doc["shards"]] == [(0, ["data", "keys"])]
    resumed = embed(corpus, out, tiny_model_dir, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert ids_of(out) == list(range(400))
