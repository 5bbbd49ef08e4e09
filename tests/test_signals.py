"""SIGTERM and SIGINT stop `minilm embed` cleanly: exit 143 / 130, one line on stderr
that says to rerun with --resume, no half-written temp files, the manifest marked
'interrupted' and listing only sound shards; and --resume then finishes the job into the
same output an uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO,
    cli,
    embeddings,
    listed_shards,
    manifest,
    model_args,
    output_files,
    write_corpus,
)

ROWS = 20_000
PLAN = ["--shard-rows", "2000", "--chunk-size", "500"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("signals-in") / "corpus.txt", ROWS, seed=11)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, corpus) -> Path:
    out = tmp_path_factory.mktemp("signals-ref") / "out"
    result = cli(["embed", str(corpus), "-o", str(out), *PLAN, *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_resume_finishes(tmp_path, tiny_model_dir, corpus, reference, sig, code):
    out = tmp_path / "out"
    args = [str(corpus), "-o", str(out), *PLAN, *model_args(tiny_model_dir)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("MINILM_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "minilm_cli.cli", "embed", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    deadline = time.monotonic() + 120
    while listed_shards(out) < 2:  # well inside the run: shards done, more to come
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
        assert time.monotonic() < deadline, "run too slow to reach its second shard"
        time.sleep(0.002)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    err = stderr.decode(errors="replace")

    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback
    assert lines[0].startswith("minilm: error: interrupted"), lines[0]
    assert signal.Signals(sig).name in lines[0]
    assert "--resume" in lines[0]
    assert stdout == b""

    assert not list(out.rglob("*.tmp")), "temp files left behind"
    doc = manifest(out)
    assert doc["status"] == "interrupted"
    kept = len(doc["shards"])
    assert 2 <= kept < 10
    on_disk = sorted(p.name for p in out.glob("part-*"))
    assert on_disk == [s["files"]["data"]["path"] for s in doc["shards"]]  # exactly the listed shards
    check = cli(["verify", str(out)])
    assert check.exit_code == 4
    problems = [line for line in check.output.splitlines() if line.startswith("  - ")]
    assert problems == ["  - manifest.json: run is 'interrupted', not complete; rerun it with --resume"], (
        check.output
    )

    resumed = cli(["embed", *args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming after {kept} finished shard(s), {kept * 2000} rows" in resumed.stderr
    assert output_files(out) == output_files(reference)
    assert manifest(out)["shards"] == manifest(reference)["shards"]
    assert manifest(out)["status"] == "complete"
    got_ids, got = embeddings(out)
    want_ids, want = embeddings(reference)
    assert got_ids == want_ids == list(range(ROWS))
    assert np.array_equal(got, want)
    final = cli(["verify", str(out)])
    assert final.exit_code == 0, final.output


def test_sigterm_in_process_run_is_reported_as_interrupted(tmp_path, tiny_model_dir):
    """The handler is installed by the pipeline itself: a SIGTERM delivered to an
    in-process run (CliRunner) also ends in exit 143 and an 'interrupted' manifest."""
    import threading

    src = write_corpus(tmp_path / "in.txt", 12000, seed=12)
    out = tmp_path / "out"

    def send_when_running() -> None:
        deadline = time.monotonic() + 60
        while listed_shards(out) < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGTERM)

    def harmless(signum, frame) -> None:  # a SIGTERM outside the run must not end pytest
        pass

    previous = signal.signal(signal.SIGTERM, harmless)
    sender = threading.Thread(target=send_when_running, daemon=True)
    sender.start()
    try:
        result = cli(
            [
                "embed",
                str(src),
                "-o",
                str(out),
                "--shard-rows",
                "500",
                "--chunk-size",
                "100",
                *model_args(tiny_model_dir),
            ]
        )
        sender.join()
        assert signal.getsignal(signal.SIGTERM) is harmless  # the run restored the handler it found
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 143, result.output
    assert "--resume" in result.stderr
    assert manifest(out)["status"] == "interrupted"
    assert not list(out.rglob("*.tmp"))


def test_interrupted_manifest_totals_match_its_shards(tmp_path, tiny_model_dir, monkeypatch):
    """SIGTERM (a real one, to this process) arrives while the third shard is two chunks in:
    the manifest lists two shards, and its totals should say what those two hold."""
    from minilm_cli.output import ShardWriter

    src = write_corpus(tmp_path / "in.txt", 1500, seed=13)
    out = tmp_path / "out"
    real_write = ShardWriter.write
    chunks = []

    def write(self, chunk, embeddings):
        record = real_write(self, chunk, embeddings)
        chunks.append(len(chunk))
        if len(chunks) == 8:  # shards are 3 chunks: 2 shards done, 2 chunks of the third written
            os.kill(os.getpid(), signal.SIGTERM)
            # Hold this (the writer) thread until the main thread has taken the signal and
            # asked the writer to stop: no later chunk can be written, whatever the timing.
            assert threading.current_thread().stop.wait(60)
        return record

    def harmless(signum, frame) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, harmless)
    monkeypatch.setattr(ShardWriter, "write", write)
    try:
        result = cli(
            [
                "embed",
                str(src),
                "-o",
                str(out),
                "--shard-rows",
                "300",
                "--chunk-size",
                "100",
                *model_args(tiny_model_dir),
            ]
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        monkeypatch.undo()
    assert result.exit_code == 143, result.output
    doc = manifest(out)
    assert doc["status"] == "interrupted"
    assert [s["rows"] for s in doc["shards"]] == [300, 300]
    assert doc["totals"]["shards"] == 2
    assert doc["totals"]["rows"] == 600
    assert doc["totals"]["tokens"] == sum(s["tokens"] for s in doc["shards"])


SMALL = ["--shard-rows", "500", "--chunk-size", "250"]


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_model_dir):
    """A 3,000-row corpus and its uninterrupted output."""
    root = tmp_path_factory.mktemp("signals-small")
    src = write_corpus(root / "in.txt", 3000, seed=14)
    out = root / "ref"
    result = cli(["embed", str(src), "-o", str(out), *SMALL, *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    return src, out


def _signals_at(point: str, count: int, monkeypatch) -> None:
    """Send ``count`` SIGTERMs to this process at a chosen point of the run (the third time it
    is reached): inside a model batch, inside a shard's commit, or while the main thread waits
    for the writer at the end of the run."""
    from minilm_cli.model import Embedder
    from minilm_cli.output import OutputSession
    from minilm_cli.storage.local import LocalPendingFile

    reached = []

    def burst() -> None:
        def send() -> None:
            for _ in range(count):
                os.kill(os.getpid(), signal.SIGTERM)

        sender = threading.Thread(target=send)  # all of them, even once the first has landed
        sender.start()
        sender.join()

    def wrap(cls, name, when=lambda *a: True):
        real = getattr(cls, name)

        def patched(self, *args, **kwargs):
            if when(self, *args):
                reached.append(1)
                if len(reached) == 3:
                    burst()
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, patched)

    if point == "batch":
        wrap(Embedder, "run")
    elif point == "publish":
        wrap(LocalPendingFile, "commit", lambda self: self.path.endswith(".parquet"))
    else:  # the last chunk: the main thread is in writer.close(), waiting for it
        wrap(OutputSession, "write", lambda self, chunk, vectors: chunk.record_end == 3000)
        reached.extend([1, 1])


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("point", ["batch", "publish", "join"])
def test_repeated_signals_never_lose_or_repeat_a_row(
    tmp_path, tiny_model_dir, small, monkeypatch, point, count
):
    src, reference = small
    out = tmp_path / "out"
    args = ["embed", str(src), "-o", str(out), *SMALL, *model_args(tiny_model_dir), "-q"]
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # signals after the run
    try:
        _signals_at(point, count, monkeypatch)
        first = cli(args)
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGTERM, previous)
    assert first.exit_code in (0, 143), first.output
    assert not list(out.rglob("*.tmp")), "temp files left behind"
    doc = manifest(out)
    assert doc["status"] == ("complete" if first.exit_code == 0 else "interrupted")
    assert [s["first_row"] for s in doc["shards"]] == [500 * i for i in range(len(doc["shards"]))]
    if point != "join":
        assert first.exit_code == 143  # a signal inside the hot loop stops the run

    resumed = cli([*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert output_files(out) == output_files(reference)
    got_ids, got = embeddings(out)
    want_ids, want = embeddings(reference)
    assert got_ids == want_ids == list(range(3000))
    assert got.tobytes() == want.tobytes()
