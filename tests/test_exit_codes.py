"""Real processes end with their documented exit code: under contention (no abort from a
native thread pool after the result is printed), and when stdout's reader goes away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, cli, model_args, write_corpus

REPO = Path(__file__).resolve().parent.parent
PAIRS = 50


def _env() -> dict[str, str]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("MINILM_DEBUG", None)
    return env


def _start(args: list[str], stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "minilm_cli.cli", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_model_dir):
    """Two sound 3-row outputs, one whose manifest lies about its rows, and a 2-part sharded run."""
    base = tmp_path_factory.mktemp("exits")
    corpus = base / "in.txt"
    corpus.write_text("hello world\nfoo bar\nbaz qux\n")
    made = {}
    for name in ("a", "b", "damaged"):
        made[name] = base / name
        assert cli(["embed", str(corpus), "-o", str(made[name]), *model_args(tiny_model_dir)]).exit_code == 0
    doc = json.loads((made["damaged"] / "manifest.json").read_text())
    doc["shards"][0]["rows"] += 1
    (made["damaged"] / "manifest.json").write_text(json.dumps(doc))
    made["parts"] = base / "parts"
    for index in (0, 1):
        args = ["--num-shards", "2", "--shard-index", str(index)]
        result = cli(["embed", str(corpus), "-o", str(made["parts"]), *args, *model_args(tiny_model_dir)])
        assert result.exit_code == 0, result.output
    made["corpus"] = corpus
    made["base"] = base
    return made


@pytest.mark.slow
def test_concurrent_commands_end_with_their_documented_codes(outputs, tiny_model_dir):
    """Two `verify` runs started together, beside a third command, PAIRS times over. Before
    the fix about one run in twenty under load ended with `terminate called without an active
    exception` and exit 134 after printing `ok:` (an Arrow pool thread outliving the interpreter)."""
    model = model_args(tiny_model_dir)
    beside = [
        (["verify", str(outputs["damaged"])], 4),
        (["info", "--model", tiny_model_dir, "--device", "cpu", "--precision", "fp32"], 0),
        (["merge-manifests", str(outputs["parts"])], 0),
        None,  # a tiny embed into a fresh folder, below
    ]
    failures = []
    for i in range(PAIRS):
        third = beside[i % len(beside)]
        if third is None:
            third = (["embed", str(outputs["corpus"]), "-o", str(outputs["base"] / f"e{i}"), *model], 0)
        runs = [(["verify", str(outputs["a"])], 0), (["verify", str(outputs["b"])], 0), third]
        procs = [(args, code, _start(args)) for args, code in runs]
        for args, code, proc in procs:
            out, err = proc.communicate(timeout=120)
            if proc.returncode != code:
                failures.append(f"{args[0]} exit {proc.returncode} (expected {code}): {err.decode()[-300:]}")
            elif args[0] == "verify" and code == 0 and not out.startswith(b"ok: "):
                failures.append(f"verify printed {out[:200]!r}")
    assert not failures, f"{len(failures)} of {PAIRS * 3} runs: " + "; ".join(failures[:5])


def _closed_early(
    tmp_path: Path, model: str, rows: int, keep: int, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`minilm embed CORPUS -o - | head -KEEP`, with this test as `head`."""
    corpus = write_corpus(tmp_path / "in.txt", rows, seed=7)
    proc = _start(["embed", str(corpus), "-o", "-", *model_args(model), *extra])
    for _ in range(keep):
        assert proc.stdout.readline().startswith(b"{")
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, b"", err)


@pytest.mark.slow
def test_reader_closes_during_the_only_chunk(tmp_path, tiny_model_dir):
    """300 rows of JSON (about 200 kB) in one chunk, more than a pipe holds: `| head -1`."""
    done = _closed_early(tmp_path, tiny_model_dir, rows=300, keep=1)
    assert (done.returncode, done.stderr) == (141, b"")


@pytest.mark.slow
def test_reader_closes_during_the_last_chunk(tmp_path, tiny_model_dir):
    """2,000 rows in chunks of 1,000: `| head -1500` closes in the middle of the last write,
    which used to be cut short without an error under PYTHONUNBUFFERED (exit 0, a summary)."""
    done = _closed_early(tmp_path, tiny_model_dir, rows=2000, keep=1500, extra=("--chunk-size", "1000"))
    assert (done.returncode, done.stderr) == (141, b"")


def test_every_row_reaches_a_reader_that_stays(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "in.txt", 2000, seed=7)
    args = ["embed", str(corpus), "-o", "-", "-q", *model_args(tiny_model_dir), "--chunk-size", "1000"]
    proc = _start(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(2000))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (Linux)")
def test_no_resume_hint_when_nothing_was_written(outputs, tiny_model_dir):
    """OUTPUT cannot even be created: there are no finished shards to keep or to --resume."""
    result = cli(["embed", str(outputs["corpus"]), "-o", "/proc/minilm-out", *model_args(tiny_model_dir)])
    line = assert_one_line_error(result, 1, "/proc/minilm-out")
    assert "--resume" not in line and "finished shards" not in line
