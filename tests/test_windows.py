"""--overflow split|mean|reject: windows of long documents (issue 11)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import REPO, WORDS, manifest, output_files

import minilm_cli
from minilm_cli.config import EmbedConfig
from minilm_cli.errors import BadRowError, InputError
from minilm_cli.output import verify_output
from minilm_cli.pipeline import run_job
from minilm_cli.pipeline.windows import plan_windows, text_pieces, text_windows, token_counts
from minilm_cli.storage.local import LocalPendingFile

SAMPLE = REPO / "sample_data"
UNICODE = ["café", "naïve", "日本語", "😀ok", "Ωmega", "straße", "ﬁne", "e\u0301te", "x" * 30]


def long_text(seed: int, words: int, extra: list[str] = ()) -> str:
    rng = random.Random(seed)
    pool = WORDS + list(extra)
    gaps = [" ", " ", " ", "  ", "\n", "\t", ", "]
    return "".join(rng.choice(pool) + rng.choice(gaps) for _ in range(words)).strip()


def config(inputs: list[str], out: Path | str, **kw) -> EmbedConfig:
    base = {"quiet": True, "precision": "fp32", "device": "cpu"}
    return EmbedConfig(inputs=inputs, output=str(out), **{**base, **kw})


def write_jsonl(path: Path, texts: list[str]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return str(path)


def read_output(out: Path) -> pa.Table:
    table = minilm_cli.open_dataset(out).to_table()
    return table


def vectors_of(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> tuple[str, list[str]]:
    """Five documents of several windows each (tiny model: 64 tokens), a short one, one with
    multi-byte characters everywhere, and one that is only whitespace after its first window."""
    texts = [long_text(i, 120 + 40 * i) for i in range(4)]
    texts.append("a short text")
    texts.append(long_text(9, 200, UNICODE * 30))
    texts.append(long_text(10, 20) + " " * 20000 + "\n" * 5000)  # one window, then only spaces
    return write_jsonl(tmp_path_factory.mktemp("docs") / "docs.jsonl", texts), texts


# ---------------------------------------------------------------------------- tokens and offsets


def full_encoding(plan, text):
    return plan.tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("piece_chars", [7, 40, 1000])
def test_pieces_tokenize_exactly_like_the_whole_text(tiny_embedder, piece_chars):
    plan = plan_windows(config([], "x"), tiny_embedder)
    plan.piece_chars = piece_chars
    text = long_text(3, 400, UNICODE) + "   \n\n  " + long_text(4, 50)
    whole = full_encoding(plan, text)
    ids, offsets, starts = zip(*text_pieces(plan, text))
    assert np.concatenate(ids).tolist() == whole.ids
    assert [tuple(o) for o in np.concatenate(offsets).tolist()] == whole.offsets
    assert np.concatenate(starts).tolist() == [not t.startswith("##") for t in whole.tokens]


def is_sentence_end(text: str, offsets: list[tuple[int, int]], i: int) -> bool:
    """The rule of window_edges.py, written out: token i is ".", "!" or "?" followed by
    whitespace, or any token followed by whitespace with a line break in it."""
    start, end = offsets[i]
    gap = text[end : offsets[i + 1][0] if i + 1 < len(offsets) else len(text)]
    if not gap or not gap[0].isspace():
        return False
    return text[start:end] in (".", "!", "?") or "\n" in gap or "\r" in gap


def assert_window_edges(plan, text: str, windows: list) -> int:
    """Every window against the whole text's tokens: a slice of them, begun at a word start
    and ended at a word end ("##" marks a later piece of a word), its substring tokenizing
    to exactly its ids, the next one sharing at most --stride tokens, a sentence end in the
    last quarter taken when there is one. Returns how many windows ended at a sentence end."""
    whole = full_encoding(plan, text)
    n, span, quarter = len(whole.ids), plan.span, plan.span // 4
    word_start = [not t.startswith("##") for t in whole.tokens] + [True]  # the text's end ends a word
    first_at = {}
    for i, (start, _) in enumerate(whole.offsets):
        first_at.setdefault(start, i)
    at, sentence_cuts = 0, 0
    for k, w in enumerate(windows):
        size = len(w.ids)
        assert first_at[w.char_start] == at and 1 <= size <= span
        assert w.ids.tolist() == whole.ids[at : at + size]
        assert w.char_end == whole.offsets[at + size - 1][1]
        assert word_start[at] and word_start[at + size], (k, text[w.char_start : w.char_end])
        again = plan.tokenizer.encode(text[w.char_start : w.char_end], add_special_tokens=False).ids
        assert again == w.ids.tolist(), (k, text[w.char_start : w.char_end])
        if k == len(windows) - 1:
            assert at + size == n  # the last window reaches the end
            break
        ends = [j for j in range(at + span - quarter, at + span) if is_sentence_end(text, whole.offsets, j)]
        ends = [j for j in ends if word_start[j + 1]]
        if ends and quarter:
            assert at + size - 1 == ends[-1], (k, text[w.char_end - 40 : w.char_end + 10])
            sentence_cuts += 1
        else:  # the last word end a full window allows
            assert not any(word_start[at + size + 1 : at + span + 1])
        end = at + size
        following = next(i for i in range(max(at + 1, end - plan.stride), end + 1) if word_start[i])
        at = following
    return sentence_cuts


LONG_TEXTS = [json.loads(line)["text"] for line in (SAMPLE / "long_texts.jsonl").open(encoding="utf-8")]


@pytest.mark.parametrize("stride", [0, 8, 61])
@pytest.mark.parametrize("piece_chars", [50, None])
def test_windows_begin_and_end_at_word_edges(tiny_embedder, stride, piece_chars):
    plan = plan_windows(config([], "x", overflow="split", stride=stride), tiny_embedder)
    plan.piece_chars = piece_chars or plan.piece_chars  # 50: many pieces per window
    sentence_cuts = 0
    for text in [LONG_TEXTS[0], long_text(1, 300), long_text(2, 250, UNICODE * 20), "one", "a b"]:
        windows = list(text_windows(plan, text))
        sentence_cuts += assert_window_edges(plan, text, windows)
    assert sentence_cuts >= 10  # the licence text has many


def test_a_sentence_end_in_the_last_quarter_ends_the_window(tiny_embedder):
    plan = plan_windows(config([], "x", overflow="split", stride=0), tiny_embedder)  # 62 tokens
    late = "a " * 50 + "end. " + "b " * 100  # "." is token 51 of 62: in the last quarter
    early = "a " * 40 + "end! " + "b " * 100  # "!" is token 41: not
    line = "a " * 55 + "end\n" + "b " * 100  # a line break after token 56
    assert [len(w.ids) for w in text_windows(plan, late)][:2] == [52, 62]
    assert [len(w.ids) for w in text_windows(plan, early)][0] == 62
    assert [len(w.ids) for w in text_windows(plan, line)][0] == 56
    assert late[: next(text_windows(plan, late)).char_end].endswith("end.")


def test_a_word_longer_than_a_window_is_the_one_cut_inside_a_word(tiny_embedder):
    plan = plan_windows(config([], "x", overflow="split", stride=2), tiny_embedder)
    plan.max_length = 12  # 10 tokens a window
    word = "tokenisationalisms" * 5  # one word of more than 10 pieces (under 100 characters)
    text = f"a b {word} c d e"
    tokens = full_encoding(plan, text).tokens
    assert sum(t.startswith("##") for t in tokens) > 10
    windows = list(text_windows(plan, text))
    assert windows[0].ids.tolist() == full_encoding(plan, "a b").ids  # ends before the long word
    inside = [w for w in windows if text[w.char_start : w.char_end] not in (word, "a b")]
    assert len(inside) >= 2 and all(len(w.ids) <= 10 for w in windows)
    assert windows[-1].char_end == len(text)
    assert any(len(w.ids) == 10 and text[w.char_start : w.char_end] in word for w in windows)  # cut at 10
    ids = [t for w in windows for t in w.ids.tolist()]
    assert set(ids) == set(full_encoding(plan, text).ids)  # every token in some window


# ---------------------------------------------------------------------------- the pipeline


def run(tiny_embedder, inputs, out, **kw):
    return run_job(config(inputs, out, **kw), embedder=tiny_embedder)


def test_split_rows_and_columns(tiny_embedder, docs, tmp_path):
    path, texts = docs
    result = run(tiny_embedder, [path], tmp_path / "out", overflow="split")
    table = read_output(tmp_path / "out")
    assert table.column_names == ["id", "embedding", "window", "char_start", "char_end", "tokens"]
    assert table.schema.field("window").type == pa.int32() and table.schema.field("tokens").type == pa.int32()
    assert table.schema.field("char_start").type == pa.int64()
    plan = plan_windows(config([], "x", overflow="split"), tiny_embedder)
    expected = []
    for i, text in enumerate(texts):
        for k, w in enumerate(text_windows(plan, text)):
            expected.append((i, k, w.char_start, w.char_end, len(w.ids) + 2))
    got = list(
        zip(*(table.column(c).to_pylist() for c in ["id", "window", "char_start", "char_end", "tokens"]))
    )
    assert got == expected
    short = texts.index("a short text")
    assert [r for r in got if r[0] == short] == [(short, 0, 0, 12, 5)]
    blank = [r for r in got if r[0] == len(texts) - 1]  # the whitespace tail adds no window
    assert len(blank) == 1 and blank[0][3] == len(texts[-1].rstrip())
    assert result.documents == len(texts) and result.windows == len(got) == result.rows
    assert verify_output(tmp_path / "out").ok


@pytest.mark.parametrize("mode", ["split", "mean"])
def test_windows_count_every_window_row_a_dedup_copy_included(tiny_embedder, tmp_path, mode):
    text = long_text(21, 150)
    path = write_jsonl(tmp_path / "twice.jsonl", [text, "short", text])  # the same document twice
    plan = plan_windows(config([], "x", overflow="split"), tiny_embedder)
    per_doc = len(list(text_windows(plan, text)))
    result = run(tiny_embedder, [path], tmp_path / "out", overflow=mode)
    assert per_doc >= 3
    assert result.windows == 2 * per_doc + 1  # the copies are window rows too
    assert result.embedded == per_doc + 1  # ... but the model ran each distinct window once
    assert manifest(tmp_path / "out")["totals"]["windows"] == 2 * per_doc + 1
    assert f"({2 * per_doc + 1} windows" in result.summary()


def test_one_document_longer_than_a_chunk_and_a_shard(tiny_embedder, docs, tmp_path):
    path, texts = docs
    run(tiny_embedder, [path], tmp_path / "big", overflow="split")
    run(tiny_embedder, [path], tmp_path / "small", overflow="split", chunk_size=3, shard_rows=4, format="npy")
    big, small = read_output(tmp_path / "big"), tmp_path / "small"
    manifest = json.loads((small / "manifest.json").read_text())
    ids = pa.concat_tables(pq.read_table(small / s["files"]["metadata"]["path"]) for s in manifest["shards"])
    vectors = np.concatenate([np.load(small / s["files"]["embeddings"]["path"]) for s in manifest["shards"]])
    assert ids.to_pydict() == big.drop_columns(["embedding"]).to_pydict()
    np.testing.assert_allclose(vectors, vectors_of(big), atol=1e-6)
    for shard in manifest["shards"]:  # every shard holds whole documents, first window first
        meta = pq.read_table(small / shard["files"]["metadata"]["path"])
        assert meta.column("window")[0].as_py() == 0
        assert shard["record_end"] == meta.column("id")[-1].as_py() + 1
    assert max(s["rows"] for s in manifest["shards"]) > 4  # a document ran past --shard-rows
    assert verify_output(small).ok


def test_mean_is_the_token_weighted_mean_of_the_windows(tiny_embedder, docs, tmp_path):
    path, texts = docs
    run(tiny_embedder, [path], tmp_path / "split", overflow="split")
    result = run(tiny_embedder, [path], tmp_path / "mean", overflow="mean", chunk_size=3, shard_rows=5)
    split, mean = read_output(tmp_path / "split"), read_output(tmp_path / "mean")
    assert mean.column_names == ["id", "embedding"]
    assert mean.column("id").to_pylist() == list(range(len(texts)))
    windows, weights = vectors_of(split).astype(np.float64), np.asarray(split.column("tokens"))
    ids = np.asarray(split.column("id"))
    expected = []
    for i in range(len(texts)):
        mine = ids == i
        v = (windows[mine] * weights[mine, None]).sum(0) / weights[mine].sum()
        expected.append(v / np.linalg.norm(v))  # the tiny model normalises
    np.testing.assert_allclose(vectors_of(mean), np.asarray(expected), atol=1e-6)
    assert result.rows == len(texts) and result.windows == split.num_rows
    shards = json.loads((tmp_path / "mean" / "manifest.json").read_text())["shards"]
    assert [s["rows"] for s in shards] == [5, len(texts) - 5]  # --shard-rows counts documents
    assert verify_output(tmp_path / "mean").ok


@pytest.mark.parametrize("mode", ["split", "mean"])
def test_resume_after_a_failed_shard_equals_a_clean_run(tiny_embedder, docs, tmp_path, monkeypatch, mode):
    path, _ = docs
    kw = {"overflow": mode, "chunk_size": 5, "shard_rows": 6 if mode == "split" else 2}
    run(tiny_embedder, [path], tmp_path / "clean", **kw)
    published = []
    real = LocalPendingFile.commit

    def commit(self):
        if self.path.endswith(".parquet") and len(published) >= 2:  # the third shard fails
            raise OSError(28, "No space left on device", self.path)
        if self.path.endswith(".parquet"):
            published.append(self.path)
        real(self)

    monkeypatch.setattr(LocalPendingFile, "commit", commit)
    with pytest.raises(OSError):
        run(tiny_embedder, [path], tmp_path / "out", **kw)
    monkeypatch.undo()
    assert len(manifest(tmp_path / "out")["shards"]) == 2
    run(tiny_embedder, [path], tmp_path / "out", resume=True, **kw)
    assert output_files(tmp_path / "out") == output_files(tmp_path / "clean")


def test_num_shards_2_equals_one_run(tiny_embedder, docs, tmp_path):
    path, _ = docs
    cfg = {"overflow": "split", "chunk_size": 4, "shard_rows": 10}
    run(tiny_embedder, [path], tmp_path / "one", **cfg)
    for index in range(2):
        run(tiny_embedder, [path], tmp_path / "two", num_shards=2, shard_index=index, **cfg)
    minilm_cli.output.merge_manifests(tmp_path / "two")
    one, two = read_output(tmp_path / "one"), read_output(tmp_path / "two")
    assert two.drop_columns(["embedding"]).to_pydict() == one.drop_columns(["embedding"]).to_pydict()
    np.testing.assert_allclose(vectors_of(two), vectors_of(one), atol=1e-6)
    assert verify_output(tmp_path / "two").ok


def test_split_to_stdout(tiny_embedder, docs, tmp_path, capsys):
    path, texts = docs
    run(tiny_embedder, [path], "-", overflow="split")
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["window"] == 0 and rows[1]["window"] == 1 and rows[0]["id"] == rows[1]["id"] == 0
    assert texts[0][rows[1]["char_start"] : rows[1]["char_end"]]


def test_reject_names_the_token_count(tiny_embedder, docs, tmp_path):
    path, texts = docs
    with pytest.raises(BadRowError, match=r"line 1: text is \d+ tokens, over --max-length 64"):
        run(tiny_embedder, [path], tmp_path / "fail", overflow="reject")
    result = run(tiny_embedder, [path], tmp_path / "skip", overflow="reject", on_error="skip")
    table = read_output(tmp_path / "skip")
    counts = token_counts(plan_windows(config([], "x"), tiny_embedder), texts)
    assert table.column("id").to_pylist() == [i for i, c in enumerate(counts) if c <= 64]
    rejects = [json.loads(line) for line in (tmp_path / "skip" / "rejects" / "part-00000.jsonl").open()]
    assert [r["line"] for r in rejects] == [i + 1 for i, c in enumerate(counts) if c > 64]
    assert rejects[0]["reason"] == f"text is {counts[0]} tokens, over --max-length 64 (--overflow reject)"
    assert result.rejected == len(rejects) >= 5


def test_flags_are_checked_before_output_is_touched(tiny_embedder, docs, tmp_path):
    path, _ = docs
    with pytest.raises(InputError, match="--stride 62 must be"):
        run(tiny_embedder, [path], tmp_path / "a", overflow="split", stride=62)
    with pytest.raises(InputError, match="--stride is for"):
        run(tiny_embedder, [path], tmp_path / "b", stride=3)
    with pytest.raises(InputError, match="--keep-columns tokens"):
        run(tiny_embedder, [path], tmp_path / "c", overflow="split", keep_columns=("tokens",))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_manifest_records_overflow(tiny_embedder, docs, tmp_path):
    path, _ = docs
    run(tiny_embedder, [path], tmp_path / "out", overflow="mean", stride=5)
    settings = json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]
    assert settings["overflow"] == {"mode": "mean", "window": 64, "stride": 5}
    with pytest.raises(minilm_cli.errors.OutputConflict, match="overflow.stride"):
        run(tiny_embedder, [path], tmp_path / "out", overflow="mean", stride=6, resume=True)


# ---------------------------------------------------------------------------- the real model


@pytest.mark.real_model
def test_each_window_is_the_model_run_on_exactly_its_tokens(real_model_dir, sample_texts, tmp_path):
    import torch
    from transformers import BertModel

    from minilm_cli.model import Embedder

    texts = [" ".join(sample_texts[i : i + 25]) for i in (0, 40, 80)]
    path = write_jsonl(tmp_path / "long.jsonl", texts)
    embedder = Embedder(model=real_model_dir, device="cpu", precision="fp32")
    run_job(config([path], tmp_path / "split", overflow="split"), embedder=embedder)
    run_job(config([path], tmp_path / "mean", overflow="mean"), embedder=embedder)
    table = read_output(tmp_path / "split")
    assert table.num_rows >= 6 and max(table.column("window").to_pylist()) >= 1
    plan = plan_windows(config([], "x", overflow="split"), embedder)
    model = BertModel.from_pretrained(real_model_dir).eval()
    got = vectors_of(table)
    expected = []
    for text in texts:
        for w in text_windows(plan, text):
            ids = torch.tensor([[101, *w.ids.tolist(), 102]])
            with torch.no_grad():
                hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            expected.append(torch.nn.functional.normalize(hidden.mean(dim=1), dim=1)[0].numpy())
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5)
    weights, ids = np.asarray(table.column("tokens"), np.float64), np.asarray(table.column("id"))
    means = []
    for i in range(len(texts)):
        v = (np.asarray(expected)[ids == i] * weights[ids == i, None]).sum(0) / weights[ids == i].sum()
        means.append(v / np.linalg.norm(v))
    np.testing.assert_allclose(vectors_of(read_output(tmp_path / "mean")), np.asarray(means), atol=1e-5)


@pytest.mark.real_model
def test_real_texts_windows_retokenize_exactly_and_embed_alike(real_model_dir, tmp_path):
    from minilm_cli.model import Embedder

    embedder = Embedder(model=real_model_dir, device="cpu", precision="fp32")
    plan = plan_windows(config([], "x", overflow="split"), embedder)
    assert plan.span == 254 and len(LONG_TEXTS) == 3
    sentence_cuts = 0
    for text in LONG_TEXTS:  # every window of three licence texts (CC0, Apache 2.0, GPL 3)
        sentence_cuts += assert_window_edges(plan, text, list(text_windows(plan, text)))
    assert sentence_cuts >= 20
    text = LONG_TEXTS[0]
    path = write_jsonl(tmp_path / "cc0.jsonl", [text])
    run_job(config([path], tmp_path / "split", overflow="split"), embedder=embedder)
    table = read_output(tmp_path / "split")
    spans = list(zip(table.column("char_start").to_pylist(), table.column("char_end").to_pylist()))
    substrings = [text[a:b] for a, b in spans]
    counts = [len(plan.tokenizer.encode(t).ids) for t in substrings]  # with [CLS] and [SEP]
    assert table.num_rows >= 5 and table.column("tokens").to_pylist() == counts
    rows = [0, table.num_rows // 2, table.num_rows - 1]  # a few windows: the model is slow here
    again = embedder.embed([substrings[i] for i in rows])
    stored = vectors_of(table)[rows]
    cosines = (again * stored).sum(1) / np.linalg.norm(again, axis=1) / np.linalg.norm(stored, axis=1)
    assert cosines.min() >= 0.9999, cosines


@pytest.mark.parametrize("by_records", [False, True])
@pytest.mark.parametrize("chunk_size,shard_rows,piece_rows", [(3, 4, 5), (5, 2, 3), (4, 4, 4), (7, 10, 1)])
def test_chunk_rows_never_ends_a_shard_inside_a_record(chunk_size, shard_rows, piece_rows, by_records):
    from minilm_cli.batching import chunk_rows
    from minilm_cli.pipeline.windows import WindowRows

    rng = random.Random(chunk_size * 100 + shard_rows)
    records = [rng.choice([1, 1, 2, 3, 9]) for _ in range(30)]  # windows per record
    positions = np.repeat(np.arange(len(records)), records)
    pieces = []
    for start in range(0, len(positions), piece_rows):
        pos = positions[start : start + piece_rows]
        piece = WindowRows([str(p) for p in pos], pa.array(pos), None, pos, [], 0, len(records))
        piece.continues = start + piece_rows < len(positions) and positions[start + piece_rows] == pos[-1]
        pieces.append(piece)
    chunks = list(chunk_rows(pieces, chunk_size, shard_rows, by_records=by_records))
    assert [t for c in chunks for t in c.texts] == [str(p) for p in positions]
    assert all(len(c) <= chunk_size for c in chunks)
    shard: list[int] = []
    for chunk in chunks:
        shard += [int(t) for t in chunk.texts]
        if chunk.shard_end and shard:
            last = shard[-1]
            assert chunk.record_end == last + 1
            assert shard.count(last) == records[last]  # the shard holds the whole record
            if by_records:  # --overflow mean: shard_rows documents a shard, the last shard fewer
                assert len(set(shard)) == shard_rows or last == len(records) - 1
            else:
                assert len(shard) < shard_rows + max(records) or len(set(shard)) == 1
            shard = []
