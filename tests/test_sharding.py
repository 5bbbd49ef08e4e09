"""Static sharding (--num-shards/--shard-index), merge-manifests, and multi-device workers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import listed_shards, manifest

import minilm_cli
from minilm_cli.cli import main
from minilm_cli.config import EmbedConfig
from minilm_cli.errors import InputError
from minilm_cli.output import merge_manifests, verify_output
from minilm_cli.pipeline import run_job
from minilm_cli.sharding import plan_splits, shard_from_env
from minilm_cli.sources import resolve_inputs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts) -> list[str]:
    """Parquet with 8 row groups, a CSV, a JSONL with a blank line, and a text file."""
    folder = tmp_path_factory.mktemp("shard-inputs")
    texts = sample_texts
    pq.write_table(pa.table({"text": texts[:200]}), folder / "a.parquet", row_group_size=25)
    with open(folder / "b.csv", "w", encoding="utf-8") as f:
        f.write("text,n\n")
        for i, t in enumerate(texts[200:300]):
            f.write('"' + t.replace('"', '""') + f'",{i}\n')
    with open(folder / "c.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(texts[:150]):
            f.write(json.dumps({"text": t}) + "\n")
            if i == 70:
                f.write("\n")
    (folder / "d.txt").write_text("\n".join(texts[100:220]) + "\n", encoding="utf-8")
    return [str(folder / n) for n in ("a.parquet", "b.csv", "c.jsonl", "d.txt")]


def _embed(inputs, out, embedder, **kw) -> None:
    cfg = EmbedConfig(inputs=inputs, output=str(out), quiet=True, shard_rows=60, chunk_size=40, **kw)
    run_job(cfg, embedder=embedder)


def _read(out) -> tuple[list, np.ndarray]:
    table = minilm_cli.open_dataset(out).to_table()
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return table.column("id").to_pylist(), vectors


@pytest.fixture(scope="module")
def single_run(corpus, tiny_embedder, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    _embed(corpus, out, tiny_embedder)
    return _read(out)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_sharded_runs_cover_every_row_once(n, corpus, tiny_embedder, single_run, tmp_path):
    out = tmp_path / "out"
    for index in range(n):
        _embed(corpus, out, tiny_embedder, num_shards=n, shard_index=index)
    report = verify_output(out)
    assert report.ok, report.text()
    if n > 1:
        assert not (out / "manifest.json").exists()
        path, problems = merge_manifests(out)
        assert problems == []
        assert verify_output(out).ok
    ids, vectors = _read(out)
    single_ids, single_vectors = single_run
    assert len(ids) == len(set(ids)) == len(single_ids)
    assert ids == single_ids  # same rows, same order once parts are read in index order
    np.testing.assert_allclose(vectors, single_vectors, atol=1e-5)


def test_plan_splits_tiles_each_file(corpus):
    files = resolve_inputs(corpus)
    for n in (2, 3, 7):
        plan = plan_splits(files, n)
        assert len(plan) == n
        by_file: dict[str, list] = {}
        for splits in plan:
            for s in splits:
                by_file.setdefault(s.file.path, []).append(s)
        assert set(by_file) == {f.path for f in files}
        for pieces in by_file.values():
            pieces.sort(key=lambda s: s.start)
            assert pieces[0].start == 0
            assert pieces[-1].end == pieces[-1].extent
            assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))


def test_merge_reports_missing_part(corpus, tiny_embedder, tmp_path):
    out = tmp_path / "out"
    for index in (0, 2):
        _embed(corpus, out, tiny_embedder, num_shards=3, shard_index=index)
    _, problems = merge_manifests(out)
    assert any("missing" in p and "[1]" in p for p in problems)
    report = verify_output(out)
    assert not report.ok and any("missing" in p for p in report.problems)
    result = CliRunner().invoke(main, ["merge-manifests", str(out)])
    assert result.exit_code == 4
    assert not (out / "manifest.json").exists()


def test_shard_from_env_precedence():
    assert shard_from_env(None, None, {}) == (1, 0)
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"}
    assert shard_from_env(None, None, slurm) == (4, 2)
    assert shard_from_env(None, None, {"RANK": "1", "WORLD_SIZE": "3"}) == (3, 1)
    assert shard_from_env(8, None, {"JOB_COMPLETION_INDEX": "6"}) == (8, 6)
    assert shard_from_env(2, 0, {"RANK": "1", "WORLD_SIZE": "3"}) == (2, 0)  # flags win
    with pytest.raises(InputError):
        shard_from_env(2, 2, {})
    with pytest.raises(InputError):  # Kubernetes gives no count: index 6 of the default 1
        shard_from_env(None, None, {"JOB_COMPLETION_INDEX": "6"})


def test_shard_index_killed_and_resumed_alone(tiny_model_dir, tmp_path):
    lines = [f"row {i} " + "word " * (i % 17) for i in range(30000)]
    source = tmp_path / "big.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = [
        str(source),
        "--model",
        tiny_model_dir,
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--shard-rows",
        "2000",
        "--chunk-size",
        "500",
        "--num-shards",
        "2",
        "--quiet",
    ]
    cmd = [sys.executable, "-m", "minilm_cli.cli", "embed"]
    for index in (0, 1):
        subprocess.run(cmd + args + ["-o", str(clean), "--shard-index", str(index)], check=True)
    subprocess.run(cmd + args + ["-o", str(out), "--shard-index", "0"], check=True)
    proc = subprocess.Popen(cmd + args + ["-o", str(out), "--shard-index", "1"])
    part = out / "manifest-00001-of-00002.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        if listed_shards(out, part.name) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert manifest(out, part.name)["status"] == "running"
    subprocess.run(cmd + args + ["-o", str(out), "--shard-index", "1", "--resume"], check=True)
    assert merge_manifests(out)[1] == []
    assert verify_output(out).ok
    ids, vectors = _read(out)
    clean_ids, clean_vectors = _read(clean) if merge_manifests(clean)[1] == [] else (None, None)
    assert ids == clean_ids == list(range(30000))
    assert np.array_equal(vectors, clean_vectors)


def test_cpu_workers_stand_in_for_devices(corpus, tiny_model_dir, single_run, tmp_path, monkeypatch):
    """Deterministic, whatever the load: worker 1 is held before its output preparation
    until worker 0 has a shard in flight (the interleaving that used to lose worker 0's
    shard), through the MINILM_TEST_HOOK points the spawned workers inherit."""
    out, hooks = tmp_path / "out", tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "part-00001-.prepare.hold").touch()
    monkeypatch.setenv("MINILM_TEST_HOOK", str(hooks))

    def release_worker_one() -> None:
        deadline = time.monotonic() + 300
        while not (hooks / "part-00000-.in-flight.reached").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        (hooks / "part-00001-.prepare.go").touch()

    releaser = threading.Thread(target=release_worker_one, daemon=True)
    releaser.start()
    result = CliRunner().invoke(
        main,
        [
            "embed",
            *corpus,
            "-o",
            str(out),
            "--model",
            tiny_model_dir,
            "--device",
            "cpu,cpu",
            "--precision",
            "fp32",
            "--shard-rows",
            "60",
            "--chunk-size",
            "40",
        ],
    )
    releaser.join(timeout=5)
    assert result.exit_code == 0, result.output
    assert (hooks / "part-00001-.prepare.reached").exists()
    assert (out / "manifest.json").exists()
    assert sorted(p.name for p in out.glob("manifest-*")) == [
        "manifest-00000-of-00002.json",
        "manifest-00001-of-00002.json",
    ]
    assert verify_output(out).ok
    ids, vectors = _read(out)
    assert ids == single_run[0]
    np.testing.assert_allclose(vectors, single_run[1], atol=1e-5)


def test_stdin_cannot_be_sharded(tmp_path):
    out = tmp_path / "x"
    args = ["embed", "-", "-o", str(out), "--num-shards", "2", "--shard-index", "0"]
    result = CliRunner().invoke(main, args, input="a\n")
    assert result.exit_code == 2
    assert "stdin cannot be sharded" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
