"""Faults from outside: the disk fills up, OUTPUT stops being writable, an input vanishes
halfway. Each ends the run with one clear line and a non-zero exit; the shards finished
before the fault stay listed and sound; and after the fault is fixed, --resume completes
the output to exactly what an uninterrupted run writes."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO,
    assert_one_line_error,
    cli,
    embeddings,
    manifest,
    model_args,
    output_files,
    write_corpus,
)

import minilm_cli.pipeline.stages
from minilm_cli.errors import MinilmError
from minilm_cli.storage.local import LocalPendingFile, LocalStorage

ROWS = 3000
PLAN = ["--shard-rows", "500", "--chunk-size", "250"]
NOT_COMPLETE = "manifest.json: run is '{}', not complete; rerun it with --resume"
NO_LONGER_RUNNING = (
    "manifest.json: run was interrupted (status 'running', no process holds its lock); "
    "rerun the same command with --resume to continue"
)


def verify_problems(out: Path) -> list[str]:
    result = cli(["verify", str(out)])
    assert result.exit_code in (0, 4), result.output
    return [line[4:] for line in result.output.splitlines() if line.startswith("  - ")]


def assert_same_output(got: Path, want: Path) -> None:
    assert output_files(got) == output_files(want)
    assert manifest(got)["status"] == "complete"
    assert manifest(got)["shards"] == manifest(want)["shards"]
    got_ids, got_emb = embeddings(got)
    want_ids, want_emb = embeddings(want)
    assert got_ids == want_ids
    assert np.array_equal(got_emb, want_emb)
    assert verify_problems(got) == []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("faults-in") / "corpus.txt", ROWS, seed=31)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, corpus) -> Path:
    out = tmp_path_factory.mktemp("faults-ref") / "out"
    result = cli(["embed", str(corpus), "-o", str(out), *PLAN, *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert len(manifest(out)["shards"]) == 6
    return out


# ---------------------------------------------------------------------------- disk full


def test_disk_full_while_publishing_third_shard(tmp_path, tiny_model_dir, corpus, reference, monkeypatch):
    out = tmp_path / "out"
    args = ["embed", str(corpus), "-o", str(out), *PLAN, *model_args(tiny_model_dir)]
    real_commit = LocalPendingFile.commit
    calls = []

    def commit(self) -> None:
        name = os.path.basename(self.path)
        if name.startswith("part-") and name.endswith(".parquet"):
            calls.append(name)
            if name.startswith("part-00002"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.temp)
        real_commit(self)

    monkeypatch.setattr(LocalPendingFile, "commit", commit)
    result = cli(args)
    monkeypatch.undo()

    line = assert_one_line_error(result, 1, "no space left on device", "--resume")
    assert line.startswith("minilm: error: no space left on device (")
    assert "part-00002.parquet.tmp" in line
    assert calls == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    doc = manifest(out)
    assert doc["status"] == "failed"
    assert [s["index"] for s in doc["shards"]] == [0, 1]
    assert not list(out.rglob("*.tmp")), "the shard that hit the full disk was not cleaned up"
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert verify_problems(out) == [NOT_COMPLETE.format("failed")]  # finished shards are sound

    resumed = cli([*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after 2 finished shard(s), 1000 rows" in resumed.stderr
    assert_same_output(out, reference)


def test_disk_full_while_saving_the_manifest(tmp_path, tiny_model_dir, corpus, reference, monkeypatch):
    """The disk fills up just as shard 2 is published: the manifest cannot be rewritten (a
    half temp file is all that lands) and stays as it was, listing shards 0 and 1."""
    out = tmp_path / "out"
    args = ["embed", str(corpus), "-o", str(out), *PLAN, *model_args(tiny_model_dir)]
    real_write_atomic = LocalStorage.write_atomic
    full = []

    def write_atomic(self, final: str, data: bytes) -> None:
        if full or b'"part-00002.parquet"' in data:  # the shard's commit marker, then the header
            full.append(final)
            tmp = Path(final).with_name(f".{Path(final).name}.tmp")
            tmp.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_atomic(self, final, data)

    monkeypatch.setattr(LocalStorage, "write_atomic", write_atomic)
    result = cli(args)
    monkeypatch.undo()

    assert_one_line_error(result, 1, "no space left on device", "--resume")
    assert len(full) >= 2  # the shard's entry, then the failed run's status: both refused
    doc = manifest(out)  # still the last good manifest, readable
    assert doc["status"] == "running"
    assert [s["index"] for s in doc["shards"]] == [0, 1]
    problems = verify_problems(out)
    assert NO_LONGER_RUNNING in problems
    assert not [p for p in problems if p.startswith("shard ")], problems  # listed shards are sound

    resumed = cli([*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after 2 finished shard(s)" in resumed.stderr
    assert not list(out.rglob("*.tmp"))
    assert_same_output(out, reference)


# ---------------------------------------------------------------------------- permission denied


def unprivileged_command(argv: list[str]) -> list[str]:
    """argv as is, or, for root, under capsh without the capabilities that let root
    ignore file permissions, so that a read-only directory is read-only for it too."""
    if os.geteuid() != 0:
        return argv
    capsh = shutil.which("capsh")
    drop = "--drop=cap_dac_override,cap_dac_read_search"
    if capsh is None or subprocess.run([capsh, drop, "--", "-c", "true"], capture_output=True).returncode:
        pytest.skip(
            "running as root, where chmod cannot make a directory read-only, and no capsh to drop "
            "CAP_DAC_OVERRIDE"
        )
    return [capsh, drop, "--", "-c", 'exec "$0" "$@"', *argv]


@pytest.mark.slow
def test_output_becomes_read_only_mid_run(tmp_path, tiny_model_dir, corpus, reference):
    out = tmp_path / "out"
    args = [str(corpus), "-o", str(out), *PLAN, *model_args(tiny_model_dir)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("MINILM_DEBUG", None)
    argv = unprivileged_command([sys.executable, "-m", "minilm_cli.cli", "embed", *args])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if len(manifest(out)["shards"]) >= 2:
                    break
            except (FileNotFoundError, ValueError, MinilmError):
                pass
            assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
            assert time.monotonic() < deadline
            time.sleep(0.002)
        os.chmod(out, 0o555)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        os.chmod(out, 0o755)
    err = stderr.decode(errors="replace")
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("minilm: error: permission denied"), lines[0]
    assert "rerun with --resume" in lines[0]

    doc = manifest(out)
    kept = len(doc["shards"])
    assert 2 <= kept < 6
    problems = verify_problems(out)
    assert not [p for p in problems if p.startswith("shard ")], problems  # listed shards are sound
    # its end could not be recorded: 'running' with the lock free reads as interrupted
    assert any(p in (NO_LONGER_RUNNING, NOT_COMPLETE.format("failed")) for p in problems), problems

    # Writable again: --resume completes it (and clears what the failed run could not delete).
    resumed = cli(["embed", *args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming after {kept} finished shard(s)" in resumed.stderr
    assert not list(out.rglob("*.tmp"))
    assert_same_output(out, reference)


def test_pyarrow_os_error_names_the_file(tmp_path, tiny_model_dir, corpus, monkeypatch):
    """What pyarrow raises when OUTPUT is read-only (seen for real in the mid-run test, under
    capsh): PermissionError(13, "Failed to open local file '<path>'. Detail: ...") with no
    filename attribute. The one-line error should still say which file."""
    import pyarrow.parquet as pq_module

    class ReadOnlyParquetWriter:
        def __init__(self, where, *args, **kwargs):
            raise PermissionError(
                errno.EACCES, f"Failed to open local file '{where}'. Detail: [errno 13] Permission denied"
            )

    monkeypatch.setattr(pq_module, "ParquetWriter", ReadOnlyParquetWriter)
    out = tmp_path / "out"
    result = cli(["embed", str(corpus), "-o", str(out), *PLAN, *model_args(tiny_model_dir)])
    monkeypatch.undo()
    assert_one_line_error(result, 1, "permission denied", ".part-00000.parquet.tmp")


@pytest.mark.slow
def test_output_read_only_from_the_start(tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o555)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("MINILM_DEBUG", None)
    argv = [
        sys.executable,
        "-m",
        "minilm_cli.cli",
        "embed",
        str(corpus),
        "-o",
        str(out),
        *PLAN,
        *model_args(tiny_model_dir),
    ]
    try:
        proc = subprocess.run(unprivileged_command(argv), capture_output=True, env=env, cwd=REPO, timeout=120)
    finally:
        os.chmod(out, 0o755)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [
        f"minilm: error: permission denied ({out / '.manifest.json.lock'})"  # nothing to --resume
    ]
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------- an input vanishes


def test_input_removed_while_the_run_reads_the_one_before(tmp_path, tiny_model_dir, monkeypatch):
    first = write_corpus(tmp_path / "a.txt", 2500, seed=32)
    second = write_corpus(tmp_path / "b.txt", 700, seed=33)
    away = tmp_path / "elsewhere.txt"
    out, ref = tmp_path / "out", tmp_path / "ref"
    args = ["embed", str(first), str(second), "-o", str(out), *PLAN, *model_args(tiny_model_dir)]
    clean = cli(["embed", str(first), str(second), "-o", str(ref), *PLAN, *model_args(tiny_model_dir), "-q"])
    assert clean.exit_code == 0, clean.output

    real_read_file = minilm_cli.pipeline.stages.read_file

    def read_file(f, *rest, **kw):
        if f.path == str(first):
            os.rename(second, away)  # keeps size and mtime, so it can be put back unchanged
        return real_read_file(f, *rest, **kw)

    monkeypatch.setattr(minilm_cli.pipeline.stages, "read_file", read_file)
    result = cli(args)
    monkeypatch.undo()

    assert_one_line_error(result, 2, f"input not found: {second}")
    doc = manifest(out)
    assert doc["status"] == "failed"
    kept = len(doc["shards"])
    assert kept >= 1  # the first file's shards were finished before the second was opened
    assert verify_problems(out) == [NOT_COMPLETE.format("failed")]

    # While the file is still missing, --resume refuses with one line, and keeps the shards.
    missing = cli([*args, "--resume"])
    assert_one_line_error(missing, 2, f"input not found: {second}")
    assert len(manifest(out)["shards"]) == kept

    os.rename(away, second)
    resumed = cli([*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming after {kept} finished shard(s)" in resumed.stderr
    assert_same_output(out, ref)
    assert manifest(out)["totals"]["rows"] == 3200
