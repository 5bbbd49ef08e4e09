"""Load a model folder's tokenizer and network, importing transformers only when we must.

A plain BERT with safetensors weights and a tokenizer.json (the packaged all-MiniLM-L6-v2,
nreimers/MiniLM-L6-H384-uncased once cached, most sentence-transformers BERTs) loads through
the `tokenizers` library and our own encoder (bert.py): no transformers import, which is most
of a process's start-up. Anything else goes through transformers' Auto classes, exactly as
before. Remote code is never run, and a pickled checkpoint is only ever read by transformers
with its safe loading.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .bert import load_bert

# tokenizer_config.json classes whose tokenizer.json alone decides the token ids.
PLAIN_TOKENIZERS = {None, "BertTokenizer", "BertTokenizerFast"}


@dataclass
class Network:
    module: torch.nn.Module
    config: dict[str, Any]
    ours: bool  # our encoder (returns the hidden state), or a transformers model (returns an output)
    layer: int | None = None  # --layer as hidden_states' index (0: embeddings); None: the last

    @property
    def layers(self) -> int:
        return int(self.config.get("num_hidden_layers", 0))

    def use_layer(self, layer: int | None) -> None:
        """Return hidden state ``layer`` (already in 0..layers) instead of the last: a
        transformers model runs whole and hands back its hidden_states; our encoder is told
        its ``depth`` by the Embedder (on the module it runs, after any int8 calibration)."""
        self.layer = None if layer is None or layer == self.layers else layer

    def hidden(
        self, forward: Any, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None
    ) -> torch.Tensor:
        if self.ours:
            return forward(input_ids, mask, positions)
        if self.layer is not None:
            out = forward(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            return out.hidden_states[self.layer]
        return forward(input_ids=input_ids, attention_mask=mask).last_hidden_state

    @property
    def attention(self) -> str:
        if self.ours:
            return self.module.attention_name()
        return getattr(self.module.config, "_attn_implementation", None) or "eager"


def load_network(folder: str, weights_file: str) -> Network:
    """Our encoder where it applies, else transformers' AutoModel (sdpa attention)."""
    config = read_config(folder)
    ours = load_bert(config, os.path.join(folder, weights_file))
    if ours is not None:
        return Network(ours, config, True)
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(
        folder,
        attn_implementation="sdpa",
        use_safetensors=weights_file.endswith(".safetensors"),
        trust_remote_code=False,
    )
    return Network(model, config, False)


def read_config(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model from {folder}: config.json: {exc}") from None
    if not isinstance(config, dict):
        raise InputError(f"cannot load model from {folder}: config.json is not a JSON object")
    return config


def load_tokenizer(folder: str, max_length: int) -> tuple[Any, int]:
    """A private `tokenizers.Tokenizer` that truncates to ``max_length`` and never pads (we
    pad per batch), and the pad token's id."""
    tokenizer, pad_id = _plain_tokenizer(folder)
    if tokenizer is None:
        tokenizer, pad_id = _transformers_tokenizer(folder)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer, pad_id


def _plain_tokenizer(folder: str) -> tuple[Any, int]:
    from tokenizers import Tokenizer

    path = os.path.join(folder, "tokenizer.json")
    settings = _read_json(os.path.join(folder, "tokenizer_config.json"))
    if not os.path.isfile(path) or settings.get("tokenizer_class") not in PLAIN_TOKENIZERS:
        return None, 0
    tokenizer = Tokenizer.from_file(path)
    if not _same_lowercasing(tokenizer, settings):
        return None, 0
    pad = settings.get("pad_token") or _read_json(os.path.join(folder, "special_tokens_map.json")).get(
        "pad_token", "[PAD]"
    )
    pad = pad.get("content") if isinstance(pad, dict) else pad
    return tokenizer, tokenizer.token_to_id(str(pad)) or 0


def _same_lowercasing(tokenizer: Any, settings: dict) -> bool:
    """transformers rebuilds a BERT normalizer whose lowercasing disagrees with
    tokenizer_config.json; leave those cases to it."""
    if "do_lower_case" not in settings:
        return True
    normalizer = json.loads(tokenizer.to_str()).get("normalizer") or {}
    lowercase = normalizer.get("lowercase")
    return normalizer.get("type") == "BertNormalizer" and lowercase == settings["do_lower_case"]


def _transformers_tokenizer(folder: str) -> tuple[Any, int]:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True, trust_remote_code=False)
    # A private copy: the folder's tokenizer.json may pad to 128, and we pad per batch.
    return Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), tokenizer.pad_token_id or 0


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
