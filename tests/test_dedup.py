"""Each distinct text goes through the model once; every row still gets its own vector, a byte
copy of its first occurrence's, within 1e-5 of a run without deduplication (fp32, CPU)."""

from __future__ import annotations

import random

import numpy as np
from helpers import WORDS, cli, embeddings, manifest, model_args


def corpus_with_repeats(path, distinct: int, copies: int, seed: int):
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + f" {i}" for i in range(distinct)]
    rows = texts * copies
    rng.shuffle(rows)
    path.write_text("\n".join(rows) + "\n")
    return rows


def test_half_duplicates_send_half_the_rows_to_the_model(tmp_path, tiny_model_dir, model_rows):
    rows = corpus_with_repeats(tmp_path / "in.txt", 600, 2, seed=1)
    args = [str(tmp_path / "in.txt"), *model_args(tiny_model_dir), "--chunk-size", "256", "-q"]
    plain = cli(["embed", *args, "-o", str(tmp_path / "plain"), "--no-dedup"])
    assert plain.exit_code == 0, plain.output
    assert sum(model_rows) == 1200
    model_rows.clear()
    dedup = cli(["embed", *args, "-o", str(tmp_path / "dedup")])
    assert dedup.exit_code == 0, dedup.output
    assert sum(model_rows) == 600  # the shard holds all 1200 rows: each text once

    ids, got = embeddings(tmp_path / "dedup")
    want_ids, want = embeddings(tmp_path / "plain")
    assert ids == want_ids == list(range(1200))
    assert np.abs(got - want).max() < 1e-5
    first: dict[str, int] = {}
    for row, text in enumerate(rows):
        j = first.setdefault(text, row)
        assert got[row].tobytes() == got[j].tobytes()  # a byte copy of the first occurrence
    totals = manifest(tmp_path / "dedup")["totals"]
    assert (totals["rows"], totals["embedded"]) == (1200, 600)


def test_shard_boundaries_reset_the_memory_so_resume_is_exact(tmp_path, tiny_model_dir, model_rows):
    corpus_with_repeats(tmp_path / "in.txt", 300, 3, seed=2)
    args = [
        str(tmp_path / "in.txt"),
        *model_args(tiny_model_dir),
        "--chunk-size",
        "100",
        "--shard-rows",
        "300",
    ]
    whole = cli(["embed", *args, "-o", str(tmp_path / "whole"), "-q"])
    assert whole.exit_code == 0, whole.output
    per_shard = sum(model_rows)
    assert 300 <= per_shard < 900  # repeats inside a shard are copied, across shards embedded again

    # The same run, stopped by a failure in its third shard's writer, then resumed.
    from minilm_cli.output import OutputSession

    real_write = OutputSession.write
    calls = []

    def failing_write(self, chunk, vectors):
        calls.append(1)
        if len(calls) == 7:
            raise OSError(28, "No space left on device")
        return real_write(self, chunk, vectors)

    import minilm_cli.output

    minilm_cli.output.OutputSession.write = failing_write
    try:
        broken = cli(["embed", *args, "-o", str(tmp_path / "resumed"), "-q"])
    finally:
        minilm_cli.output.OutputSession.write = real_write
    assert broken.exit_code == 1, broken.output
    resumed = cli(["embed", *args, "-o", str(tmp_path / "resumed"), "-q", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    got_ids, got = embeddings(tmp_path / "resumed")
    want_ids, want = embeddings(tmp_path / "whole")
    assert got_ids == want_ids
    assert got.tobytes() == want.tobytes()  # bit for bit


def test_stdout_deduplicates_too(tmp_path, tiny_model_dir, model_rows):
    (tmp_path / "in.txt").write_text("same text\nother text\nsame text\nsame text\n")
    result = cli(["embed", str(tmp_path / "in.txt"), "-o", "-", *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert sum(model_rows) == 2
    import json

    vectors = [json.loads(line)["embedding"] for line in result.stdout.splitlines()]
    assert len(vectors) == 4
    assert vectors[0] == vectors[2] == vectors[3] != vectors[1]
