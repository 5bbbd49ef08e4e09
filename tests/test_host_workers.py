"""--host-workers: chunks tokenized and padded on N threads come back in order, so the output's
bytes, its shard boundaries, its rejects and --resume are the same for any worker count."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import WORDS, cli, manifest, model_args, output_files

from minilm_cli.batching import FlatIds, pad_batch
from minilm_cli.errors import Interrupted
from minilm_cli.output import ShardWriter
from minilm_cli.pipeline import windows
from minilm_cli.pipeline.host import ordered_chain, ordered_map
from minilm_cli.pipeline.windows import work_runs

PLAN = ["--shard-rows", "70", "--chunk-size", "25", "--on-error", "skip"]


def write_input(path: Path, rows: int = 400, seed: int = 3) -> Path:
    """JSONL with what each stage must keep straight: bad records and empty texts (rejects),
    repeated texts (dedup copies), texts over the tiny model's 64 tokens (truncated)."""
    rng = random.Random(seed)
    lines, texts = [], []
    for k in range(rows):
        roll = rng.randrange(20)
        if roll == 0:
            lines.append("{not json")
        elif roll == 1:
            lines.append(json.dumps({"text": "  "}))
        elif roll == 2 and texts:
            lines.append(json.dumps({"text": rng.choice(texts)}))
        else:
            words = rng.randint(60, 120) if roll == 3 else rng.randint(2, 12)
            text = " ".join(rng.choices(WORDS, k=words)) + f" {k}"
            texts.append(text)
            lines.append(json.dumps({"text": text}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def embed(src: Path, out: Path, model: str, fmt: str, workers: int, *extra: str):
    args = ["embed", str(src), "-o", str(out), *PLAN, "--format", fmt, *model_args(model)]
    return cli([*args, "--host-workers", str(workers), "-q", *extra])


def reject_lines(out: Path) -> list[str]:
    return [line for p in sorted(out.glob("rejects/*.jsonl")) for line in p.read_text().splitlines()]


def assert_same(got: Path, want: Path) -> None:
    assert output_files(got) == output_files(want)  # same names and sha256, rejects included
    g, w = manifest(got), manifest(want)
    assert g["status"] == "complete"
    assert g["shards"] == w["shards"]  # rows, rejected, record_end, every file's sha256
    for key in ("rows", "embedded", "rejected", "truncated", "tokens", "padded_tokens"):
        assert g["totals"][key] == w["totals"][key], key
    assert reject_lines(got) == reject_lines(want)


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_any_host_worker_count_writes_the_same_bytes(tmp_path, tiny_model_dir, fmt):
    src = write_input(tmp_path / "in.jsonl")
    outs = {}
    for workers in (1, 0, 3):
        outs[workers] = tmp_path / f"out{workers}"
        result = embed(src, outs[workers], tiny_model_dir, fmt, workers)
        assert result.exit_code == 0, result.output
    totals = manifest(outs[1])["totals"]
    # the corpus exercises what it should: several shards, rejects, copies and truncation
    assert totals["shards"] >= 4 and totals["rejected"] > 0 and totals["truncated"] > 0
    assert totals["embedded"] < totals["rows"]
    assert_same(outs[0], outs[1])
    assert_same(outs[3], outs[1])


@contextlib.contextmanager
def stopped_after_three_shards():
    """The run is stopped (as by SIGTERM) once its third shard is committed."""
    real_write = ShardWriter.write

    def write(self, chunk, embeddings):
        record = real_write(self, chunk, embeddings)
        if record is not None and record.index + 1 >= 3:
            raise Interrupted(signal.SIGTERM)
        return record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardWriter, "write", write)
        yield


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_resume_with_other_host_workers_equals_one_worker_run(tmp_path, tiny_model_dir, fmt):
    src = write_input(tmp_path / "in.jsonl")
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert embed(src, ref, tiny_model_dir, fmt, 1).exit_code == 0
    with stopped_after_three_shards():
        stopped = embed(src, out, tiny_model_dir, fmt, 3)
    assert stopped.exit_code == 143, stopped.output
    assert len(manifest(out)["shards"]) == 2
    resumed = embed(src, out, tiny_model_dir, fmt, 2, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert_same(out, ref)


# ---------------------------------------------------------------------------- --overflow split / mean

OVERFLOWS = ["split", "mean"]  # texts over the tiny model's 64 tokens become windows


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
@pytest.mark.parametrize("overflow", OVERFLOWS)
def test_windows_on_any_host_worker_count_write_the_same_bytes(tmp_path, tiny_model_dir, fmt, overflow):
    src = write_input(tmp_path / "in.jsonl")
    outs = {}
    for workers in (1, 0, 3):
        outs[workers] = tmp_path / f"out{workers}"
        result = embed(src, outs[workers], tiny_model_dir, fmt, workers, "--overflow", overflow)
        assert result.exit_code == 0, result.output
    totals = manifest(outs[1])["totals"]
    assert totals["shards"] >= 4 and totals["rejected"] > 0
    plain = tmp_path / "plain"
    assert embed(src, plain, tiny_model_dir, fmt, 1).exit_code == 0
    documents = manifest(plain)["totals"]["rows"]
    if overflow == "split":  # long texts gave several windows: more rows than documents
        assert totals["rows"] > documents
    else:  # one row per document, but more windows than documents went through the model
        assert totals["rows"] == documents and totals["tokens"] > manifest(plain)["totals"]["tokens"]
    assert_same(outs[0], outs[1])
    assert_same(outs[3], outs[1])


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
@pytest.mark.parametrize("overflow", OVERFLOWS)
def test_windows_resume_with_other_host_workers_equals_one_worker_run(
    tmp_path, tiny_model_dir, fmt, overflow
):
    src = write_input(tmp_path / "in.jsonl")
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert embed(src, ref, tiny_model_dir, fmt, 1, "--overflow", overflow).exit_code == 0
    with stopped_after_three_shards():
        stopped = embed(src, out, tiny_model_dir, fmt, 3, "--overflow", overflow)
    assert stopped.exit_code == 143, stopped.output
    assert len(manifest(out)["shards"]) == 2
    resumed = embed(src, out, tiny_model_dir, fmt, 2, "--overflow", overflow, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert_same(out, ref)


@pytest.mark.parametrize("overflow", OVERFLOWS)
def test_cutting_a_read_block_into_work_runs_moves_no_byte(tmp_path, tiny_model_dir, monkeypatch, overflow):
    """Runs of a few rows (a cut between almost every document) write what whole blocks write."""
    src = write_input(tmp_path / "in.jsonl")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    monkeypatch.setattr(windows, "WORK_CHARS", 10**9)
    assert embed(src, whole, tiny_model_dir, "parquet", 1, "--overflow", overflow).exit_code == 0
    runs_per_piece = []

    def few_rows(texts: list[str], chars: int):
        runs = list(work_runs(texts, 150))
        runs_per_piece.append(len(runs))
        return iter(runs)

    monkeypatch.setattr(windows, "work_runs", few_rows)
    assert embed(src, cut, tiny_model_dir, "parquet", 2, "--overflow", overflow).exit_code == 0
    assert max(runs_per_piece) > 3  # the blocks were cut, many times
    assert_same(cut, whole)


def test_work_runs_cover_every_row_once():
    texts = ["a" * n for n in (5, 300, 1, 1, 1, 400, 2)]
    assert list(work_runs(texts, 100)) == [(0, 2), (2, 6), (6, 7)]
    assert list(work_runs([], 100)) == [(0, 0)]  # an empty piece still carries its rejects
    assert list(work_runs(["a"] * 3, 100)) == [(0, 3)]


def test_ordered_chain_streams_each_items_results_in_order_and_bounded():
    made, taken = [], []

    def results(i: int):
        for k in range(i % 4 * 3):  # 0..9 results per item, some none
            made.append((i, k))
            assert len(made) - len(taken) <= 2 * (2 + 1) + 2  # workers + 1 items, depth 2 each
            time.sleep(0.001 * ((5 * i + k) % 3))
            yield i, k

    for pair in ordered_chain(results, range(30), workers=2, depth=2):
        taken.append(pair)
    assert taken == [(i, k) for i in range(30) for k in range(i % 4 * 3)]


def test_ordered_chain_stops_its_threads_when_the_consumer_leaves():
    def endless(i: int):
        k = 0
        while True:
            yield i, k
            k += 1

    chained = ordered_chain(endless, range(5), workers=3)
    assert [next(chained) for _ in range(4)] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    chained.close()  # must return: the producers blocked on their full queues give up
    assert not [t for t in threading.enumerate() if t.name.startswith("minilm-tokenize")]


def test_bad_host_workers_is_a_usage_error(tmp_path, tiny_model_dir):
    src = write_input(tmp_path / "in.jsonl", rows=5)
    result = embed(src, tmp_path / "out", tiny_model_dir, "parquet", -1)
    assert result.exit_code == 2
    assert "--host-workers" in result.output
    env = cli_env_run(src, tmp_path / "out2", tiny_model_dir, {"MINILM_HOST_WORKERS": "many"})
    assert env.exit_code == 2


def cli_env_run(src: Path, out: Path, model: str, env: dict[str, str]):
    from click.testing import CliRunner

    from minilm_cli.cli import main

    return CliRunner().invoke(main, ["embed", str(src), "-o", str(out), *model_args(model), "-q"], env=env)


# ---------------------------------------------------------------------------- ordered_map


def test_ordered_map_keeps_input_order_and_bounds_what_is_in_flight():
    pulled, yielded = [], []

    def source():
        for i in range(40):
            pulled.append(i)
            assert len(pulled) - len(yielded) <= 3 + 1  # the pool holds workers + 1 at most
            yield i

    def slow(i: int) -> tuple[int, str]:
        time.sleep(0.002 * ((7 * i) % 5))  # later items often finish first
        return i, threading.current_thread().name

    names = set()
    for i, name in ordered_map(slow, source(), workers=3):
        yielded.append(i)
        names.add(name)
    assert yielded == list(range(40))
    assert len(names) > 1 and all(n.startswith("minilm-tokenize") for n in names)


def test_ordered_map_raises_a_failure_at_its_turn():
    def fn(i: int) -> int:
        if i == 5:
            raise ValueError("bad item")
        return i

    got = []
    with pytest.raises(ValueError, match="bad item"):
        for i in ordered_map(fn, range(20), workers=2):
            got.append(i)
    assert got == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------- flat ids


def test_flat_ids_pad_like_row_by_row_padding():
    rng = np.random.default_rng(0)
    rows = [rng.integers(1000, 30000, size=rng.integers(1, 40)) for _ in range(50)]
    flat = FlatIds.from_rows(rows)
    assert len(flat) == 50 and all(np.array_equal(flat[i], r) for i, r in enumerate(rows))
    lengths = np.array([len(r) for r in rows])
    pick = np.array([7, 3, 49, 0, 12])
    batch = pad_batch(flat, lengths, pick, pad_id=0)
    width = max(len(rows[i]) for i in pick)
    for k, i in enumerate(pick):
        expect = list(rows[i]) + [0] * (width - len(rows[i]))
        assert batch.input_ids[k].tolist() == expect
        assert batch.attention_mask[k].tolist() == [1] * len(rows[i]) + [0] * (width - len(rows[i]))
    assert batch.input_ids.dtype == np.int64 and batch.attention_mask.dtype == np.int64


def test_default_host_workers_per_device(monkeypatch):
    import torch

    from minilm_cli.pipeline import host

    monkeypatch.setattr(host, "usable_cpus", lambda: 16)
    assert host.host_workers(None, torch.device("cpu")) == 1
    assert host.host_workers(None, torch.device("cuda")) == 4  # capped: each worker holds a chunk
    assert host.host_workers(3, torch.device("cuda")) == 3
    assert host.host_workers(0, torch.device("cpu")) == 0
    monkeypatch.setattr(host, "usable_cpus", lambda: 2)
    assert host.host_workers(None, torch.device("cuda")) == 1
    assert host.spare_cores(1) == 1
