"""Crash safety of `minilm embed`: a run killed with SIGKILL at any point, then rerun with
--resume, ends with the output a clean uninterrupted run would have written, bit for bit
(CPU fp32). And --resume refuses, with exit 3 and one line, when anything that decides
the output's bytes has changed since the manifest was written.

The killed runs are real subprocesses; the reference and resumed runs run in-process
(CliRunner) to keep the suite fast. Every run uses one torch thread, so that in-process
and subprocess runs do exactly the same arithmetic.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, WORDS, assert_one_line_error, cli, listed_shards, manifest, model_args, sha256

from minilm_cli.errors import Interrupted
from minilm_cli.output import ShardWriter

# Kill-test corpus: long enough that a subprocess run takes a few seconds.
KILL_ROWS = 20_000
KILL_PLAN = ["--shard-rows", "2000", "--chunk-size", "500"]


# ---------------------------------------------------------------------------- helpers


def write_corpus(path: Path, rows: int, seed: int = 0, blank_every: int | None = None) -> Path:
    """Short deterministic text lines; with ``blank_every``, some lines are Unicode whitespace
    only (records, rejected as empty text under --on-error skip; an ASCII-blank line is no
    record at all), at irregular spacing."""
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        if blank_every and rng.randrange(blank_every) == 0:
            lines.append(rng.choice(["\u00a0", "\u3000", " \u2003 "]))
        else:
            lines.append(" ".join(rng.choices(WORDS, k=rng.randint(2, 10))))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("MINILM_DEBUG", None)
    return env


def spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "minilm_cli.cli", "embed", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
        cwd=REPO,
    )


def wait_until(predicate, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(
                f"run exited ({proc.returncode}) before {what}: {err.decode(errors='replace')[-2000:]}"
            )
        time.sleep(0.002)
    proc.kill()
    proc.communicate()
    pytest.fail(f"timed out waiting for {what}")


def temp_parts(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob(".part-*.tmp") if ".minilm-shards" not in p.parts)


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def output_files(out: Path) -> dict[str, str]:
    """Every file of the output but the manifest and the lock, with its sha256."""
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name not in ("manifest.json", ".manifest.json.lock"):
            if ".minilm-shards" not in p.parts:  # commit markers of a live run
                files[str(p.relative_to(out))] = sha256(p)
    return files


def read_embeddings(out: Path) -> tuple[list, np.ndarray]:
    """(ids, embeddings) over the manifest's shards, in order."""
    doc = manifest(out)
    ids: list = []
    blocks = []
    for shard in doc["shards"]:
        files = shard["files"]
        if "data" in files:
            table = pq.read_table(out / files["data"]["path"])
            column = table.column("embedding").combine_chunks()
            blocks.append(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size))
        else:
            table = pq.read_table(out / files["metadata"]["path"])
            blocks.append(np.load(out / files["embeddings"]["path"]))
        ids += table.column("id").to_pylist()
    return ids, np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)


def assert_same_output(got: Path, want: Path) -> None:
    """``got`` is exactly the output of the clean run ``want``: names, bytes, ids, embeddings."""
    assert output_files(got) == output_files(want)  # same shard names, same sha256, no leftovers
    g, w = manifest(got), manifest(want)
    assert g["status"] == "complete"
    assert g["shards"] == w["shards"]  # rows, rejected, record_end, files with sha256
    for key in ("rows", "rejected", "shards", "truncated", "tokens"):
        assert g["totals"][key] == w["totals"][key], key
    got_ids, got_emb = read_embeddings(got)
    want_ids, want_emb = read_embeddings(want)
    assert got_ids == want_ids
    assert got_emb.dtype == want_emb.dtype
    assert np.array_equal(got_emb, want_emb)
    verify = cli(["verify", str(got)])
    assert verify.exit_code == 0, verify.output
    assert verify.output.startswith("ok:")


def reject_lines(out: Path) -> list[dict]:
    lines = []
    for p in sorted((out / "rejects").glob("part-*.jsonl")) if (out / "rejects").is_dir() else []:
        lines += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    return lines


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("resume-in") / "corpus.txt", KILL_ROWS, seed=1)


@pytest.fixture(scope="module")
def dirty_corpus(tmp_path_factory) -> Path:
    """About one line in 40 is empty or blank: rejects land in every shard."""
    return write_corpus(
        tmp_path_factory.mktemp("resume-dirty") / "dirty.txt", KILL_ROWS, seed=2, blank_every=40
    )


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_model_dir, corpus, dirty_corpus):
    """Clean uninterrupted outputs, built lazily, one per (layout, corpus, flags)."""
    root = tmp_path_factory.mktemp("resume-ref")
    built: dict[tuple, Path] = {}

    def get(fmt: str, dirty: bool = False) -> Path:
        key = (fmt, dirty)
        if key not in built:
            out = root / f"{fmt}-{'dirty' if dirty else 'clean'}"
            src = dirty_corpus if dirty else corpus
            extra = ["--on-error", "skip"] if dirty else []
            result = cli(
                [
                    "embed",
                    str(src),
                    "-o",
                    str(out),
                    "--format",
                    fmt,
                    *KILL_PLAN,
                    *extra,
                    *model_args(tiny_model_dir),
                    "-q",
                ]
            )
            assert result.exit_code == 0, result.output
            built[key] = out
        return built[key]

    return get


def kill_args(src: Path, out: Path, fmt: str, model: str, extra: list[str] = ()) -> list[str]:
    return [str(src), "-o", str(out), "--format", fmt, *KILL_PLAN, *extra, *model_args(model), "-q"]


# ---------------------------------------------------------------------------- SIGKILL, then --resume

KILL_POINTS = [
    ("parquet", "before-first-shard"),
    ("parquet", "between-shards"),
    ("parquet", "during-write"),
    ("npy", "between-shards"),
    ("npy", "during-write"),
]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,point", KILL_POINTS, ids=[f"{f}-{p}" for f, p in KILL_POINTS])
def test_sigkill_then_resume_equals_clean_run(tmp_path, tiny_model_dir, corpus, references, fmt, point):
    out = tmp_path / "out"
    args = kill_args(corpus, out, fmt, tiny_model_dir)
    proc = spawn(args)
    if point == "before-first-shard":
        wait_until(lambda: (out / ".manifest.json.lock").exists(), proc, "the lock file appears")
    elif point == "between-shards":
        wait_until(lambda: listed_shards(out) >= 2, proc, "two shards are listed")
    else:
        wait_until(
            lambda: listed_shards(out) >= 2 and bool(temp_parts(out)), proc, "a shard is being written"
        )
    kill9(proc)

    kept = listed_shards(out)
    if point == "before-first-shard":
        assert kept <= 0, "the first shard was already published: the kill came too late"
    else:
        assert kept >= 2
        assert manifest(out)["status"] == "running"  # SIGKILL leaves no chance to say more
    if point == "during-write":
        leftovers = temp_parts(out)
        assert leftovers, "SIGKILL during a write should leave the half-written shard behind"

    # A shard published but not yet in the manifest (the crash window between the two)
    # must be redone too: fake one at the next index with garbage.
    if point == "between-shards":
        stray = out / (f"part-{kept:05d}.parquet" if fmt == "parquet" else f"embeddings/part-{kept:05d}.npy")
        stray.write_bytes(b"half a shard")

    resumed = cli(["embed", *args[:-1], "--resume"])  # same command, not quiet, plus --resume
    assert resumed.exit_code == 0, resumed.output
    if kept > 0:
        assert f"resuming after {kept} finished shard(s)" in resumed.stderr
    assert not temp_parts(out)
    assert_same_output(out, references(fmt))


@pytest.mark.slow
def test_sigkill_then_resume_keeps_every_reject_once(tmp_path, tiny_model_dir, dirty_corpus, references):
    """--on-error skip with rejected rows in every shard: after kill + resume the rejects
    files are exactly the clean run's, no reject lost, none written twice."""
    reference = references("parquet", dirty=True)
    want = reject_lines(reference)
    assert len({r["line"] for r in want}) == len(want) > 100
    assert len(manifest(reference)["shards"]) >= 5
    assert all(s["rejected"] > 0 for s in manifest(reference)["shards"])  # spread across shards

    out = tmp_path / "out"
    args = kill_args(dirty_corpus, out, "parquet", tiny_model_dir, ["--on-error", "skip"])
    proc = spawn(args)
    wait_until(lambda: listed_shards(out) >= 2 and bool(temp_parts(out)), proc, "a shard is being written")
    kill9(proc)
    assert (out / "rejects").is_dir()

    resumed = cli(["embed", *args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    got = reject_lines(out)
    assert got == want
    doc = manifest(out)
    assert doc["totals"]["rejected"] == len(want) == sum(s["rejected"] for s in doc["shards"])
    lines = dirty_corpus.read_text(encoding="utf-8").split("\n")[:-1]
    assert doc["totals"]["rows"] + doc["totals"]["rejected"] == len(lines) == KILL_ROWS
    assert {r["line"] for r in got} == {i + 1 for i, line in enumerate(lines) if not line.strip()}
    assert_same_output(out, reference)


# ---------------------------------------------------------------------------- in-process crash states

SMALL_PLAN = ["--shard-rows", "100", "--chunk-size", "50"]


def partial_run(src: Path, out: Path, model: str, extra: list[str] = (), published: int = 3) -> None:
    """An interrupted output, made in-process: the run stops (as on SIGTERM) right after
    shard ``published - 1`` is renamed into place but before the manifest lists it."""
    real_write = ShardWriter.write

    def write(self, chunk, embeddings):
        record = real_write(self, chunk, embeddings)
        if record is not None and record.index + 1 >= published:
            raise Interrupted(signal.SIGTERM)
        return record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardWriter, "write", write)
        result = cli(["embed", str(src), "-o", str(out), *SMALL_PLAN, *extra, *model_args(model), "-q"])
    assert result.exit_code == 143, result.output
    doc = manifest(out)
    assert doc["status"] == "interrupted"
    assert len(doc["shards"]) == published - 1


def test_resume_redoes_a_shard_published_but_not_listed(tmp_path, tiny_model_dir):
    src = write_corpus(tmp_path / "in.txt", 650, seed=3)
    out, ref = tmp_path / "out", tmp_path / "ref"
    partial_run(src, out, tiny_model_dir)
    assert (out / "part-00002.parquet").exists()  # on disk, not in the manifest
    bad = cli(["verify", str(out)])
    assert bad.exit_code == 4
    assert "part-00002.parquet is not listed" in bad.output

    resumed = cli(["embed", str(src), "-o", str(out), *SMALL_PLAN, *model_args(tiny_model_dir), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after 2 finished shard(s), 200 rows" in resumed.stderr
    clean = cli(["embed", str(src), "-o", str(ref), *SMALL_PLAN, *model_args(tiny_model_dir), "-q"])
    assert clean.exit_code == 0, clean.output
    assert_same_output(out, ref)


@pytest.fixture
def other_model(tmp_path, tiny_model_dir) -> str:
    """A copy of the tiny model with different weights."""
    folder = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, folder)
    perturb_weights(folder)
    return str(folder)


def perturb_weights(folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + np.float32(0.01)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


CHANGED_FLAGS = [
    ("pooling", ["--pooling", "cls"], "pooling"),
    ("max-length", ["--max-length", "16"], "max_length"),
    ("precision", ["--precision", "bf16"], "precision"),
    ("dtype", ["--dtype", "float16"], "dtype"),
    ("format", ["--format", "npy"], "format"),
    ("on-error", ["--on-error", "skip"], "on_error"),
]


def assert_refused(result, *words: str) -> None:
    line = assert_one_line_error(result, 3, *words)
    assert line.startswith("minilm: error: --resume refused"), line


def snapshot(out: Path) -> dict[str, str]:
    files = output_files(out)
    files["manifest.json"] = sha256(out / "manifest.json")
    return files


@pytest.mark.parametrize("name,flags,key", CHANGED_FLAGS, ids=[c[0] for c in CHANGED_FLAGS])
def test_resume_refuses_changed_setting(tmp_path, tiny_model_dir, name, flags, key):
    src = write_corpus(tmp_path / "in.txt", 350, seed=4)
    out = tmp_path / "out"
    partial_run(src, out, tiny_model_dir)
    (out / "part-00002.parquet").unlink()  # leave a plain interrupted output
    before = snapshot(out)
    args = ["embed", str(src), "-o", str(out), *SMALL_PLAN, *model_args(tiny_model_dir), *flags, "--resume"]
    assert_refused(cli(args), f"{key} differs")
    assert snapshot(out) == before  # a refused resume touches nothing


@pytest.mark.parametrize(
    "plan,key",
    [
        (
            ["--shard-rows", "150", "--chunk-size", "50"],
            "plan.shard_rows differs: manifest has 100, this run 150",
        ),
        (
            ["--shard-rows", "100", "--chunk-size", "25"],
            "plan.chunk_size differs: manifest has 50, this run 25",
        ),
    ],
    ids=["shard-rows", "chunk-size"],
)
def test_resume_refuses_changed_plan_and_names_the_flag(tmp_path, tiny_model_dir, plan, key):
    """Regression: the refusal used to say only 'plan differs', with both plans cut at 80
    characters before shard_rows, so the two values printed were identical."""
    src = write_corpus(tmp_path / "in.txt", 350, seed=4)
    out = tmp_path / "out"
    partial_run(src, out, tiny_model_dir)
    (out / "part-00002.parquet").unlink()
    before = snapshot(out)
    result = cli(["embed", str(src), "-o", str(out), *plan, *model_args(tiny_model_dir), "--resume"])
    assert_refused(result, key)
    assert snapshot(out) == before


def test_resume_refuses_other_model(tmp_path, tiny_model_dir, other_model):
    src = write_corpus(tmp_path / "in.txt", 350, seed=4)
    out = tmp_path / "out"
    partial_run(src, out, tiny_model_dir)
    (out / "part-00002.parquet").unlink()
    before = snapshot(out)
    result = cli(["embed", str(src), "-o", str(out), *SMALL_PLAN, *model_args(other_model), "--resume"])
    assert_refused(result, "model differs")
    assert snapshot(out) == before


def test_resume_refuses_model_weights_changed_in_place(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    src = write_corpus(tmp_path / "in.txt", 350, seed=4)
    out = tmp_path / "out"
    partial_run(src, out, str(model))
    perturb_weights(model)  # same folder, same name: only the sha256 tells
    result = cli(["embed", str(src), "-o", str(out), *SMALL_PLAN, *model_args(str(model)), "--resume"])
    assert_refused(result, "model differs")


@pytest.mark.parametrize("change", ["append-line", "touch", "rewrite-same-size"])
def test_resume_refuses_changed_input(tmp_path, tiny_model_dir, change):
    src = write_corpus(tmp_path / "in.txt", 350, seed=4)
    out = tmp_path / "out"
    partial_run(src, out, tiny_model_dir)
    (out / "part-00002.parquet").unlink()
    before = snapshot(out)
    stat = src.stat()
    if change == "append-line":
        with open(src, "a", encoding="utf-8") as f:
            f.write("one more line\n")
        os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # only the size tells
    elif change == "touch":
        os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    else:
        data = bytearray(src.read_bytes())
        data[0] = ord("X") if data[0] != ord("X") else ord("Y")
        time.sleep(0.01)
        src.write_bytes(bytes(data))
    result = cli(["embed", str(src), "-o", str(out), *SMALL_PLAN, *model_args(tiny_model_dir), "--resume"])
    assert_refused(result, f"input {src}")
    assert snapshot(out) == before


def test_resume_refuses_other_input_list(tmp_path, tiny_model_dir):
    src = write_corpus(tmp_path / "in.txt", 350, seed=4)
    extra = write_corpus(tmp_path / "more.txt", 20, seed=5)
    out = tmp_path / "out"
    partial_run(src, out, tiny_model_dir)
    args = [str(src), str(extra), "-o", str(out), *SMALL_PLAN, *model_args(tiny_model_dir), "--resume"]
    assert_refused(cli(["embed", *args]), "inputs differ")


def test_resume_of_complete_output_has_nothing_to_do(tmp_path, tiny_model_dir):
    src = write_corpus(tmp_path / "in.txt", 250, seed=6)
    out = tmp_path / "out"
    args = ["embed", str(src), "-o", str(out), *SMALL_PLAN, *model_args(tiny_model_dir)]
    first = cli(args)
    assert first.exit_code == 0, first.output
    before = snapshot(out)
    mtimes = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".manifest.json.lock"
    }

    again = cli([*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "already complete; nothing to do" in again.stderr
    assert f"added 0 rows; {out} holds 250 rows in 3 shard(s)" in again.stderr
    assert snapshot(out) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten
    assert cli(["verify", str(out)]).exit_code == 0


def test_resume_of_complete_output_removes_markers_a_kill_left(tmp_path, tiny_model_dir):
    """kill -9 after the compacted manifest is written but before the commit markers are
    removed (found by test_crash_random.py): --resume finds the run complete and removes
    the markers, so the finished OUTPUT holds what an unkilled run's holds."""
    from minilm_cli.output.manifest import Manifest

    src = write_corpus(tmp_path / "in.txt", 250, seed=6)
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = [str(src), *SMALL_PLAN, *model_args(tiny_model_dir), "-q"]
    assert cli(["embed", *args, "-o", str(clean)]).exit_code == 0
    with pytest.MonkeyPatch.context() as mp:  # the process dies right after Manifest.save
        mp.setattr(Manifest, "remove_markers", lambda self: None)
        assert cli(["embed", *args, "-o", str(out)]).exit_code == 0
    assert len(list((out / ".minilm-shards").iterdir())) == 3
    assert manifest(out)["status"] == "complete"

    again = cli(["embed", *args, "-o", str(out), "--resume"])
    assert again.exit_code == 0, again.output
    assert not (out / ".minilm-shards").exists()

    def every_name(root: Path) -> set[str]:  # markers and key files too, not only the shards
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".manifest.json.lock"}

    assert every_name(out) == every_name(clean)
    assert output_files(out) == output_files(clean)
    assert cli(["verify", str(out)]).exit_code == 0


def test_resume_without_manifest_is_refused(tmp_path, tiny_model_dir):
    src = write_corpus(tmp_path / "in.txt", 50, seed=7)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's file")
    result = cli(["embed", str(src), "-o", str(out), *model_args(tiny_model_dir), "--resume"])
    assert result.exit_code == 3, result.output
    assert "manifest.json not found" in result.stderr
    assert (out / "notes.txt").read_text() == "someone else's file"


def write_mixed_inputs(folder: Path, kind: str) -> list[Path]:
    """Three inputs of odd sizes with bad rows of every reader-level kind sprinkled in."""
    rng = random.Random(8)
    paths = []
    for n, rows in enumerate((137, 61, 203)):
        records = []
        for _ in range(rows):
            text = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
            roll = rng.randrange(12)
            records.append((roll, text))
        if kind == "txt":
            body = "\n".join("" if roll == 0 else "  " if roll == 1 else t for roll, t in records) + "\n"
            path = folder / f"in{n}.txt"
        elif kind == "jsonl":
            lines = []
            for roll, t in records:
                lines.append(
                    {0: "{not json", 1: '{"text": ""}', 2: "[1]", 3: ""}.get(roll) or json.dumps({"text": t})
                )
            body = "\n".join(lines) + "\n"
            path = folder / f"in{n}.jsonl"
        else:
            lines = ["text,n"]
            for k, (roll, t) in enumerate(records):
                lines.append({0: f"{k}", 1: f'"",{k}', 2: f"a,b,{k}"}.get(roll) or f'"{t}",{k}')
            body = "\n".join(lines) + "\n"
            path = folder / f"in{n}.csv"
        path.write_text(body, encoding="utf-8")
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv"])
@pytest.mark.parametrize("published", [1, 3, 7])
def test_resume_across_files_and_rejects_equals_clean_run(tmp_path, tiny_model_dir, kind, published):
    """Interrupted at various shards of a three-file input (so at file boundaries and in the
    middle of files), with rejects of every kind the reader knows: resumed output == clean."""
    srcs = write_mixed_inputs(tmp_path, kind)
    plan = ["--shard-rows", "35", "--chunk-size", "15", "--on-error", "skip"]
    ref, out = tmp_path / "ref", tmp_path / "out"

    def args(target: Path) -> list[str]:
        return ["embed", *map(str, srcs), "-o", str(target), *plan, *model_args(tiny_model_dir), "-q"]

    clean = cli(args(ref))
    assert clean.exit_code == 0, clean.output
    assert len(manifest(ref)["shards"]) >= 8

    real_write = ShardWriter.write

    def write(self, chunk, embeddings):
        record = real_write(self, chunk, embeddings)
        if record is not None and record.index + 1 >= published:
            raise Interrupted(signal.SIGTERM)
        return record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardWriter, "write", write)
        stopped = cli(args(out))
    assert stopped.exit_code == 143, stopped.output
    assert len(manifest(out)["shards"]) == published - 1

    resumed = cli([*args(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert_same_output(out, ref)
    assert reject_lines(out) == reject_lines(ref)
