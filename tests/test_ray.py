"""The Ray Data engine against the local engine, on a local Ray (2 CPUs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import minilm_cli
from minilm_cli.cli import main
from minilm_cli.output import verify_output

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

SAMPLE_PARQUET = str(Path(__file__).resolve().parent.parent / "sample_data" / "glosses.parquet")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def _table(out):
    table = minilm_cli.open_dataset(out).to_table()
    return table, np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def _run(args):
    result = CliRunner().invoke(main, ["embed", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("source", ["parquet", "jsonl"])
def test_ray_engine_matches_local_engine(local_ray, source, tiny_model_dir, tmp_path, sample_texts):
    if source == "parquet":
        inputs = [SAMPLE_PARQUET]
        extra = ["--id-column", "synset", "--keep-columns", "word,pos"]
    else:
        path = tmp_path / "in.jsonl"
        path.write_text(
            "".join(json.dumps({"text": t, "k": i}) + "\n" for i, t in enumerate(sample_texts[:120]))
        )
        inputs, extra = [str(path)], ["--keep-columns", "k"]
    common = [
        "--model",
        tiny_model_dir,
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--shard-rows",
        "50",
        "--chunk-size",
        "32",
        "--quiet",
        *extra,
    ]
    _run([*inputs, "-o", str(tmp_path / "local"), *common])
    _run([*inputs, "-o", str(tmp_path / "ray"), "--engine", "ray", "--concurrency", "1", *common])
    assert verify_output(tmp_path / "ray").ok
    local, local_vectors = _table(tmp_path / "local")
    remote, remote_vectors = _table(tmp_path / "ray")
    assert remote.column_names == local.column_names
    assert remote.drop_columns(["embedding"]).equals(local.drop_columns(["embedding"]))
    np.testing.assert_allclose(remote_vectors, local_vectors, atol=1e-6)
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["runtime"]["engine"] == "ray"
    assert [s["rows"] for s in manifest["shards"]] == [
        s["rows"] for s in json.loads((tmp_path / "local" / "manifest.json").read_text())["shards"]
    ]


def test_embed_dataset_marks_rejects(local_ray, tiny_model_dir, tiny_embedder):
    from minilm_cli.ray import embed_dataset

    texts = ["a cat sat on the mat", "", "dogs bark at night", None]
    ds = ray.data.from_items([{"text": t, "n": i} for i, t in enumerate(texts)])
    out = embed_dataset(ds, "text", model=tiny_model_dir, device="cpu", precision="fp32").take_all()
    out.sort(key=lambda row: row["n"])
    assert [row["reject_reason"] for row in out] == [None, "empty text", None, "null text"]
    assert out[1]["embedding"] is None and out[3]["embedding"] is None
    expected = tiny_embedder.embed([texts[0], texts[2]])
    got = np.stack([np.asarray(out[0]["embedding"]), np.asarray(out[2]["embedding"])])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_ray_engine_refuses_resume(local_ray, tiny_model_dir, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "embed",
            SAMPLE_PARQUET,
            "-o",
            str(tmp_path / "o"),
            "--engine",
            "ray",
            "--resume",
            "--model",
            tiny_model_dir,
        ],
    )
    assert result.exit_code == 2
    assert "--engine ray" in result.output and "Traceback" not in result.output


def test_too_many_cpu_actors_is_refused_not_hung(local_ray, tiny_model_dir, tmp_path):
    args = [SAMPLE_PARQUET, "-o", str(tmp_path / "o"), "--engine", "ray", "--concurrency", "9"]
    result = CliRunner().invoke(main, ["embed", *args, "--model", tiny_model_dir])
    assert result.exit_code == 2
    assert "too many CPU actors" in result.stderr and len(result.stderr.splitlines()) == 1


def test_ray_engine_sets_bad_rows_aside_like_the_local_engine(local_ray, tiny_model_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a cat"}\n{"text": ""}\n{"text": "dogs"}\n{"text": null}\n')
    args = [str(source), "--model", tiny_model_dir, "--precision", "fp32", "--on-error", "skip", "--quiet"]
    _run([*args, "-o", str(tmp_path / "ray"), "--engine", "ray"])
    rejects = [json.loads(line) for line in (tmp_path / "ray" / "rejects" / "part-00000.jsonl").open()]
    assert [(r["row"], r["reason"]) for r in rejects] == [(2, "empty text"), (4, "null text")]
    assert minilm_cli.open_dataset(tmp_path / "ray").to_table().column("id").to_pylist() == [0, 2]
    assert verify_output(tmp_path / "ray").ok


def test_ray_reads_csv_values_as_the_text_written(tmp_path, tiny_model_dir):
    """Under Ray as locally: CSV ids and kept columns are strings, leading zeros kept."""
    from click.testing import CliRunner

    from minilm_cli.cli import main

    src = tmp_path / "in.csv"
    src.write_text('sku,zip,text\n00123,02139,"hello, world"\n00124,10001,second row\n')
    out = tmp_path / "out"
    args = [
        "embed",
        str(src),
        "-o",
        str(out),
        "--engine",
        "ray",
        "--id-column",
        "sku",
        "--keep-columns",
        "zip",
    ]
    result = CliRunner().invoke(
        main, [*args, "--model", tiny_model_dir, "--device", "cpu", "--precision", "fp32", "-q"]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column("id").to_pylist() == ["00123", "00124"]
    assert table.column("zip").to_pylist() == ["02139", "10001"]
    assert str(table.schema.field("zip").type) == "string"
