"""--reuse: rows whose text an earlier output holds take its vector, byte for byte, and never
reach the model; the lookup reads the earlier output's sorted key files, not its texts."""

from __future__ import annotations

import random

import numpy as np
import pytest
from helpers import WORDS, cli, embeddings, manifest, model_args


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + f" #{seed}-{i}" for i in range(n)]


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_second_run_reuses_every_unchanged_row_and_embeds_only_new_ones(
    tmp_path, tiny_model_dir, model_rows, fmt
):
    old = texts(900, seed=1)
    new = texts(100, seed=2)
    (tmp_path / "night1.txt").write_text("\n".join(old) + "\n")
    both = old[:450] + new + old[450:]
    (tmp_path / "night2.txt").write_text("\n".join(both) + "\n")
    common = [
        *model_args(tiny_model_dir),
        "--format",
        fmt,
        "--shard-rows",
        "400",
        "--chunk-size",
        "128",
        "-q",
    ]
    first = cli(["embed", str(tmp_path / "night1.txt"), "-o", str(tmp_path / "one"), *common])
    assert first.exit_code == 0, first.output
    model_rows.clear()

    again = cli(
        [
            "embed",
            str(tmp_path / "night1.txt"),
            "-o",
            str(tmp_path / "same"),
            "--reuse",
            str(tmp_path / "one"),
            *common,
        ]
    )
    assert again.exit_code == 0, again.output
    assert sum(model_rows) == 0  # unchanged inputs: nothing reaches the model

    second = cli(
        [
            "embed",
            str(tmp_path / "night2.txt"),
            "-o",
            str(tmp_path / "two"),
            "--reuse",
            str(tmp_path / "one"),
            *common,
        ]
    )
    assert second.exit_code == 0, second.output
    assert sum(model_rows) == 100  # exactly the new rows

    plain = cli(["embed", str(tmp_path / "night2.txt"), "-o", str(tmp_path / "plain"), *common])
    assert plain.exit_code == 0, plain.output
    if fmt == "parquet":
        _, earlier = embeddings(tmp_path / "one")
        ids, got = embeddings(tmp_path / "two")
        plain_ids, want = embeddings(tmp_path / "plain")
        assert ids == plain_ids == list(range(1000))
        assert np.abs(got - want).max() < 1e-5
        for row, text in enumerate(both):
            if text in old:
                assert got[row].tobytes() == earlier[old.index(text)].tobytes()  # a byte copy
    assert manifest(tmp_path / "two")["totals"]["embedded"] == 100


def test_reuse_refuses_an_output_of_other_settings(tmp_path, tiny_model_dir):
    (tmp_path / "in.txt").write_text("one text\nanother text\n")
    base = [str(tmp_path / "in.txt"), *model_args(tiny_model_dir), "-q"]
    assert cli(["embed", *base, "-o", str(tmp_path / "a")]).exit_code == 0
    result = cli(
        ["embed", *base, "-o", str(tmp_path / "b"), "--reuse", str(tmp_path / "a"), "--no-normalize"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"minilm: error: --reuse {tmp_path / 'a'}: its normalize differs (True, this run False)"
    ]
    missing = cli(["embed", *base, "-o", str(tmp_path / "c"), "--reuse", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "not a minilm output" in missing.stderr


def test_reuse_index_finds_keys_across_many_shards(tmp_path, tiny_model_dir):
    from minilm_cli.pipeline.dedup import text_keys
    from minilm_cli.pipeline.reuse import ReuseIndex

    old = texts(500, seed=3)
    (tmp_path / "in.txt").write_text("\n".join(old) + "\n")
    result = cli(
        [
            "embed",
            str(tmp_path / "in.txt"),
            "-o",
            str(tmp_path / "o"),
            "--shard-rows",
            "37",
            *model_args(tiny_model_dir),
            "-q",
        ]
    )
    assert result.exit_code == 0, result.output
    doc = manifest(tmp_path / "o")
    index = ReuseIndex([str(tmp_path / "o")], doc["settings"])
    try:
        queries = [old[7], "never embedded", old[499], old[250]]
        found = index.lookup(text_keys(queries))
    finally:
        index.close()
    _, stored = embeddings(tmp_path / "o")
    assert sorted(found) == [0, 2, 3]
    assert found[0].tobytes() == stored[7].tobytes()
    assert found[2].tobytes() == stored[499].tobytes()
    assert found[3].tobytes() == stored[250].tobytes()
