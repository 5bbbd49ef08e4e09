"""The Parquet shards' encodings (issue 22): float32 embedding values are written plain, not
dictionary-encoded (nearly every value is distinct: the dictionary only cost the writer ~30 MiB
of peak memory and the file ~5%); every other column keeps Arrow's default dictionary, and
outputs written with the dictionary by earlier versions still verify, resume and append."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import cli, embeddings, manifest, model_args

from minilm_cli.output import writers

PLAN = ["--shard-rows", "100", "--chunk-size", "50"]


def write_rows(path: Path, rows: int, first: int = 0) -> Path:
    lines = [
        json.dumps({"text": f"row {i} of the corpus, {i % 7} words", "lang": "en" if i % 3 else "fr"})
        for i in range(first, first + rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def embed(src: Path, out: Path, model: str, *extra: str):
    args = ["embed", str(src), "-o", str(out), *PLAN, "--keep-columns", "lang", *model_args(model), "-q"]
    return cli([*args, *extra])


def dictionary_pages(path: Path) -> dict[str, bool]:
    """Per Parquet leaf column of the first row group: does its chunk have a dictionary page."""
    group = pq.ParquetFile(path).metadata.row_group(0)
    return {
        group.column(i).path_in_schema: group.column(i).has_dictionary_page for i in range(group.num_columns)
    }


def old_writer(monkeypatch) -> None:
    """The writer of earlier versions: Arrow's default, every column dictionary-encoded."""
    monkeypatch.setattr(writers, "dictionary_columns", lambda schema: list(writers.parquet_leaves(schema)))


@pytest.mark.parametrize(
    "extra, embedding_dictionary",
    [
        ([], False),
        (["--dtype", "float16"], True),
        (["--dtype", "int8"], True),
        (["--pooling", "none"], False),
    ],
)
def test_only_float32_embedding_values_are_written_without_a_dictionary(
    tmp_path, tiny_model_dir, extra, embedding_dictionary
):
    out = tmp_path / "out"
    assert embed(write_rows(tmp_path / "in.jsonl", 120), out, tiny_model_dir, *extra).exit_code == 0
    pages = dictionary_pages(out / "part-00000.parquet")
    embedding = [path for path in pages if path.startswith("embedding.")]
    assert len(embedding) == 1, pages
    assert pages[embedding[0]] is embedding_dictionary
    others = {path: has for path, has in pages.items() if path not in embedding}
    assert others["id"] and others["lang"], pages
    assert all(others.values()), pages  # --pooling none's token columns too


def test_an_output_with_dictionary_encoded_embeddings_resumes_verifies_and_appends(
    tmp_path, tiny_model_dir, monkeypatch
):
    (tmp_path / "data").mkdir()
    src = write_rows(tmp_path / "data" / "a.jsonl", 250).parent
    out, ref = tmp_path / "out", tmp_path / "ref"
    with monkeypatch.context() as patch:
        old_writer(patch)
        write = writers.ShardWriter.write

        def interrupted(self, chunk, vectors):
            if self.index == 2:
                raise KeyboardInterrupt  # as Ctrl-C: the two finished shards are kept
            return write(self, chunk, vectors)

        patch.setattr(writers.ShardWriter, "write", interrupted)
        assert embed(src, out, tiny_model_dir).exit_code != 0
    assert len(manifest(out)["shards"]) == 2
    assert dictionary_pages(out / "part-00000.parquet")["embedding.list.element"]

    assert embed(src, out, tiny_model_dir, "--resume").exit_code == 0
    assert not dictionary_pages(out / "part-00002.parquet")["embedding.list.element"]
    assert cli(["verify", str(out)]).exit_code == 0
    assert embed(src, ref, tiny_model_dir).exit_code == 0
    ids, vectors = embeddings(out)
    ref_ids, ref_vectors = embeddings(ref)
    assert ids == ref_ids and np.array_equal(vectors, ref_vectors)

    write_rows(src / "b.jsonl", 30, first=250)
    assert embed(src, out, tiny_model_dir, "--append").exit_code == 0
    assert cli(["verify", str(out)]).exit_code == 0
    assert len(embeddings(out)[0]) == 280
