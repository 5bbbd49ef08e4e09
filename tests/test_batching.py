"""How rows are chunked and batched never changes what comes out, and the planners keep their promises."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minilm_cli.batching import chunk_rows, pad_batch, plan_batches
from minilm_cli.sources import CheckedRows, Reject

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
TOL = 1e-5
TINY_MAX_LENGTH = 64


# ---------------------------------------------------------------------------- end to end


def invoke(args: list):
    from click.testing import CliRunner

    from minilm_cli.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def mixed_texts() -> list[str]:
    """Real glosses, very short texts and texts past the tiny model's 64 tokens, shuffled."""
    glosses = [r["text"] for r in pq.read_table(SAMPLE / "glosses.parquet").to_pylist()]
    rng = random.Random(7)
    long_texts = [" ".join(rng.sample(glosses, 6)) for _ in range(15)]
    short = ["a", "ok", "yes no", "x y z", "hello"] * 3
    texts = glosses[:170] + long_texts + short
    rng.shuffle(texts)
    return texts


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory: pytest.TempPathFactory, mixed_texts: list[str]) -> Path:
    path = tmp_path_factory.mktemp("batching") / "mixed.jsonl"
    path.write_text(
        "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(mixed_texts)), encoding="utf-8"
    )
    return path


def run_stdout(mixed_input: Path, model: str, *extra) -> tuple[list, np.ndarray]:
    result = invoke(
        [
            "embed",
            mixed_input,
            "-o",
            "-",
            "--model",
            model,
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--keep-columns",
            "n",
            *extra,
        ]
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(r["id"] == r["n"] for r in rows)  # the kept column travels with its row
    return [r["id"] for r in rows], np.asarray([r["embedding"] for r in rows], dtype=np.float32)


@pytest.fixture(scope="module")
def one_by_one(tiny_model_dir: str, mixed_texts: list[str]) -> np.ndarray:
    """Reference: plain transformers, one text per forward pass (no padding at all)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir).eval()
    out = []
    with torch.inference_mode():
        for text in mixed_texts:
            enc = tok([text], truncation=True, max_length=TINY_MAX_LENGTH, return_tensors="pt")
            pooled = model(**enc).last_hidden_state.mean(dim=1)
            out.append(torch.nn.functional.normalize(pooled, dim=1))
    return torch.cat(out).numpy()


@pytest.fixture(scope="module")
def baseline(
    mixed_input: Path, tiny_model_dir: str, one_by_one: np.ndarray, mixed_texts
) -> tuple[list, np.ndarray]:
    ids, emb = run_stdout(mixed_input, tiny_model_dir)
    assert ids == list(range(len(mixed_texts)))
    assert np.abs(emb - one_by_one).max() <= TOL
    return ids, emb


@pytest.mark.parametrize(
    "extra",
    [
        ["--batch-tokens", "64"],
        ["--batch-tokens", "512"],
        ["--batch-tokens", "16384"],
        ["--batch-tokens", "1"],
        ["--batch-size", "1"],
        ["--batch-size", "7"],
        ["--batch-size", "256"],
        ["--chunk-size", "5"],
        ["--chunk-size", "1000"],
        ["--chunk-size", "1"],
        ["--chunk-size", "13", "--batch-size", "3", "--batch-tokens", "100"],
    ],
    ids=lambda e: " ".join(e),
)
def test_batching_does_not_change_results(
    extra: list, mixed_input: Path, tiny_model_dir: str, baseline
) -> None:
    ids, emb = run_stdout(mixed_input, tiny_model_dir, *extra)
    assert ids == baseline[0]
    assert emb.shape == baseline[1].shape
    assert np.abs(emb - baseline[1]).max() <= TOL


@pytest.mark.parametrize("layout", ["parquet", "npy"])
@pytest.mark.parametrize("chunk, shard", [(5, 37), (64, 50), (1000, 37), (7, 7)])
def test_chunks_and_shards_into_a_directory(
    layout: str, chunk: int, shard: int, mixed_input: Path, tiny_model_dir: str, baseline, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = invoke(
        [
            "embed",
            mixed_input,
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--precision",
            "fp32",
            "--format",
            layout,
            "--chunk-size",
            chunk,
            "--shard-rows",
            shard,
            "--batch-tokens",
            300,
        ]
    )
    assert result.exit_code == 0, result.stderr
    n = len(baseline[0])
    expected = [shard] * (n // shard) + ([n % shard] if n % shard else [])
    if layout == "parquet":
        files = sorted(out.glob("part-*.parquet"))
        tables = [pq.read_table(f) for f in files]
        emb = np.concatenate(
            [np.asarray(t.column("embedding").to_pylist(), dtype=np.float32) for t in tables]
        )
    else:
        files = sorted((out / "embeddings").glob("part-*.npy"))
        tables = [pq.read_table(f) for f in sorted((out / "metadata").glob("part-*.parquet"))]
        emb = np.concatenate([np.load(f) for f in files])
    assert [t.num_rows for t in tables] == expected
    assert pa.concat_tables(tables).column("id").to_pylist() == baseline[0]
    assert np.abs(emb - baseline[1]).max() <= TOL
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == expected
    assert [s["record_end"] for s in manifest["shards"]] == np.cumsum(expected).tolist()


def test_embedder_batch_settings_do_not_change_results(
    tiny_model_dir: str, mixed_texts: list[str], one_by_one
) -> None:
    from minilm_cli.model import Embedder

    for batch_tokens, batch_size in [(16384, 256), (64, 256), (700, 5)]:
        embedder = Embedder(
            model=tiny_model_dir,
            device="cpu",
            precision="fp32",
            batch_tokens=batch_tokens,
            batch_size=batch_size,
        )
        chunk = embedder.tokenize(mixed_texts)
        for batch in chunk.batches:
            rows, width = batch.input_ids.shape
            assert rows <= batch_size
            assert rows * width <= batch_tokens or rows == 1
        assert np.abs(embedder.run(chunk) - one_by_one).max() <= TOL


# ---------------------------------------------------------------------------- plan_batches


def check_plan(lengths: np.ndarray, batch_tokens: int, batch_size: int) -> list[np.ndarray]:
    groups = plan_batches(lengths, batch_tokens, batch_size)
    flat = np.concatenate(groups) if groups else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every row exactly once
    for g in groups:
        assert len(g) >= 1
        assert len(g) <= batch_size
        assert len(g) * int(lengths[g].max()) <= batch_tokens or len(g) == 1
    longest = [int(lengths[g].max()) for g in groups]
    assert longest == sorted(longest, reverse=True)  # longest first
    return groups


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=400),
    batch_tokens=st.integers(min_value=1, max_value=20000),
    batch_size=st.integers(min_value=1, max_value=300),
)
def test_plan_batches_properties(lengths: list[int], batch_tokens: int, batch_size: int) -> None:
    check_plan(np.asarray(lengths, dtype=np.int64), batch_tokens, batch_size)


def test_plan_batches_examples() -> None:
    assert plan_batches(np.array([], dtype=np.int64), 100, 10) == []
    groups = check_plan(np.array([10, 50, 20, 50, 5]), batch_tokens=100, batch_size=10)
    assert [g.tolist() for g in groups] == [[1, 3], [2, 0, 4]]
    # a single row longer than the whole budget still travels, alone
    groups = check_plan(np.array([3, 500, 3]), batch_tokens=100, batch_size=10)
    assert groups[0].tolist() == [1]
    # the row cap binds before the token budget
    groups = check_plan(np.full(25, 4), batch_tokens=10_000, batch_size=10)
    assert [len(g) for g in groups] == [10, 10, 5]


def test_pad_batch() -> None:
    ids = [np.array([101, 7, 102]), np.array([101, 102]), np.array([101, 8, 9, 10, 102])]
    lengths = np.array([3, 2, 5])
    batch = pad_batch(ids, lengths, np.array([2, 0]), pad_id=0)
    assert batch.rows.tolist() == [2, 0]
    assert batch.input_ids.tolist() == [[101, 8, 9, 10, 102], [101, 7, 102, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


# ---------------------------------------------------------------------------- chunk_rows


def make_pieces(
    sizes: list[int], bad: set[int], first_record: int = 0
) -> tuple[list[CheckedRows], list[int], list[Reject]]:
    """Pieces of ``sizes`` records; records whose global index is in ``bad`` are rejects."""
    pieces, good_positions, rejects = [], [], []
    record = first_record
    for size in sizes:
        positions = [p for p in range(record, record + size) if p not in bad]
        mine = [
            Reject("f", "line", p + 1, "empty text", "", position=p)
            for p in range(record, record + size)
            if p in bad
        ]
        pieces.append(
            CheckedRows(
                texts=[f"t{p}" for p in positions],
                ids=pa.array(positions, pa.int64()),
                keep=pa.table({"k": pa.array([p * 10 for p in positions], pa.int64())}),
                positions=np.asarray(positions, dtype=np.int64),
                rejects=mine,
                first_record=record,
                records=size,
            )
        )
        good_positions += positions
        rejects += mine
        record += size
    return pieces, good_positions, rejects


def check_chunks(sizes, bad, chunk_size, shard_rows, first_row=0, first_record=0):
    pieces, good, rejects = make_pieces(sizes, bad, first_record)
    chunks = list(chunk_rows(iter(pieces), chunk_size, shard_rows, first_row, first_record))
    assert chunks, "at least the closing chunk"
    assert chunks[-1].shard_end
    # every good row exactly once, in input order, with its id and kept values
    assert [t for c in chunks for t in c.texts] == [f"t{p}" for p in good]
    assert [i for c in chunks for i in c.ids.to_pylist()] == good
    assert [k for c in chunks if c.keep is not None for k in c.keep.column("k").to_pylist()] == [
        p * 10 for p in good
    ]
    # every reject exactly once, in the chunk whose record window holds it
    assert [r.position for c in chunks for r in c.rejects] == [r.position for r in rejects]
    row, previous_end = first_row, first_record
    for k, c in enumerate(chunks):
        n = len(c)
        assert c.first_row == row
        assert n <= chunk_size
        assert len(c.ids) == n
        if n:  # never straddles a shard boundary
            assert c.first_row // shard_rows == (c.first_row + n - 1) // shard_rows
        ends_at_boundary = n > 0 and (c.first_row + n) % shard_rows == 0
        if k < len(chunks) - 1:
            assert n > 0
            assert c.shard_end == ends_at_boundary
            assert c.record_end == int(c.ids.to_pylist()[-1]) + 1  # just past its last row
        assert c.record_end >= previous_end  # monotone
        for r in c.rejects:
            assert previous_end <= r.position < c.record_end or k == len(chunks) - 1
        previous_end = c.record_end
        row += n
    assert chunks[-1].record_end == first_record + sum(sizes)
    return chunks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), max_size=12),
    bad_fraction=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    chunk_size=st.integers(min_value=1, max_value=50),
    shard_rows=st.integers(min_value=1, max_value=60),
    seed=st.integers(0, 1000),
)
def test_chunk_rows_properties(sizes, bad_fraction, chunk_size, shard_rows, seed) -> None:
    rng = random.Random(seed)
    bad = {p for p in range(sum(sizes)) if rng.random() < bad_fraction}
    check_chunks(sizes, bad, chunk_size, shard_rows)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=6),
    chunk_size=st.integers(min_value=1, max_value=40),
    shard_rows=st.integers(min_value=1, max_value=40),
    shards_done=st.integers(min_value=0, max_value=5),
)
def test_chunk_rows_resumed_at_a_shard_boundary(sizes, chunk_size, shard_rows, shards_done) -> None:
    first_row = shards_done * shard_rows
    chunks = check_chunks(
        sizes, set(), chunk_size, shard_rows, first_row=first_row, first_record=first_row + 3
    )
    assert chunks[0].first_row == first_row


def test_chunk_rows_examples() -> None:
    # 300 rows in pieces of 64, chunk 32, shard 70: chunks end at 32, 64, 70, 102, ...
    chunks = check_chunks([64] * 4 + [44], set(), chunk_size=32, shard_rows=70)
    ends = [c.first_row + len(c) for c in chunks if len(c)]
    assert ends[:6] == [32, 64, 70, 102, 134, 140]
    assert [c.first_row + len(c) for c in chunks if c.shard_end and len(c)] == [70, 140, 210, 280, 300]
    # no input at all: one empty closing chunk
    (only,) = check_chunks([], set(), chunk_size=8, shard_rows=8)
    assert len(only) == 0 and only.record_end == 0
    # everything rejected: the rejects still ride on a chunk, to be recorded
    chunks = check_chunks([5], {0, 1, 2, 3, 4}, chunk_size=8, shard_rows=8)
    assert sum(len(c.rejects) for c in chunks) == 5


@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_token_ids_in_slices_equal_the_whole_chunk_tokenized_at_once(tiny_model_dir, monkeypatch, pooling):
    """The tokenizer is called a slice of texts at a time (its Encoding objects are large):
    ids, lengths, truncation flags and spans are the tokenizer's own for the whole list."""
    from tokenizers import Tokenizer

    from minilm_cli.model import embedder as embedder_module

    monkeypatch.setattr(embedder_module, "ENCODE_SLICE", 3)
    model = embedder_module.Embedder(model=tiny_model_dir, device="cpu", precision="fp32", pooling=pooling)
    texts = [" ".join(["word"] * n) + f" text {n}" for n in (1, 5, 90, 2, 0, 7, 3, 200, 4, 6)]
    ids, lengths, overflowed, spans = model.token_ids(texts)

    tokenizer = Tokenizer.from_file(f"{tiny_model_dir}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.enable_truncation(64)
    expected = tokenizer.encode_batch(texts)
    assert lengths.tolist() == [len(e.ids) for e in expected]
    assert ids.values.tolist() == [i for e in expected for i in e.ids]
    assert ids.offsets.tolist() == np.cumsum([0, *lengths]).tolist()
    assert overflowed == [bool(e.overflowing) for e in expected] and sum(overflowed) == 2
    if pooling == "none":
        assert [s.tolist() for s in spans] == [[list(o) for o in e.offsets] for e in expected]
    else:
        assert spans is None
    assert model.token_ids([])[1].tolist() == []
