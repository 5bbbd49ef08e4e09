"""Our own BERT encoder (minilm_cli/model/bert.py) and the loader that picks it (minilm_cli/model/loading.py).

The encoder must compute what transformers' BertModel computes, on the real weights and on
random ones, and a model it does not implement must still load, through transformers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minilm_cli.model import Embedder
from minilm_cli.model.bert import BertEncoder, load_bert
from minilm_cli.model.loading import _plain_tokenizer, _transformers_tokenizer, load_network, read_config

TEXTS = [
    "A cat.",
    "Ünïcödé, accents e\u0301 and 中文字符 with an emoji 😀",
    "the quick brown fox jumps over the lazy dog " * 12,
    "x",
    "Tabs\tand\nnewlines   and    spaces",
]


def _hf_hidden(folder: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def _padded_batch(embedder: Embedder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encodings = embedder.tokenizer.encode_batch(texts)
    length = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    return ids, mask


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_our_encoder_equals_bertmodel_on_real_tokens(
    which: str, tiny_model_dir: str, real_model_dir: str
) -> None:
    folder = tiny_model_dir if which == "tiny" else real_model_dir
    embedder = Embedder(model=folder, device="cpu", precision="fp32")
    assert isinstance(embedder.model, BertEncoder)
    ids, mask = _padded_batch(embedder, TEXTS)
    with torch.inference_mode():
        ours = embedder.model(ids, mask)
    reference = _hf_hidden(folder, ids, mask)
    real = mask.bool()
    assert torch.allclose(ours[real], reference[real], atol=1e-5, rtol=0)
    assert ours[~real].abs().max() == 0  # padding positions carry nothing


def test_a_bertfor_checkpoint_with_a_bert_prefix_loads(tmp_path: Path, tiny_model_dir: str) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "prefixed"
    shutil.copytree(tiny_model_dir, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({f"bert.{k}": v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    plain = load_bert(read_config(tiny_model_dir), str(Path(tiny_model_dir) / "model.safetensors"))
    prefixed = load_bert(read_config(str(folder)), str(folder / "model.safetensors"))
    assert prefixed is not None and plain is not None
    for (name, a), (_, b) in zip(plain.state_dict().items(), prefixed.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "change",
    [{"position_embedding_type": "relative_key"}, {"hidden_act": "silu"}, {"model_type": "roberta"}],
)
def test_a_model_we_do_not_implement_loads_through_transformers(
    tmp_path: Path, tiny_model_dir: str, change
) -> None:
    folder = tmp_path / "other"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    assert load_bert(read_config(str(folder)), str(folder / "model.safetensors")) is None
    if change.get("model_type") != "roberta":  # a roberta config over bert weights cannot load at all
        network = load_network(str(folder), "model.safetensors")
        assert not network.ours and not isinstance(network.module, BertEncoder)


def test_missing_weights_fall_back_rather_than_load_half_a_model(tmp_path: Path, tiny_model_dir: str) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    assert load_bert(read_config(str(folder)), str(folder / "model.safetensors")) is None


def test_the_plain_tokenizer_gives_the_ids_transformers_gives(
    real_model_dir: str, sample_texts: list[str]
) -> None:
    ours, pad = _plain_tokenizer(real_model_dir)
    theirs, their_pad = _transformers_tokenizer(real_model_dir)
    assert ours is not None and pad == their_pad == 0
    texts = TEXTS + sample_texts[:200] + ["", " ", "a " * 600]
    assert [e.ids for e in ours.encode_batch(texts)] == [e.ids for e in theirs.encode_batch(texts)]


def test_a_tokenizer_config_that_disagrees_leaves_tokenizing_to_transformers(
    tmp_path: Path, tiny_model_dir: str
) -> None:
    folder = tmp_path / "cased"
    shutil.copytree(tiny_model_dir, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["do_lower_case"] = False
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    assert _plain_tokenizer(str(folder))[0] is None
    embedder = Embedder(model=str(folder), device="cpu", precision="fp32")
    ids = embedder.tokenizer.encode("Hello WORLD").ids
    lower = embedder.tokenizer.encode("hello world").ids
    assert ids != lower  # transformers honoured do_lower_case=False


def test_embedding_with_the_packaged_model_never_imports_transformers_models() -> None:
    code = (
        "import sys; from minilm_cli.model import Embedder; "
        "v = Embedder(device='cpu').embed(['a test']); "
        "print(v.shape, 'transformers.modeling_utils' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["(1,", "384)", "False"]
