"""Issue 23 part A: --dtype int8/uint8/binary/ubinary and --truncate-dim.

On the packaged weights (fp32): every quantized output equals sentence-transformers'
``quantize_embeddings`` applied to our own float32 output with the manifest's ranges, bit for
bit, and --truncate-dim equals SentenceTransformer(truncate_dim=N). On the tiny BERT: the
ranges are kept by --resume, --append, job-array parts and --ranges, and every mismatch is
refused with one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, assert_one_line_error, cli, manifest, model_args, write_corpus

import minilm_cli
from minilm_cli.output import merge_manifests, verify_output

QUANTIZED = ("binary", "ubinary", "int8", "uint8")
STORED_TYPE = {"binary": np.int8, "ubinary": np.uint8, "int8": np.int8, "uint8": np.uint8}
REAL = ["--precision", "fp32", "--device", "cpu", "--threads", "2", "-q"]


def quantize_embeddings(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None):
    from sentence_transformers.util.quantization import quantize_embeddings as reference

    return reference(vectors, precision=precision, ranges=ranges)


def stored(out: Path) -> np.ndarray:
    """Every row's stored vector, in its stored type (Parquet or .npy layout)."""
    blocks = []
    for shard in manifest(out)["shards"]:
        files = shard["files"]
        if "embeddings" in files:
            blocks.append(np.load(out / files["embeddings"]["path"]))
            continue
        column = pq.read_table(out / files["data"]["path"]).column("embedding").combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False)
        blocks.append(values.reshape(-1, column.type.list_size))
    return np.concatenate(blocks)


def ranges_of(out: Path) -> np.ndarray:
    return np.asarray(manifest(out)["settings"]["ranges"], dtype=np.float32)


# -- the packaged weights, fp32: bit for bit against sentence-transformers ----------------------


@pytest.fixture(scope="module")
def real_texts(tmp_path_factory) -> Path:
    lines = (REPO / "sample_data" / "glosses.txt").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("quant-real") / "texts.txt"
    path.write_text("\n".join(line for line in lines[:150] if line.strip()) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def real_out(tmp_path_factory, real_texts):
    """OUTPUT of each --dtype (and of --truncate-dim 128) over the same texts."""
    root = tmp_path_factory.mktemp("quant-real-out")

    def embed(name: str, *flags: str) -> Path:
        out = root / name
        if not out.exists():
            result = cli(["embed", str(real_texts), "-o", str(out), "--shard-rows", "60", *REAL, *flags])
            assert result.exit_code == 0, result.output
        return out

    return embed


@pytest.mark.real_model
@pytest.mark.parametrize("dtype", QUANTIZED)
def test_quantized_equals_quantize_embeddings(real_out, dtype):
    floats = stored(real_out("float32"))
    out = real_out(dtype, "--dtype", dtype)
    ranges = ranges_of(out) if dtype in ("int8", "uint8") else None
    expected = quantize_embeddings(floats, dtype, ranges)
    got = stored(out)
    assert got.dtype == expected.dtype == STORED_TYPE[dtype]
    assert got.shape == expected.shape == (len(floats), 48 if "binary" in dtype else 384)
    assert np.array_equal(got, expected)
    settings = manifest(out)["settings"]
    assert settings["dtype"] == dtype and settings["dim"] == 384  # dims (binary: bits), not bytes
    assert ("ranges" in settings) == (dtype in ("int8", "uint8"))
    assert verify_output(out).ok


@pytest.mark.real_model
def test_binary_bits_are_the_signs(real_out):
    """Independent of quantize_embeddings: bit i of a row (MSB first) is float dim i > 0."""
    floats = stored(real_out("float32"))
    bits = np.unpackbits(stored(real_out("ubinary", "--dtype", "ubinary")), axis=1)
    assert np.array_equal(bits.astype(bool), floats > 0)
    signed = stored(real_out("binary", "--dtype", "binary")).astype(np.int16) + 128
    assert np.array_equal(np.unpackbits(signed.astype(np.uint8), axis=1).astype(bool), floats > 0)


@pytest.mark.real_model
def test_default_ranges_are_the_packaged_calibration_texts(real_out, real_model_dir):
    """The recorded ranges are each dim's min and max over the packaged calibration texts,
    as sentence-transformers embeds them (to its tolerance, not ours)."""
    from sentence_transformers import SentenceTransformer

    from minilm_cli.model.int8 import calibration_texts

    reference = SentenceTransformer(real_model_dir, device="cpu").encode(
        calibration_texts(), normalize_embeddings=True, convert_to_numpy=True, batch_size=32
    )
    expected = np.vstack((reference.min(axis=0), reference.max(axis=0)))
    assert np.abs(ranges_of(real_out("int8", "--dtype", "int8")) - expected).max() < 1e-5


@pytest.mark.real_model
def test_truncate_dim_equals_sentence_transformers(real_out, real_texts, real_model_dir):
    """--truncate-dim 128: the first 128 dims, normalised again (the packaged model normalises):
    SentenceTransformer(truncate_dim=128).encode(normalize_embeddings=True); its plain encode
    (no normalize_embeddings) gives the same direction, unnormalised."""
    from sentence_transformers import SentenceTransformer

    texts = real_texts.read_text(encoding="utf-8").splitlines()
    model = SentenceTransformer(real_model_dir, device="cpu", truncate_dim=128)
    reference = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=32)
    out = real_out("trunc128", "--truncate-dim", "128")
    ours = stored(out)
    assert ours.shape == (len(texts), 128) and manifest(out)["settings"]["dim"] == 128
    assert np.abs(ours - reference).max() < 1e-6
    plain = model.encode(texts, convert_to_numpy=True, batch_size=32)
    assert np.abs(ours - plain / np.linalg.norm(plain, axis=1, keepdims=True)).max() < 1e-6
    assert verify_output(out).ok


@pytest.mark.real_model
def test_truncate_then_quantize(real_out):
    """--truncate-dim comes first: int8 ranges and binary bits are of the cut vector."""
    floats = stored(real_out("trunc128"))
    for dtype in ("binary", "int8"):
        out = real_out(f"trunc128-{dtype}", "--truncate-dim", "128", "--dtype", dtype)
        ranges = ranges_of(out) if dtype == "int8" else None
        assert np.array_equal(stored(out), quantize_embeddings(floats, dtype, ranges))
    assert ranges_of(real_out("trunc128-int8")).shape == (2, 128)


@pytest.mark.real_model
def test_npy_layout(real_out):
    for dtype in ("int8", "binary"):
        parquet = stored(real_out(dtype, "--dtype", dtype))
        out = real_out(f"{dtype}-npy", "--dtype", dtype, "--format", "npy")
        arrays = sorted((out / "embeddings").glob("part-*.npy"))
        assert arrays and all(np.load(a).dtype == STORED_TYPE[dtype] for a in arrays)
        assert np.array_equal(stored(out), parquet)
        assert verify_output(out).ok


# -- the tiny BERT: ranges kept, mismatches refused ---------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quant-in")
    return {
        "a": write_corpus(root / "a.txt", 120, seed=1),
        "b": write_corpus(root / "b.txt", 80, seed=2),
        "cal": write_corpus(root / "cal.txt", 50, seed=3),
        "cal2": write_corpus(root / "cal2.txt", 50, seed=4),
    }


def embed(model: str, inputs, out: Path, *flags: str):
    inputs = [str(p) for p in (inputs if isinstance(inputs, list) else [inputs])]
    return cli(["embed", *inputs, "-o", str(out), "--shard-rows", "50", *model_args(model), "-q", *flags])


def ok(result) -> None:
    assert result.exit_code == 0, result.output


def test_column_types_and_open_dataset(tiny_model_dir, corpus, tmp_path):
    for dtype, arrow in (("int8", "int8"), ("uint8", "uint8"), ("binary", "int8"), ("ubinary", "uint8")):
        out = tmp_path / dtype
        ok(embed(tiny_model_dir, corpus["a"], out, "--dtype", dtype))
        field = minilm_cli.open_dataset(out).schema.field("embedding")
        assert str(field.type.value_type) == arrow
        assert field.type.list_size == (4 if "binary" in dtype else 32)  # tiny BERT: dim 32
        assert verify_output(out).ok


def test_verify_finds_a_wrong_type(tiny_model_dir, corpus, tmp_path):
    """A shard rewritten with another type (same rows, checksums updated) is a finding."""
    out = tmp_path / "out"
    ok(embed(tiny_model_dir, corpus["a"], out, "--dtype", "int8"))
    doc = json.loads((out / "manifest.json").read_text())
    doc["settings"]["dtype"] = "uint8"
    (out / "manifest.json").write_text(json.dumps(doc))
    report = verify_output(out)
    assert not report.ok
    assert any("embedding values are int8, manifest's dtype uint8 stores uint8" in p for p in report.problems)


def test_resume_keeps_recorded_ranges(tiny_model_dir, corpus, tmp_path):
    """A cut-short int8 run calibrated on --calibration resumes without it: the ranges come
    from the manifest (the packaged texts would give others), and equal a clean run's bytes."""
    clean = tmp_path / "clean"
    ok(embed(tiny_model_dir, corpus["a"], clean, "--dtype", "int8", "--calibration", str(corpus["cal"])))
    cut = tmp_path / "cut"
    shutil.copytree(clean, cut)
    doc = json.loads((cut / "manifest.json").read_text())
    last = doc["shards"].pop()
    doc["status"] = "running"
    for rec in last["files"].values():
        (cut / rec["path"]).unlink()
    (cut / "manifest.json").write_text(json.dumps(doc))
    ok(embed(tiny_model_dir, corpus["a"], cut, "--dtype", "int8", "--resume"))
    assert np.array_equal(stored(cut), stored(clean))
    assert manifest(cut)["settings"]["ranges"] == manifest(clean)["settings"]["ranges"]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--dtype", "binary"], ["dtype differs", "int8", "binary"]),
        (["--dtype", "int8", "--calibration", "CAL2"], ["ranges differs"]),
        (["--dtype", "int8", "--truncate-dim", "16"], ["differs"]),
    ],
)
def test_resume_and_append_refuse_another_form(tiny_model_dir, corpus, tmp_path, flags, words):
    out = tmp_path / "out"
    ok(embed(tiny_model_dir, corpus["a"], out, "--dtype", "int8", "--calibration", str(corpus["cal"])))
    flags = [str(corpus["cal2"]) if f == "CAL2" else f for f in flags]
    before = (out / "manifest.json").read_bytes()
    assert_one_line_error(
        embed(tiny_model_dir, corpus["a"], out, *flags, "--resume"), 3, "--resume refused", *words
    )
    result = embed(tiny_model_dir, [corpus["a"], corpus["b"]], out, *flags, "--append")
    assert_one_line_error(result, 3, "--append refused", *words)
    assert (out / "manifest.json").read_bytes() == before


def test_append_uses_recorded_ranges(tiny_model_dir, corpus, tmp_path):
    out, floats = tmp_path / "out", tmp_path / "floats"
    ok(embed(tiny_model_dir, corpus["a"], out, "--dtype", "uint8", "--calibration", str(corpus["cal"])))
    ok(embed(tiny_model_dir, [corpus["a"], corpus["b"]], out, "--dtype", "uint8", "--append"))
    ok(embed(tiny_model_dir, [corpus["a"], corpus["b"]], floats))
    ranges = ranges_of(out)
    assert np.array_equal(stored(out), quantize_embeddings(stored(floats), "uint8", ranges))
    assert verify_output(out).ok


def test_reuse_needs_the_same_form(tiny_model_dir, corpus, tmp_path):
    earlier = tmp_path / "earlier"
    ok(embed(tiny_model_dir, corpus["a"], earlier, "--dtype", "int8", "--calibration", str(corpus["cal"])))
    result = embed(tiny_model_dir, corpus["a"], tmp_path / "x", "--dtype", "binary", "--reuse", str(earlier))
    assert_one_line_error(result, 2, "dtype differs")
    result = embed(tiny_model_dir, corpus["a"], tmp_path / "y", "--dtype", "int8", "--reuse", str(earlier))
    assert_one_line_error(result, 2, "int8 ranges differ", "--ranges")
    out = tmp_path / "z"  # the same ranges: the earlier rows are byte copies
    ok(
        embed(
            tiny_model_dir,
            [corpus["a"], corpus["b"]],
            out,
            "--dtype",
            "int8",
            "--ranges",
            str(earlier),
            "--reuse",
            str(earlier),
        )
    )
    assert sum(s["reused"] for s in manifest(out)["shards"]) == 120
    assert np.array_equal(stored(out)[:120], stored(earlier))
    assert verify_output(out).ok


def test_parts_share_ranges_and_merge_refuses_others(tiny_model_dir, corpus, tmp_path):
    """Part 1 takes part 0's recorded ranges; a part calibrated otherwise cannot be merged."""
    flags = ["--dtype", "int8", "--num-shards", "2"]
    out = tmp_path / "out"
    ok(
        embed(
            tiny_model_dir,
            corpus["a"],
            out,
            *flags,
            "--shard-index",
            "0",
            "--calibration",
            str(corpus["cal"]),
        )
    )
    ok(embed(tiny_model_dir, corpus["a"], out, *flags, "--shard-index", "1"))
    path, problems = merge_manifests(out)
    assert problems == []
    assert (
        manifest(out)["settings"]["ranges"]
        == manifest(out, "manifest-00000-of-00002.json")["settings"]["ranges"]
    )
    other = tmp_path / "other"
    ok(
        embed(
            tiny_model_dir,
            corpus["a"],
            other,
            *flags,
            "--shard-index",
            "0",
            "--calibration",
            str(corpus["cal"]),
        )
    )
    ok(
        embed(
            tiny_model_dir,
            corpus["a"],
            other,
            *flags,
            "--shard-index",
            "1",
            "--calibration",
            str(corpus["cal2"]),
        )
    )
    path, problems = merge_manifests(other)
    assert len(problems) == 1 and "ranges differs" in problems[0]


def test_ranges_from_an_earlier_output(tiny_model_dir, corpus, tmp_path):
    first = tmp_path / "first"
    ok(embed(tiny_model_dir, corpus["a"], first, "--dtype", "int8", "--calibration", str(corpus["cal"])))
    for source in (first, first / "manifest.json"):
        out = tmp_path / f"second-{source.name}"
        ok(embed(tiny_model_dir, corpus["b"], out, "--dtype", "uint8", "--ranges", str(source)))
        assert manifest(out)["settings"]["ranges"] == manifest(first)["settings"]["ranges"]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--dtype", "binary", "--ranges", "FIRST"], ["--ranges is for --dtype int8 or uint8"]),
        (["--dtype", "int8", "--ranges", "FIRST", "--calibration", "CAL"], ["pass one"]),
        (["--truncate-dim", "33"], ["--truncate-dim 33", "model's dim, 32"]),
        (["--dtype", "int8", "--ranges", "FLOATS"], ["records no int8 ranges"]),
        (["--dtype", "int8", "--ranges", "MISSING"], ["no manifest.json"]),
        (["--dtype", "int8", "--truncate-dim", "8", "--ranges", "FIRST"], ["ranges of 32 dims", "stores 8"]),
    ],
)
def test_bad_flags_are_one_line(tiny_model_dir, corpus, tmp_path_factory, tmp_path, flags, words):
    root = tmp_path_factory.getbasetemp() / "quant-bad"
    if not root.exists():
        ok(embed(tiny_model_dir, corpus["a"], root / "first", "--dtype", "int8"))
        ok(embed(tiny_model_dir, corpus["a"], root / "floats"))
    names = {
        "FIRST": root / "first",
        "FLOATS": root / "floats",
        "MISSING": tmp_path / "nope",
        "CAL": corpus["cal"],
    }
    flags = [str(names.get(f, f)) for f in flags]
    out = tmp_path / "out"
    assert_one_line_error(embed(tiny_model_dir, corpus["a"], out, *flags), 2, *words)
    assert not (out / "manifest.json").exists()


def test_stdout_writes_integers(tiny_model_dir, corpus):
    floats = cli(["embed", str(corpus["b"]), "-o", "-", *model_args(tiny_model_dir), "-q"])
    packed = cli(
        ["embed", str(corpus["b"]), "-o", "-", "--dtype", "ubinary", *model_args(tiny_model_dir), "-q"]
    )
    ok(floats)
    ok(packed)
    vectors = np.array(
        [json.loads(line)["embedding"] for line in floats.stdout.splitlines()], dtype=np.float32
    )
    rows = [json.loads(line)["embedding"] for line in packed.stdout.splitlines()]
    assert all(isinstance(x, int) for x in rows[0])
    assert np.array_equal(np.array(rows), np.packbits(vectors > 0, axis=1))


def test_device_workers_take_worker_0s_ranges(tiny_model_dir, corpus, tmp_path):
    """--device cpu,cpu: worker 1 does not calibrate on its own device; it takes worker 0's
    recorded ranges, so the parts merge (and equal one run calibrated the same way)."""
    single, out = tmp_path / "single", tmp_path / "workers"
    flags = ["--dtype", "int8", "--calibration", str(corpus["cal"])]
    ok(embed(tiny_model_dir, corpus["a"], single, *flags))
    ok(embed(tiny_model_dir, corpus["a"], out, *flags, "--device", "cpu,cpu"))
    merged = manifest(out)["settings"]
    assert merged["ranges"] == manifest(single)["settings"]["ranges"]
    assert np.array_equal(stored(out), stored(single))
    assert verify_output(out).ok


@pytest.mark.parametrize("overflow", ["mean", "split"])
def test_long_documents_quantize_their_rows(tiny_model_dir, tmp_path, overflow):
    """--overflow mean quantizes the merged document vector (not its windows); split each window."""
    source = REPO / "sample_data" / "long_texts.jsonl"
    flags = ["--overflow", overflow, "--max-length", "32", "--truncate-dim", "20"]
    ok(embed(tiny_model_dir, source, tmp_path / "floats", *flags))
    ok(embed(tiny_model_dir, source, tmp_path / "bits", *flags, "--dtype", "binary"))
    floats = stored(tmp_path / "floats")
    assert floats.shape[1] == 20
    assert np.array_equal(stored(tmp_path / "bits"), quantize_embeddings(floats, "binary"))
    assert stored(tmp_path / "bits").shape[1] == 3  # ceil(20 / 8)
    ok(embed(tiny_model_dir, source, tmp_path / "full", *flags[:4]))
    full = stored(tmp_path / "full")[:, :20]  # mean: the whole vector's first dims, not the windows'
    assert np.abs(floats - full / np.linalg.norm(full, axis=1, keepdims=True)).max() < 1e-6
