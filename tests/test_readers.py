"""The output is read as-is by pyarrow.dataset, DuckDB, Polars and embedding-reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
N = 300
DIM = 32


def embed(args: list) -> None:
    from click.testing import CliRunner

    from minilm_cli.cli import main

    result = CliRunner().invoke(main, ["embed", *[str(a) for a in args]])
    assert result.exit_code == 0, result.stderr


@pytest.fixture(scope="module")
def glosses() -> list[dict]:
    return pq.read_table(SAMPLE / "glosses.parquet").to_pylist()


@pytest.fixture(scope="module")
def parquet_out(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str) -> Path:
    out = tmp_path_factory.mktemp("readers") / "parquet"
    embed(
        [
            SAMPLE / "glosses.csv",
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--precision",
            "fp32",
            "--shard-rows",
            128,
            "--keep-columns",
            "word,pos",
        ]
    )
    # what an interrupted later run could leave behind: a hidden temp shard
    (out / ".part-00003.parquet.tmp").write_bytes(b"half a shard")
    return out


@pytest.fixture(scope="module")
def npy_out(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str) -> Path:
    out = tmp_path_factory.mktemp("readers") / "npy"
    embed(
        [
            SAMPLE / "glosses.jsonl",
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--precision",
            "fp32",
            "--shard-rows",
            128,
            "--keep-columns",
            "word",
            "--format",
            "npy",
        ]
    )
    return out


@pytest.fixture(scope="module")
def direct_parquet(parquet_out: Path) -> tuple[list, np.ndarray]:
    """ids and vectors read file by file with plain pyarrow, in shard order."""
    tables = [pq.read_table(p) for p in sorted(parquet_out.glob("part-*.parquet"))]
    assert [t.num_rows for t in tables] == [128, 128, 44]
    table = pa.concat_tables(tables)
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


@pytest.fixture(scope="module")
def direct_npy(npy_out: Path) -> tuple[list, np.ndarray]:
    arrays = [np.load(p) for p in sorted((npy_out / "embeddings").glob("part-*.npy"))]
    metas = [pq.read_table(p) for p in sorted((npy_out / "metadata").glob("part-*.parquet"))]
    assert [a.shape for a in arrays] == [(128, DIM), (128, DIM), (44, DIM)]
    assert [m.num_rows for m in metas] == [128, 128, 44]
    return pa.concat_tables(metas).column("id").to_pylist(), np.concatenate(arrays)


def _sorted_by_id(ids: list, vectors: np.ndarray) -> tuple[list, np.ndarray]:
    order = np.argsort(np.asarray(ids), kind="stable")
    return [ids[i] for i in order], vectors[order]


# ---------------------------------------------------------------------------- pyarrow


def test_open_dataset(parquet_out: Path, direct_parquet, glosses) -> None:
    from minilm_cli import open_dataset

    dataset = open_dataset(parquet_out)
    assert dataset.count_rows() == N
    table = dataset.to_table()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert table.schema.field("id").type == pa.int64()
    ids, vectors = direct_parquet
    assert table.column("id").to_pylist() == ids == list(range(N))
    assert np.array_equal(np.asarray(table.column("embedding").to_pylist(), dtype=np.float32), vectors)
    assert table.column("word").to_pylist() == [g["word"] for g in glosses]
    filtered = dataset.to_table(filter=ds.field("pos") == "verb", columns=["id"])
    assert filtered.column("id").to_pylist() == [i for i, g in enumerate(glosses) if g["pos"] == "verb"]


def test_open_dataset_npy_layout_gives_metadata(npy_out: Path, direct_npy) -> None:
    from minilm_cli import open_dataset

    table = open_dataset(npy_out).to_table()
    assert table.column_names == ["id", "word"]
    assert table.column("id").to_pylist() == direct_npy[0] == list(range(N))


def test_pyarrow_dataset_on_the_directory(parquet_out: Path, direct_parquet) -> None:
    dataset = ds.dataset(str(parquet_out), format="parquet", exclude_invalid_files=True)
    assert sorted(Path(f).name for f in dataset.files) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = dataset.to_table()
    assert table.num_rows == N
    ids, vectors = _sorted_by_id(
        table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist())
    )
    assert ids == direct_parquet[0]
    assert np.array_equal(vectors.astype(np.float32), direct_parquet[1])


def test_pyarrow_dataset_on_npy_metadata(npy_out: Path, direct_npy) -> None:
    dataset = ds.dataset(str(npy_out / "metadata"), format="parquet")
    assert dataset.count_rows() == N
    assert sorted(dataset.to_table().column("id").to_pylist()) == direct_npy[0]


# ---------------------------------------------------------------------------- DuckDB


def test_duckdb(parquet_out: Path, direct_parquet) -> None:
    import duckdb

    con = duckdb.connect()
    pattern = f"{parquet_out}/*.parquet"
    count, lo, hi, distinct, dim = con.execute(
        "SELECT count(*), min(id), max(id), count(DISTINCT id), max(len(embedding)) "
        f"FROM read_parquet('{pattern}')"
    ).fetchone()
    assert (count, lo, hi, distinct, dim) == (N, 0, N - 1, N, DIM)
    rows = con.execute(f"SELECT id, embedding FROM read_parquet('{pattern}') ORDER BY id").fetchall()
    vectors = np.asarray([r[1] for r in rows], dtype=np.float32)
    assert [r[0] for r in rows] == direct_parquet[0]
    assert np.array_equal(vectors, direct_parquet[1])
    # vectors are unit length (the model normalises): DuckDB sees real floats, not blobs
    norms = con.execute(
        "SELECT min(n), max(n) FROM (SELECT "
        "sqrt(list_inner_product(embedding::FLOAT[], embedding::FLOAT[])) AS n "
        f"FROM read_parquet('{pattern}'))"
    ).fetchone()
    assert norms[0] == pytest.approx(1.0, abs=1e-4) and norms[1] == pytest.approx(1.0, abs=1e-4)


def test_duckdb_npy_metadata(npy_out: Path) -> None:
    import duckdb

    count, distinct = (
        duckdb.connect()
        .execute(f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{npy_out}/metadata/*.parquet')")
        .fetchone()
    )
    assert (count, distinct) == (N, N)


# ---------------------------------------------------------------------------- Polars


def test_polars(parquet_out: Path, direct_parquet, glosses) -> None:
    import polars as pl

    frame = pl.read_parquet(f"{parquet_out}/*.parquet")
    assert frame.height == N
    dtype = frame.schema["embedding"]
    assert isinstance(dtype, (pl.Array, pl.List))
    if isinstance(dtype, pl.Array):
        assert dtype.size == DIM
    assert frame.schema["id"] == pl.Int64
    frame = frame.sort("id")
    assert frame["id"].to_list() == direct_parquet[0]
    vectors = np.asarray(frame["embedding"].to_list(), dtype=np.float32)
    assert vectors.shape == (N, DIM)
    assert np.array_equal(vectors, direct_parquet[1])
    assert frame["pos"].to_list() == [g["pos"] for g in glosses]


def test_polars_lazy_scan(parquet_out: Path) -> None:
    import polars as pl

    counts = pl.scan_parquet(f"{parquet_out}/*.parquet").group_by("pos").agg(pl.len()).collect()
    assert counts["len"].sum() == N


# ---------------------------------------------------------------------------- embedding-reader


@pytest.mark.parametrize("batch_size", [64, 1000])
def test_embedding_reader_parquet_npy(npy_out: Path, direct_npy, batch_size: int) -> None:
    from embedding_reader import EmbeddingReader

    reader = EmbeddingReader(
        embeddings_folder=str(npy_out / "embeddings"),
        metadata_folder=str(npy_out / "metadata"),
        meta_columns=["id", "word"],
        file_format="parquet_npy",
    )
    assert reader.count == N
    assert reader.dimension == DIM
    ids: list = []
    blocks = []
    for embeddings, meta in reader(batch_size=batch_size, start=0, end=reader.count):
        assert embeddings.shape[0] == len(meta) <= batch_size
        ids += meta["id"].tolist()
        blocks.append(embeddings)
    assert ids == direct_npy[0]
    assert np.array_equal(np.concatenate(blocks).astype(np.float32), direct_npy[1])


def test_embedding_reader_npy_only(npy_out: Path, direct_npy) -> None:
    from embedding_reader import EmbeddingReader

    reader = EmbeddingReader(embeddings_folder=str(npy_out / "embeddings"), file_format="npy")
    assert reader.count == N
    got = np.concatenate([e for e, _ in reader(batch_size=100, start=0, end=reader.count)])
    assert np.array_equal(got.astype(np.float32), direct_npy[1])


def test_npy_matches_parquet_layout(direct_parquet, direct_npy) -> None:
    """Same rows, same model, two layouts (csv vs jsonl input): the same vectors and ids."""
    assert direct_parquet[0] == direct_npy[0]
    assert np.abs(direct_parquet[1] - direct_npy[1]).max() <= 1e-6


# ---------------------------------------------------------------------------- float16 and stray files


def test_float16_read_by_all(tmp_path: Path, tiny_model_dir: str) -> None:
    import duckdb
    import polars as pl

    out = tmp_path / "f16"
    embed(
        [
            SAMPLE / "glosses.parquet",
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--dtype",
            "float16",
            "--shard-rows",
            200,
        ]
    )
    table = ds.dataset(str(out), format="parquet", exclude_invalid_files=True).to_table()
    assert table.num_rows == N
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), DIM)
    (count,) = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{out}/*.parquet')").fetchone()
    assert count == N
    assert pl.read_parquet(f"{out}/*.parquet").height == N


def test_stray_files_do_not_confuse_open_dataset(parquet_out: Path, tmp_path: Path) -> None:
    """open_dataset reads what the manifest lists, not whatever else lies in the folder."""
    from minilm_cli import open_dataset

    copy = tmp_path / "copy"
    shutil.copytree(parquet_out, copy)
    pq.write_table(
        pq.read_table(copy / "part-00000.parquet"), copy / "part-00099.parquet"
    )  # not in the manifest
    assert open_dataset(copy).count_rows() == N
