"""Every input format into every output layout: ids, kept columns, order, shards, manifest.

Embeddings are checked against a plain transformers loop over the tiny model (written
here, not taken from the package), in fp32.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
TOL = 1e-5
N = 300  # rows in every sample_data/glosses.* file
TINY_DIM = 32
TINY_MAX_LENGTH = 64


# ---------------------------------------------------------------------------- helpers


def invoke(args: list, input: str | bytes | None = None):
    from click.testing import CliRunner

    from minilm_cli.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def embed_ok(args: list, input: str | bytes | None = None):
    result = invoke(["embed", *args], input=input)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    assert "Traceback" not in result.output
    return result


def read_parquet_layout(out: Path) -> tuple[pa.Table, np.ndarray]:
    parts = sorted(out.glob("part-*.parquet"))
    assert parts, f"no part files in {out}"
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    return table.drop_columns(["embedding"]), emb


def read_npy_layout(out: Path) -> tuple[pa.Table, np.ndarray]:
    npys = sorted((out / "embeddings").glob("part-*.npy"))
    metas = sorted((out / "metadata").glob("part-*.parquet"))
    assert npys and [p.stem for p in npys] == [p.stem for p in metas]
    arrays = [np.load(p) for p in npys]
    tables = [pq.read_table(p) for p in metas]
    for a, t in zip(arrays, tables):
        assert a.shape[0] == t.num_rows  # each .npy lines up with its metadata file
    return pa.concat_tables(tables), np.concatenate(arrays).astype(np.float32)


def read_json_lines(stdout: str) -> tuple[list[dict], np.ndarray]:
    lines = stdout.splitlines()
    rows = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    assert all(isinstance(r, dict) for r in rows)
    emb = np.asarray([r.pop("embedding") for r in rows], dtype=np.float32)
    return rows, emb


def hf_reference(model_dir: str, texts: list[str], max_length: int) -> np.ndarray:
    """Plain transformers: tokenize with truncation, mean-pool over the mask, L2-normalise."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            enc = tok(
                texts[i : i + 64], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
    return torch.cat(out).numpy()


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def glosses() -> list[dict]:
    return pq.read_table(SAMPLE / "glosses.parquet").to_pylist()


@pytest.fixture(scope="module")
def reference(tiny_model_dir: str):
    """text -> fp32 reference vector of the tiny model, computed on demand and cached."""
    cache: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            for t, v in zip(missing, hf_reference(tiny_model_dir, missing, TINY_MAX_LENGTH)):
                cache[t] = v
        return np.stack([cache[t] for t in texts])

    return embed


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample files, plus compressed variants made here."""
    folder = tmp_path_factory.mktemp("inputs")
    for name in (
        "glosses.csv",
        "glosses.tsv",
        "glosses.jsonl",
        "glosses.parquet",
        "glosses.txt",
        "glosses.jsonl.gz",
    ):
        shutil.copy(SAMPLE / name, folder / name)
    csv_bytes = (SAMPLE / "glosses.csv").read_bytes()
    (folder / "glosses.csv.bz2").write_bytes(bz2.compress(csv_bytes))
    (folder / "glosses.csv.gz").write_bytes(gzip.compress(csv_bytes))
    for name in ("glosses.jsonl", "glosses.csv", "glosses.txt"):
        with pa.CompressedOutputStream(str(folder / f"{name}.zst"), "zstd") as stream:
            stream.write((SAMPLE / name).read_bytes())
    return folder


INPUT_FILES = [
    "glosses.csv",
    "glosses.tsv",
    "glosses.jsonl",
    "glosses.parquet",
    "glosses.txt",
    "glosses.jsonl.gz",
    "glosses.csv.bz2",
    "glosses.csv.gz",
    "glosses.jsonl.zst",
    "glosses.csv.zst",
    "glosses.txt.zst",
]
LAYOUTS = ["parquet", "npy", "stdout"]


def test_sample_files_hold_the_same_rows(glosses: list[dict]) -> None:
    """The ground truth used below (the parquet file) agrees with the other sample files."""
    assert len(glosses) == N
    txt = (SAMPLE / "glosses.txt").read_text(encoding="utf-8").splitlines()
    assert txt == [g["text"] for g in glosses]
    jsonl = [json.loads(line) for line in (SAMPLE / "glosses.jsonl").read_text(encoding="utf-8").splitlines()]
    assert jsonl == glosses


# ---------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", INPUT_FILES)
def test_every_input_format_into_every_layout(
    name: str, layout: str, inputs: Path, tmp_path: Path, tiny_model_dir: str, glosses: list[dict], reference
) -> None:
    columnar = ".txt" not in name
    args = [inputs / name, "--model", tiny_model_dir, "--precision", "fp32", "--device", "cpu"]
    if columnar:
        args += ["--keep-columns", "word,pos"]
    out = tmp_path / "out"
    if layout == "stdout":
        result = embed_ok([*args, "-o", "-"])
        rows, emb = read_json_lines(result.stdout)
        ids = [r["id"] for r in rows]
        assert all(type(i) is int for i in ids)
        kept = {c: [r[c] for r in rows] for c in ("word", "pos")} if columnar else {}
        if not columnar:
            assert all(set(r) == {"id"} for r in rows)
    else:
        embed_ok([*args, "-o", out, "--format", layout])
        table, emb = read_parquet_layout(out) if layout == "parquet" else read_npy_layout(out)
        assert table.schema.field("id").type == pa.int64()
        ids = table.column("id").to_pylist()
        kept = {c: table.column(c).to_pylist() for c in ("word", "pos")} if columnar else {}
        expected_columns = ["id", "word", "pos"] if columnar else ["id"]
        assert table.column_names == expected_columns
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert manifest["totals"]["rows"] == N
    assert ids == list(range(N))  # 0-based row numbers, input order
    assert emb.shape == (N, TINY_DIM)
    for column, values in kept.items():
        assert values == [g[column] for g in glosses]
    expected = reference([g["text"] for g in glosses])
    assert np.abs(emb - expected).max() <= TOL


# ---------------------------------------------------------------------------- ids and columns


@pytest.mark.parametrize(
    "name", ["glosses.csv", "glosses.tsv", "glosses.jsonl", "glosses.parquet", "glosses.jsonl.gz"]
)
def test_id_column_is_copied(
    name: str, inputs: Path, tmp_path: Path, tiny_model_dir: str, glosses: list[dict]
) -> None:
    out = tmp_path / "out"
    embed_ok(
        [
            inputs / name,
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--id-column",
            "synset",
            "--keep-columns",
            "word",
        ]
    )
    table, emb = read_parquet_layout(out)
    assert table.column("id").to_pylist() == [g["synset"] for g in glosses]
    assert table.column("word").to_pylist() == [g["word"] for g in glosses]
    assert emb.shape == (N, TINY_DIM)


def test_id_column_to_stdout(inputs: Path, tiny_model_dir: str, glosses: list[dict]) -> None:
    result = embed_ok(
        [inputs / "glosses.parquet", "-o", "-", "--model", tiny_model_dir, "--id-column", "synset"]
    )
    rows, _ = read_json_lines(result.stdout)
    assert [r["id"] for r in rows] == [g["synset"] for g in glosses]


def test_integer_id_column_keeps_its_values(tmp_path: Path, tiny_model_dir: str) -> None:
    # CSV values are text as written (issue 8): an id column of digits stays its strings
    src = tmp_path / "in.csv"
    src.write_text("doc,text\n1000,alpha beta\n7,gamma\n-3,delta epsilon zeta\n", encoding="utf-8")
    out = tmp_path / "out"
    embed_ok([src, "-o", out, "--model", tiny_model_dir, "--id-column", "doc"])
    table, _ = read_parquet_layout(out)
    assert table.column("id").to_pylist() == ["1000", "7", "-3"]
    assert table.schema.field("id").type == pa.string()


def test_integer_id_column_declared_int64(tmp_path: Path, tiny_model_dir: str) -> None:
    from minilm_cli.config import EmbedConfig
    from minilm_cli.pipeline import run_job

    src = tmp_path / "in.csv"
    src.write_text("doc,text\n1000,alpha beta\n7,gamma\n-3,delta epsilon zeta\n", encoding="utf-8")
    out = tmp_path / "out"
    cfg = EmbedConfig([str(src)], str(out), model=tiny_model_dir, id_column="doc", quiet=True)
    cfg.column_types = {"doc": "int64"}  # what --column-type doc=int64 sets
    run_job(cfg)
    table, _ = read_parquet_layout(out)
    assert table.column("id").to_pylist() == [1000, 7, -3]


def test_ids_run_over_all_inputs_in_the_order_given(tmp_path: Path, tiny_model_dir: str, reference) -> None:
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.csv"
    a_texts = ["first file, row one", "first file, row two", "first file, row three"]
    b_texts = ["second file one", "second file two"]
    a.write_text("".join(json.dumps({"text": t}) + "\n" for t in a_texts), encoding="utf-8")
    b.write_text("text\n" + "".join(f"{t}\n" for t in b_texts), encoding="utf-8")
    for order, texts in (([b, a], b_texts + a_texts), ([a, b], a_texts + b_texts)):
        out = tmp_path / f"out-{order[0].stem}"
        embed_ok([*order, "-o", out, "--model", tiny_model_dir, "--precision", "fp32"])
        table, emb = read_parquet_layout(out)
        assert table.column("id").to_pylist() == list(range(5))
        assert np.abs(emb - reference(texts)).max() <= TOL
        manifest = json.loads((out / "manifest.json").read_text())
        assert [i["path"] for i in manifest["inputs"]] == [str(p) for p in order]


def test_directory_input_is_walked_in_sorted_order(tmp_path: Path, tiny_model_dir: str, reference) -> None:
    folder = tmp_path / "corpus"
    (folder / "c").mkdir(parents=True)
    (folder / "b.jsonl").write_text('{"text": "bee one"}\n{"text": "bee two"}\n', encoding="utf-8")
    (folder / "a.csv").write_text("text\nay one\nay two\nay three\n", encoding="utf-8")
    (folder / "c" / "d.txt").write_text("dee one\n", encoding="utf-8")
    (folder / ".hidden.txt").write_text("hidden\n", encoding="utf-8")
    (folder / "notes.md").write_text("not an input\n", encoding="utf-8")
    out = tmp_path / "out"
    embed_ok([folder, "-o", out, "--model", tiny_model_dir, "--precision", "fp32"])
    table, emb = read_parquet_layout(out)
    texts = ["ay one", "ay two", "ay three", "bee one", "bee two", "dee one"]
    assert table.column("id").to_pylist() == list(range(6))
    assert np.abs(emb - reference(texts)).max() <= TOL
    manifest = json.loads((out / "manifest.json").read_text())
    names = [os.path.relpath(i["path"], folder) for i in manifest["inputs"]]
    assert names == ["a.csv", "b.jsonl", os.path.join("c", "d.txt")]
    assert [i["format"] for i in manifest["inputs"]] == ["csv", "jsonl", "txt"]


def test_glob_input_is_sorted(tmp_path: Path, tiny_model_dir: str, reference) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("zeta", "alpha", "mid"):
        (folder / f"{name}.jsonl").write_text(json.dumps({"text": f"file {name}"}) + "\n", encoding="utf-8")
    (folder / "other.txt").write_text("not matched\n", encoding="utf-8")
    result = embed_ok([str(folder / "*.jsonl"), "-o", "-", "--model", tiny_model_dir, "--precision", "fp32"])
    rows, emb = read_json_lines(result.stdout)
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert np.abs(emb - reference(["file alpha", "file mid", "file zeta"])).max() <= TOL


# ---------------------------------------------------------------------------- shards and manifest


@pytest.mark.parametrize("layout", ["parquet", "npy"])
def test_shard_rows_splits_output(
    layout: str, inputs: Path, tmp_path: Path, tiny_model_dir: str, reference, glosses
) -> None:
    out = tmp_path / "out"
    embed_ok(
        [
            inputs / "glosses.jsonl",
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--precision",
            "fp32",
            "--format",
            layout,
            "--shard-rows",
            70,
            "--chunk-size",
            32,
        ]
    )
    names = [f"part-{i:05d}" for i in range(5)]
    if layout == "parquet":
        parts = sorted(out.glob("part-*.parquet"))
        assert [p.stem for p in parts] == names
        counts = [pq.read_metadata(p).num_rows for p in parts]
    else:
        parts = sorted((out / "embeddings").glob("part-*.npy"))
        assert [p.stem for p in parts] == names
        assert [p.stem for p in sorted((out / "metadata").glob("part-*.parquet"))] == names
        counts = [np.load(p).shape[0] for p in parts]
    assert counts == [70, 70, 70, 70, 20]
    table, emb = read_parquet_layout(out) if layout == "parquet" else read_npy_layout(out)
    assert table.column("id").to_pylist() == list(range(N))
    assert np.abs(emb - reference([g["text"] for g in glosses])).max() <= TOL
    manifest = json.loads((out / "manifest.json").read_text())
    shards = manifest["shards"]
    assert [s["index"] for s in shards] == list(range(5))
    assert [s["rows"] for s in shards] == [70, 70, 70, 70, 20]
    assert [s["first_row"] for s in shards] == [0, 70, 140, 210, 280]
    assert manifest["totals"]["rows"] == N
    assert manifest["totals"]["shards"] == 5


def test_shard_rows_dividing_the_input_exactly(tmp_path: Path, inputs: Path, tiny_model_dir: str) -> None:
    out = tmp_path / "out"
    embed_ok(
        [
            inputs / "glosses.parquet",
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--shard-rows",
            100,
            "--chunk-size",
            64,
        ]
    )
    parts = sorted(out.glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [100, 100, 100]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_content(inputs: Path, tmp_path: Path, tiny_model_dir: str) -> None:
    import minilm_cli

    out = tmp_path / "out"
    src = inputs / "glosses.csv"
    embed_ok(
        [
            src,
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--shard-rows",
            128,
            "--keep-columns",
            "word",
            "--id-column",
            "synset",
        ]
    )
    m = json.loads((out / "manifest.json").read_text())
    assert m["tool"] == {"name": "minilm-cli", "version": minilm_cli.__version__}
    assert m["status"] == "complete"
    s = m["settings"]
    assert s["model"]["source"] == "local"
    assert s["model"]["name"] == tiny_model_dir
    assert s["model"]["weights_sha256"] == _sha256(Path(tiny_model_dir) / "model.safetensors")
    assert s["pooling"] == "mean"
    assert s["normalize"] is True
    assert s["max_length"] == TINY_MAX_LENGTH
    assert s["precision"] == "fp32"
    assert s["dtype"] == "float32"
    assert s["format"] == "parquet"
    assert s["dim"] == TINY_DIM
    assert s["text_column"] == "text"
    assert s["id_column"] == "synset"
    assert s["keep_columns"] == ["word"]
    assert s["plan"]["shard_rows"] == 128
    assert m["runtime"]["device"] == "cpu"
    stat = os.stat(src)
    assert m["inputs"] == [
        {
            "path": str(src),
            "format": "csv",
            "compression": None,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    ]
    assert [sh["rows"] for sh in m["shards"]] == [128, 128, 44]
    assert [sh["first_row"] for sh in m["shards"]] == [0, 128, 256]
    assert all(sh["rejected"] == 0 for sh in m["shards"])
    assert m["shards"][-1]["record_end"] == N
    for sh in m["shards"]:
        data = sh["files"]["data"]
        path = out / data["path"]
        assert data["bytes"] == path.stat().st_size
        assert data["sha256"] == _sha256(path)
        assert pq.read_metadata(path).num_rows == sh["rows"]
    t = m["totals"]
    assert t["rows"] == N and t["shards"] == 3 and t["rejected"] == 0
    assert t["tokens"] == sum(sh["tokens"] for sh in m["shards"]) > 0
    assert t["padded_tokens"] >= t["tokens"]
    assert t["truncated"] == sum(sh["truncated"] for sh in m["shards"])


def test_manifest_of_compressed_input(inputs: Path, tmp_path: Path, tiny_model_dir: str) -> None:
    out = tmp_path / "out"
    embed_ok([inputs / "glosses.jsonl.zst", "-o", out, "--model", tiny_model_dir, "--format", "npy"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs"][0]["format"] == "jsonl"
    assert m["inputs"][0]["compression"] == "zstd"
    assert m["settings"]["format"] == "npy"
    files = m["shards"][0]["files"]
    assert files["embeddings"]["path"] == os.path.join("embeddings", "part-00000.npy")
    assert files["metadata"]["path"] == os.path.join("metadata", "part-00000.parquet")
    for rec in files.values():
        assert rec["sha256"] == _sha256(out / rec["path"])


def test_manifest_records_runtime_versions(inputs: Path, tmp_path: Path, tiny_model_dir: str) -> None:
    import platform

    import torch

    out = tmp_path / "out"
    embed_ok([inputs / "glosses.txt", "-o", out, "--model", tiny_model_dir])
    runtime = json.loads((out / "manifest.json").read_text())["runtime"]
    assert runtime.get("torch") == torch.__version__
    assert runtime.get("python") == platform.python_version()


# ---------------------------------------------------------------------------- dtype


def test_float16_parquet_stores_halffloat(
    inputs: Path, tmp_path: Path, tiny_model_dir: str, reference, glosses
) -> None:
    out = tmp_path / "out"
    embed_ok(
        [
            inputs / "glosses.parquet",
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--precision",
            "fp32",
            "--dtype",
            "float16",
        ]
    )
    part = out / "part-00000.parquet"
    field = pq.read_schema(part).field("embedding")
    assert field.type == pa.list_(pa.float16(), TINY_DIM)
    _, emb = read_parquet_layout(out)
    assert np.abs(emb - reference([g["text"] for g in glosses])).max() <= 2e-3
    assert json.loads((out / "manifest.json").read_text())["settings"]["dtype"] == "float16"


def test_float32_parquet_stores_float(inputs: Path, tmp_path: Path, tiny_model_dir: str) -> None:
    out = tmp_path / "out"
    embed_ok([inputs / "glosses.txt", "-o", out, "--model", tiny_model_dir])
    assert pq.read_schema(out / "part-00000.parquet").field("embedding").type == pa.list_(
        pa.float32(), TINY_DIM
    )


def test_float16_npy(inputs: Path, tmp_path: Path, tiny_model_dir: str, reference, glosses) -> None:
    out = tmp_path / "out"
    embed_ok(
        [
            inputs / "glosses.csv",
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--precision",
            "fp32",
            "--dtype",
            "float16",
            "--format",
            "npy",
        ]
    )
    arr = np.load(out / "embeddings" / "part-00000.npy")
    assert arr.dtype == np.float16
    assert arr.shape == (N, TINY_DIM)
    assert np.abs(arr.astype(np.float32) - reference([g["text"] for g in glosses])).max() <= 2e-3


# ---------------------------------------------------------------------------- stdout, stdin, stderr


def test_stdout_carries_only_json_lines(inputs: Path, tiny_model_dir: str) -> None:
    result = embed_ok([inputs / "glosses.csv", "-o", "-", "--model", tiny_model_dir, "--keep-columns", "pos"])
    lines = result.stdout.splitlines()
    assert len(lines) == N
    for line in lines:
        obj = json.loads(line)
        assert set(obj) == {"id", "embedding", "pos"}
        assert len(obj["embedding"]) == TINY_DIM
    # the summary goes to stderr, never into the data stream
    assert "embedded 300 rows" in result.stderr
    assert "embedded" not in result.stdout
    # stderr is not a TTY here: no progress bar
    assert "\r" not in result.stderr
    assert "embedding:" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_quiet_writes_nothing_to_stderr(inputs: Path, tiny_model_dir: str) -> None:
    result = embed_ok([inputs / "glosses.txt", "-o", "-", "--model", tiny_model_dir, "-q"])
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == N


def test_no_progress_bar_in_directory_mode_without_tty(
    inputs: Path, tmp_path: Path, tiny_model_dir: str
) -> None:
    result = embed_ok(
        [inputs / "glosses.jsonl", "-o", tmp_path / "out", "--model", tiny_model_dir, "--chunk-size", 16]
    )
    assert "\r" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("embedded 300 rows into 1 shard(s)")


@pytest.mark.parametrize(
    "name, extra",
    [
        ("glosses.jsonl", ["--input-format", "jsonl"]),
        ("glosses.txt", []),
        ("glosses.csv", ["--input-format", "csv"]),
        ("glosses.tsv", ["--input-format", "tsv"]),
    ],
)
def test_stdin_in_process(name: str, extra: list, tiny_model_dir: str, reference, glosses) -> None:
    # CliRunner's stdin cannot peek, so format sniffing is exercised by the subprocess test below.
    data = (SAMPLE / name).read_bytes()
    result = embed_ok(["-", "-o", "-", "--model", tiny_model_dir, "--precision", "fp32", *extra], input=data)
    rows, emb = read_json_lines(result.stdout)
    assert [r["id"] for r in rows] == list(range(N))
    assert np.abs(emb - reference([g["text"] for g in glosses])).max() <= TOL


def test_stdin_into_a_directory(tiny_model_dir: str, tmp_path: Path, glosses) -> None:
    data = (SAMPLE / "glosses.jsonl").read_bytes()
    out = tmp_path / "out"
    embed_ok(
        [
            "-",
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--id-column",
            "synset",
            "--format",
            "npy",
            "--input-format",
            "jsonl",
        ],
        input=data,
    )
    table, emb = read_npy_layout(out)
    assert table.column("id").to_pylist() == [g["synset"] for g in glosses]
    assert emb.shape == (N, TINY_DIM)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["path"] == "-"


@pytest.mark.slow
def test_stdin_subprocess_json_lines(tiny_model_dir: str, reference, glosses) -> None:
    """The real thing: a pipe in (JSON lines, sniffed), a pipe out, stderr separate and not a TTY."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MINILM_DEBUG", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minilm_cli.cli",
            "embed",
            "-",
            "-o",
            "-",
            "--model",
            tiny_model_dir,
            "--precision",
            "fp32",
            "--keep-columns",
            "word",
        ],
        input=(SAMPLE / "glosses.jsonl").read_bytes(),
        capture_output=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    stdout = proc.stdout.decode("utf-8")
    stderr = proc.stderr.decode("utf-8")
    assert proc.returncode == 0, stderr
    rows, emb = read_json_lines(stdout)
    assert [r["id"] for r in rows] == list(range(N))
    assert [r["word"] for r in rows] == [g["word"] for g in glosses]
    assert np.abs(emb - reference([g["text"] for g in glosses])).max() <= TOL
    assert "\r" not in stderr
    assert "Traceback" not in stderr
    assert "embedded 300 rows" in stderr
    assert "{" not in stderr


# ---------------------------------------------------------------------------- odd but common inputs


def test_crlf_and_no_final_newline(tmp_path: Path, tiny_model_dir: str, reference) -> None:
    texts = ["first line", "second line", "third line"]
    (tmp_path / "w.txt").write_bytes(b"first line\r\nsecond line\r\nthird line")
    (tmp_path / "w.jsonl").write_bytes(
        b'{"text": "first line"}\r\n{"text": "second line"}\r\n{"text": "third line"}'
    )
    (tmp_path / "w.csv").write_bytes(b"text\r\nfirst line\r\nsecond line\r\nthird line")
    for name in ("w.txt", "w.jsonl", "w.csv"):
        result = embed_ok([tmp_path / name, "-o", "-", "--model", tiny_model_dir, "--precision", "fp32"])
        rows, emb = read_json_lines(result.stdout)
        assert [r["id"] for r in rows] == [0, 1, 2], name
        assert np.abs(emb - reference(texts)).max() <= TOL, name


def test_utf8_bom_csv(tmp_path: Path, tiny_model_dir: str, reference) -> None:
    src = tmp_path / "bom.csv"
    src.write_bytes(b"\xef\xbb\xbftext,n\nhello there,5\nsecond row,6\n")
    result = embed_ok(
        [src, "-o", "-", "--model", tiny_model_dir, "--precision", "fp32", "--keep-columns", "n"]
    )
    rows, emb = read_json_lines(result.stdout)
    assert [r["n"] for r in rows] == ["5", "6"]  # CSV values are text as written
    assert np.abs(emb - reference(["hello there", "second row"])).max() <= TOL


def test_utf8_bom_jsonl(tmp_path: Path, tiny_model_dir: str, reference) -> None:
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"text": "hello there"}\n{"text": "second row"}\n')
    result = embed_ok([src, "-o", "-", "--model", tiny_model_dir, "--precision", "fp32"])
    rows, emb = read_json_lines(result.stdout)
    assert [r["id"] for r in rows] == [0, 1]
    assert np.abs(emb - reference(["hello there", "second row"])).max() <= TOL


@pytest.mark.parametrize("column", ["id", "embedding"])
def test_kept_column_named_like_an_output_column(column: str, tmp_path: Path, tiny_model_dir: str) -> None:
    src = tmp_path / "in.csv"
    src.write_text(f"{column},text\n5,hello there\n6,second row\n", encoding="utf-8")
    out = tmp_path / "out"
    result = invoke(["embed", src, "-o", out, "--model", tiny_model_dir, "--keep-columns", column])
    # refused as a usage error, in one line naming the column, and nothing written
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("minilm: error: ") and f"--keep-columns {column}" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("content", ["", "text,n\n"])
def test_empty_input(content: str, tmp_path: Path, tiny_model_dir: str) -> None:
    from minilm_cli import open_dataset

    src = tmp_path / ("empty.csv" if content else "empty.txt")
    src.write_text(content)
    out = tmp_path / "out"
    result = embed_ok([src, "-o", out, "--model", tiny_model_dir])
    assert "embedded 0 rows" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["totals"]["rows"] == 0
    assert manifest["shards"] == []
    assert open_dataset(out).count_rows() == 0
    assert embed_ok([src, "-o", "-", "--model", tiny_model_dir]).stdout == ""


def test_same_file_twice_is_read_once(tmp_path: Path, tiny_model_dir: str) -> None:
    src = tmp_path / "a.txt"
    src.write_text("one\ntwo\n")
    result = embed_ok([src, src, str(tmp_path / "*.txt"), "-o", "-", "--model", tiny_model_dir])
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [0, 1]
