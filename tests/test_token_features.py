"""--pooling none (per-token vectors, ids and character spans) and --layer K.

References: sentence-transformers' ``encode(output_value="token_embeddings")`` for token
vectors, transformers' ``hidden_states[K]`` for layers (our encoder and the AutoModel fallback,
through a copy of the packaged model with .bin weights), and the `tokenizers` library's own
normaliser for the character spans. The tiny random BERT covers errors and layouts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_line_error, cli, model_args

import minilm_cli
from minilm_cli.output.verify_tokens import TokenShard, token_problems

TOL = 1e-5
MAX_LENGTH = 256
# accents, a ligature, CJK (each character its own token), emoji ([UNK]), runs of spaces, tabs, newlines
AWKWARD = [
    "Héllo   wörld\t\tnaïve café",
    "Crème brûlée, SMÖRGÅSBORD and ﬁne print.",
    "  leading and trailing spaces   ",
    "東京は日本の首都です。 mixed with English",
    "emoji 🙂 and\n\nnew   lines\r\nhere",
    "Ångström — déjà vu; façade's résumé",
    "ok",
]


def long_text() -> str:
    """Far past --max-length and past the clip_text prefix (max_length * 16 characters)."""
    return " ".join(f"Wört{i} naïve" for i in range(3000))


def texts_for_reference(sample_texts: list[str]) -> list[str]:
    return [*AWKWARD, *sample_texts[:20], long_text()]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    return path


def embed(tmp_path: Path, texts: list[str], *flags: str, model: str | None = None, name: str = "out") -> Path:
    source = write_jsonl(tmp_path / f"{name}.jsonl", texts)
    out = tmp_path / name
    args = ["embed", str(source), "-o", str(out), "-q", *flags]
    args += model_args(model) if model else ["--precision", "fp32", "--device", "cpu", "--threads", "1"]
    result = cli(args)
    assert result.exit_code == 0, result.output
    return out


def rows_of(out: Path) -> list[dict]:
    return minilm_cli.open_dataset(out).to_table().sort_by("id").to_pylist()


def token_vectors(row: dict) -> np.ndarray:
    return np.asarray(row["embedding"], dtype=np.float32)


# ---------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def sentence_transformer(real_model_dir: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(real_model_dir, device="cpu")


@pytest.fixture(scope="module")
def bin_model_dir(real_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The packaged model folder with its weights as pytorch_model.bin (the reference model's
    own layout): our encoder reads safetensors only, so this loads through AutoModel."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("bin-model") / "model"
    shutil.copytree(real_model_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return str(folder)


@pytest.mark.real_model
def test_token_vectors_equal_sentence_transformers(
    tmp_path: Path, sample_texts, sentence_transformer
) -> None:
    texts = texts_for_reference(sample_texts)
    reference = sentence_transformer.encode(texts, output_value="token_embeddings", convert_to_numpy=False)
    rows = rows_of(embed(tmp_path, texts, "--pooling", "none"))
    assert len(rows) == len(texts)
    truncated = 0
    for row, expected in zip(rows, reference):
        expected = expected.float().numpy()
        got = token_vectors(row)
        assert got.shape == expected.shape  # [CLS] and [SEP] included, padding not
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
        truncated += len(got) == MAX_LENGTH
    assert truncated == 1  # the long text was cut at --max-length, as sentence-transformers cuts it


@pytest.mark.real_model
def test_spans_slice_the_original_text(tmp_path: Path, sample_texts, real_model_dir: str) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(real_model_dir) / "tokenizer.json"))
    tokenizer.no_truncation()  # the file's own setting is 128
    texts = texts_for_reference(sample_texts)
    rows = rows_of(embed(tmp_path, texts, "--pooling", "none", "--format", "npy"))
    reference = tokenizer.encode_batch(texts)
    checked = unknown = 0
    for text, row, enc in zip(texts, rows, reference):
        ids, starts, ends = row["token_ids"], row["token_char_start"], row["token_char_end"]
        assert ids[:-1] == enc.ids[: len(ids) - 1]  # the long text is cut, then gets its [SEP]
        assert (starts[0], ends[0], starts[-1], ends[-1]) == (0, 0, 0, 0)  # [CLS], [SEP]
        for token_id, a, b in zip(ids[1:-1], starts[1:-1], ends[1:-1]):
            piece, token = text[a:b], tokenizer.id_to_token(token_id)
            assert piece and piece == piece.strip()  # a token never holds whitespace
            if token == "[UNK]":
                unknown += 1
                continue
            # the normaliser lowercases, strips accents and pads CJK characters with spaces
            assert tokenizer.normalizer.normalize_str(piece).strip() == token.removeprefix("##"), (
                piece,
                token,
            )
            checked += 1
    assert unknown >= 1 and checked > 500  # the emoji, and every other token


def hidden_states(model_dir: str, texts: list[str], layer: int) -> list[np.ndarray]:
    """transformers' own hidden_states[layer], per text, padding dropped."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 8):
            enc = tok(
                texts[i : i + 8], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            states = model(**enc, output_hidden_states=True).hidden_states[layer]
            for hidden, mask in zip(states, enc["attention_mask"]):
                out.append(hidden[mask.bool()].numpy())
    return out


@pytest.mark.real_model
@pytest.mark.parametrize("which", ["packaged", "bin"])
def test_layer_equals_transformers_hidden_states(
    tmp_path: Path, sample_texts, real_model_dir: str, bin_model_dir: str, which: str
) -> None:
    model = real_model_dir if which == "packaged" else bin_model_dir
    texts = [*AWKWARD, *sample_texts[:10]]
    for layer in (0, 3, -1):
        reference = hidden_states(model, texts, layer)
        flags = ("--model", model, "--layer", str(layer))
        mean = rows_of(embed(tmp_path, texts, *flags, "--no-normalize", name=f"mean{layer}"))
        tokens = rows_of(embed(tmp_path, texts, *flags, "--pooling", "none", name=f"tokens{layer}"))
        for expected, pooled, per_token in zip(reference, mean, tokens):
            np.testing.assert_allclose(np.asarray(pooled["embedding"]), expected.mean(0), atol=TOL, rtol=0)
            np.testing.assert_allclose(token_vectors(per_token), expected, atol=TOL, rtol=0)
        settings = json.loads((tmp_path / f"mean{layer}" / "manifest.json").read_text())["settings"]
        assert settings.get("layer") == (None if layer == -1 else layer)  # -1 is the default's bytes


@pytest.mark.real_model
def test_bin_copy_loads_through_the_fallback(bin_model_dir: str) -> None:
    from minilm_cli.model import Embedder

    embedder = Embedder(model=bin_model_dir, device="cpu", precision="fp32", layer=2)
    assert not embedder.network.ours and embedder.network.layer == 2


@pytest.mark.real_model
def test_our_encoder_runs_only_the_layers_below_k(real_model_dir: str, monkeypatch) -> None:
    from minilm_cli.model import Embedder
    from minilm_cli.model.bert import BertLayer

    embedder = Embedder(model=real_model_dir, device="cpu", precision="fp32", layer=2)
    calls = []
    real_forward = BertLayer.forward
    monkeypatch.setattr(BertLayer, "forward", lambda self, *a: calls.append(1) or real_forward(self, *a))
    embedder.embed(["one sentence"])
    assert len(calls) == 2


# ---------------------------------------------------------------------------- tiny model


def test_layouts_agree_and_verify(tmp_path: Path, tiny_model_dir: str) -> None:
    from minilm_cli.output import verify_output

    texts = ["Héllo   wörld", "a b", "a b", "third text here"]  # the repeat is embedded again
    parquet = embed(tmp_path, texts, "--pooling", "none", model=tiny_model_dir, name="p")
    npy = embed(tmp_path, texts, "--pooling", "none", "--format", "npy", model=tiny_model_dir, name="n")
    rows = rows_of(parquet)
    assert [len(r["token_ids"]) for r in rows] == [4, 4, 4, 5]
    table = pq.read_table(parquet / "part-00000.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.list_(pa.float32(), 32))
    for name in ("token_ids", "token_char_start", "token_char_end"):
        assert table.schema.field(name).type == pa.list_(pa.int32())
    flat = np.load(npy / "embeddings" / "part-00000.npy")
    starts = np.load(npy / "token_offsets" / "part-00000.npy")
    assert starts.tolist() == [0, 4, 8, 12, 17] and flat.shape == (17, 32)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(flat[starts[i] : starts[i + 1]], token_vectors(row))
    assert rows_of(npy)[0]["token_char_end"] == rows[0]["token_char_end"]
    for out in (parquet, npy):
        report = verify_output(out)
        assert report.ok, report.text()
    doc = json.loads((parquet / "manifest.json").read_text())
    assert doc["settings"]["pooling"] == "none" and doc["settings"]["normalize"] is False
    assert doc["settings"]["plan"]["dedup"] is False
    assert doc["settings"]["plan"]["shard_rows"] == 4096  # scaled down for token output


def test_stdout_matches_the_directory(tmp_path: Path, tiny_model_dir: str) -> None:
    texts = ["Héllo   wörld", "third text here"]
    rows = rows_of(embed(tmp_path, texts, "--pooling", "none", model=tiny_model_dir))
    source = write_jsonl(tmp_path / "in.jsonl", texts)
    result = cli(["embed", str(source), "-o", "-", "-q", "--pooling", "none", *model_args(tiny_model_dir)])
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for line, row in zip(lines, rows):
        assert line["token_char_start"] == row["token_char_start"] and line["token_ids"] == row["token_ids"]
        np.testing.assert_allclose(np.asarray(line["embedding"]), token_vectors(row), atol=1e-6)


def test_split_windows_have_spans_into_the_whole_text(tmp_path: Path, tiny_model_dir: str) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(tiny_model_dir) / "tokenizer.json"))
    text = "Ünïcödé   wörds and  spaces. " * 30 + "\t tabs\n\nÉnd"
    flags = ("--pooling", "none", "--overflow", "split", "--max-length", "32")
    rows = rows_of(embed(tmp_path, [text, "short"], *flags, model=tiny_model_dir))
    windows = [r for r in rows if r["id"] == 0]
    assert len(windows) > 3
    for w in windows:
        ids, starts, ends = w["token_ids"], w["token_char_start"], w["token_char_end"]
        assert len(ids) == w["tokens"] == len(w["embedding"]) <= 32
        assert starts[1] == w["char_start"] and ends[-2] == w["char_end"]  # relative to the whole text
        for token_id, a, b in zip(ids[1:-1], starts[1:-1], ends[1:-1]):
            token = tokenizer.id_to_token(token_id)
            assert tokenizer.normalizer.normalize_str(text[a:b]).strip() == token.removeprefix("##")


def test_resume_refuses_another_layer(tmp_path: Path, tiny_model_dir: str) -> None:
    out = embed(tmp_path, ["a b", "c d"], "--layer", "1", model=tiny_model_dir)
    source = tmp_path / "out.jsonl"
    again = ["embed", str(source), "-o", str(out), "--resume", *model_args(tiny_model_dir)]
    assert_one_line_error(cli([*again, "--layer", "0"]), 3, "layer")
    assert cli([*again, "--layer", "-2", "-q"]).exit_code == 0  # -2 of a 2-layer model is layer 1
    assert_one_line_error(cli([*again]), 3, "layer")


def test_reuse_and_append_refuse_another_layer(tmp_path: Path, tiny_model_dir: str) -> None:
    earlier = embed(tmp_path, ["a b", "c d"], "--layer", "1", model=tiny_model_dir, name="earlier")
    source = write_jsonl(tmp_path / "in.jsonl", ["a b", "e f"])
    args = ["embed", str(source), *model_args(tiny_model_dir)]
    result = cli([*args, "-o", str(tmp_path / "new"), "--reuse", str(earlier)])
    assert_one_line_error(result, 2, "layer")
    assert (
        cli([*args, "-o", str(tmp_path / "new"), "--reuse", str(earlier), "--layer", "1", "-q"]).exit_code
        == 0
    )
    assert_one_line_error(cli([*args, "-o", str(earlier), "--append"]), 3, "layer")


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--layer", "3"], ["--layer 3", "0..2"]),
        (["--layer", "-4"], ["--layer -4"]),
        (["--pooling", "none", "--reuse", "elsewhere"], ["--reuse", "--pooling none"]),
        (["--pooling", "none", "--overflow", "mean"], ["--overflow mean"]),
        (["--pooling", "none", "--normalize"], ["--normalize"]),
        (["--pooling", "none", "--keep-columns", "text:token_ids"], ["token_ids"]),
    ],
)
def test_bad_flags_are_one_line_exit_2(
    tmp_path: Path, tiny_model_dir: str, flags: list[str], words: list[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", ["a b"])
    out = tmp_path / "out"
    result = cli(["embed", str(source), "-o", str(out), *flags, *model_args(tiny_model_dir)])
    assert_one_line_error(result, 2, *words)
    assert not out.exists()


def test_token_problems_find_a_mismatch() -> None:
    vectors = np.zeros((5, 4), np.float32)
    good = pa.table(
        {
            "id": [0, 1],
            "token_ids": pa.array([[1, 2], [3, 4, 5]], pa.list_(pa.int32())),
            "token_char_start": pa.array([[0, 0], [0, 1, 0]], pa.list_(pa.int32())),
            "token_char_end": pa.array([[0, 0], [0, 2, 0]], pa.list_(pa.int32())),
        }
    )
    assert token_problems(TokenShard(vectors, np.array([0, 2, 5])), good) == []
    assert token_problems(TokenShard(vectors, np.array([0, 2, 4])), good)  # offsets miss a vector
    assert token_problems(TokenShard(vectors, np.array([0, 3, 5])), good)  # lists disagree with them
    short = good.set_column(1, "token_ids", pa.array([[1], [3, 4, 5]], pa.list_(pa.int32())))
    assert token_problems(TokenShard(vectors, np.array([0, 2, 5])), short)
    backwards = good.set_column(3, "token_char_end", pa.array([[0, 0], [0, 0, 0]], pa.list_(pa.int32())))
    assert token_problems(TokenShard(vectors, np.array([0, 2, 5])), backwards)
