"""One writer per OUTPUT: a second run into an OUTPUT a live run holds is refused (exit 3,
'in use by another run') and changes nothing; once the holder dies, even by SIGKILL, the
kernel has dropped its flock and a --resume run is accepted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, cli, listed_files, listed_shards, manifest, model_args, sha256, write_corpus

from minilm_cli.errors import OutputConflict
from minilm_cli.output.layout import Layout
from minilm_cli.output.outdir import OutputDir

ROWS = 20_000
PLAN = ["--shard-rows", "2000", "--chunk-size", "500"]


@pytest.mark.slow
def test_second_writer_refused_then_lock_freed_by_sigkill(tmp_path, tiny_model_dir):
    src = write_corpus(tmp_path / "in.txt", ROWS, seed=21)
    out = tmp_path / "out"
    args = [str(src), "-o", str(out), *PLAN, *model_args(tiny_model_dir), "-q"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "minilm_cli.cli", "embed", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 120
        while listed_shards(out) < 1:
            assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
            assert time.monotonic() < deadline
            time.sleep(0.002)

        # While the first run lives, every other writer is turned away, whatever its flags.
        for extra in ([], ["--resume"], ["--overwrite"]):
            before = listed_files(out)
            second = cli(["embed", *args, *extra])
            assert second.exit_code == 3, second.output
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert "in use by another run" in lines[0]
            assert f"(pid {proc.pid})" in lines[0]
            for path, digest in before.items():  # --overwrite did not remove a thing
                assert sha256(out / path) == digest
            assert proc.poll() is None, "the refused run disturbed the live one"

        # The library-level lock says the same.
        with pytest.raises(OutputConflict, match="in use by another run"):
            OutputDir(Layout(str(out))).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert manifest(out)["status"] == "running"  # the dead run had no chance to say anything
    assert (out / ".manifest.json.lock").read_text().strip() == str(proc.pid)  # stale pid, no lock
    dead = cli(["verify", str(out)])  # no run is alive: say so, and how to continue
    assert dead.exit_code == 4, dead.output
    assert "manifest.json: run was interrupted" in dead.output, dead.output
    assert "rerun the same command with --resume to continue" in dead.output
    assert "in progress" not in dead.output

    resumed = cli(["embed", *args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    doc = manifest(out)
    assert doc["status"] == "complete"
    assert doc["totals"]["rows"] == ROWS
    assert len(doc["shards"]) == ROWS // 2000
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output


def test_lock_is_released_after_a_run_and_after_a_failed_one(tmp_path, tiny_model_dir):
    """In one process, run after run: a finished run and a failed one both let go."""
    src = write_corpus(tmp_path / "in.txt", 120, seed=22)
    out = tmp_path / "out"
    base = ["embed", str(src), "-o", str(out), "--shard-rows", "50", *model_args(tiny_model_dir), "-q"]
    assert cli(base).exit_code == 0
    refused = cli(base)  # fails (not empty), after taking the lock
    assert refused.exit_code == 3
    assert "not empty" in refused.stderr
    again = cli([*base, "--overwrite"])
    assert again.exit_code == 0, again.output
    holder = OutputDir(Layout(str(out)))
    holder.acquire()
    try:
        busy = cli([*base, "--resume"])
        assert busy.exit_code == 3
        assert f"in use by another run (pid {os.getpid()})" in busy.stderr
    finally:
        holder.release()
    assert cli([*base, "--resume"]).exit_code == 0
