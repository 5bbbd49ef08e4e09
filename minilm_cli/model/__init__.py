"""The model side, one room per concept:

- ``source``: which weights (packaged + sha256, a local folder, the hub cache)
- ``loading``: a folder into a tokenizer and a network (``bert``, our own encoder, or
  transformers' Auto classes); ``int8``: the quantized encoder
- ``pooling``: the folder's pooling settings and the fp32 pooling itself
- ``embedder``: ``Embedder``, device and precision chosen; tokenize, run, pool

``from minilm_cli.model import Embedder`` is the public way in.
"""

from .embedder import BATCH_DEFAULTS, DTYPES, Embedder
from .pooling import POOLINGS, PoolingConfig, pool, read_pooling_config
from .source import (
    PACKAGED_NAME,
    PACKAGED_SHA256,
    REFERENCE_MODEL,
    WEIGHT_FILES,
    ModelSource,
    resolve_model,
    sha256_file,
    shorten,
)

__all__ = [
    "BATCH_DEFAULTS",
    "DTYPES",
    "Embedder",
    "ModelSource",
    "PACKAGED_NAME",
    "PACKAGED_SHA256",
    "POOLINGS",
    "PoolingConfig",
    "REFERENCE_MODEL",
    "WEIGHT_FILES",
    "pool",
    "read_pooling_config",
    "resolve_model",
    "sha256_file",
    "shorten",
]
