"""Pooling as sentence-transformers does it: the model folder's settings and the fp32 pooling itself."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

POOLINGS = ("mean", "cls", "max")


@dataclass(frozen=True)
class PoolingConfig:
    pooling: str
    normalize: bool
    max_length: int


def read_pooling_config(folder: str, max_positions: int) -> PoolingConfig:
    """Pooling, normalisation and max length as sentence-transformers would use them."""
    pooling, normalize, max_length = "mean", False, min(max_positions, 512)
    modules = _read_json(os.path.join(folder, "modules.json")) or []
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg = _read_json(os.path.join(folder, module.get("path", ""), "config.json")) or {}
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_max_tokens"):
                pooling = "max"
        elif kind.endswith("Normalize"):
            normalize = True
    st_config = _read_json(os.path.join(folder, "sentence_bert_config.json")) or {}
    if st_config.get("max_seq_length"):
        max_length = min(int(st_config["max_seq_length"]), max_positions)
    return PoolingConfig(pooling, normalize, max_length)


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """sentence-transformers' pooling, in fp32: mean over real tokens, [CLS], or max."""
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = hidden.masked_fill(mask.unsqueeze(-1) == 0, -1e9).max(dim=1).values
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled
