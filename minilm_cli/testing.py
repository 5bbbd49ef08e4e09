"""A tiny randomly initialised BERT, laid out like a sentence-transformers folder.

For fast pipeline tests and memory benchmarks, where the model's numbers do not matter but
its shape of work does: 2 layers, hidden 32, the real uncased tokenizer of the packaged model.
"""

from __future__ import annotations

import json
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def write_tiny_bert(
    folder: str | Path, seed: int = 0, max_seq_length: int = 64, max_positions: int = 128
) -> Path:
    """Write the model into ``folder`` (created if needed) and return it. ``max_positions``
    above ``max_seq_length`` lets a caller raise ``--max-length`` (e.g. 256 for real text)."""
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    from .model import resolve_model
    from .storage import storage_for

    folder = Path(folder)
    storage = storage_for(str(folder))
    storage.make_dirs(str(folder))
    packaged = Path(resolve_model(None).path)
    for name in TOKENIZER_FILES:
        storage.write_atomic(str(folder / name), storage.read_bytes(str(packaged / name)))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    hf_logging.disable_progress_bar()
    BertModel(config).eval().save_pretrained(folder, safe_serialization=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    storage.write_atomic(str(folder / "modules.json"), json.dumps(modules).encode())
    storage.make_dirs(str(folder / "1_Pooling"))
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}
    storage.write_atomic(str(folder / "1_Pooling" / "config.json"), json.dumps(pooling).encode())
    config = json.dumps({"max_seq_length": max_seq_length}).encode()
    storage.write_atomic(str(folder / "sentence_bert_config.json"), config)
    return folder
