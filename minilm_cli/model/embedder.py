"""The Embedder: weights resolved, device and precision chosen, then tokenize, run and pool."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
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

from ..batching import Batch, FlatIds, TokenizedChunk, pad_batch, plan_batches, row_offsets  # noqa: E402
from ..devices import (  # noqa: E402
    choose_device,
    choose_precision,
    cpu_has_native_bf16,
    precision_reason,
    usable_cpus,
)
from ..errors import InputError  # noqa: E402
from .pooling import POOLINGS, pool, read_pooling_config  # noqa: E402
from .source import resolve_model, shorten  # noqa: E402
from .threads import CoreWatch, ThreadTuner, threads_phrase  # noqa: E402
from .tokens import POOLING_NONE, TokenVectors, encoding_spans, real_tokens, token_vectors  # noqa: E402

# int8 runs in fp32: its int8 Linears take and give fp32
#: texts per tokenizer call in ``token_ids`` (the library spreads each call over its threads)
ENCODE_SLICE = 1024
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}
# (padded tokens, rows) per forward pass when not given. A CPU gains nothing from big
# batches and pays for every padding token; a GPU needs big batches to fill its cores.
BATCH_DEFAULTS = {"cpu": (2048, 64), "mps": (16384, 256), "cuda": (65536, 1024)}


class Embedder:
    """Texts in, one float32 vector per text out, in input order (``pooling="none"``: a
    ``TokenVectors`` of every text's token vectors instead; ``layer``: hidden_states[layer]
    in place of the last hidden state, 0 the embeddings, negative counting from the end).

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
        layer: int | None = None,
    ) -> None:
        self.source = resolve_model(model)
        self.device = choose_device(device)
        self.precision = choose_precision(precision, self.device)
        self.precision_reason = precision_reason(precision, self.device)
        if _USER_TOKENIZERS_PARALLELISM is None:
            os.environ["TOKENIZERS_PARALLELISM"] = "false" if self.device.type == "cpu" else "true"
        self.tuner: ThreadTuner | None = None  # the default thread count, checked as it runs
        if self.device.type == "cpu":
            torch.set_num_threads(threads or usable_cpus())
            # the first batch runs on the cores other processes leave free (threads.py); fp32
            # and int8 bytes may depend on the thread count (MKL splits its sums by it), so
            # those keep that count all run; bf16/fp16 follow the cores as they change hands
            if threads is None and usable_cpus() > 1:
                adaptive = self.precision in ("bf16", "fp16")  # fp32/int8: one count all run
                dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
                watch = CoreWatch.open(usable_cpus())
                self.tuner = ThreadTuner(usable_cpus(), adaptive, watch, dtype)
        default_tokens, default_rows = BATCH_DEFAULTS[self.device.type]
        self.batch_tokens = batch_tokens or default_tokens
        self.batch_size = batch_size or default_rows
        self._load(pooling, normalize, max_length, compile, layer)

    def _load(
        self,
        pooling: str | None,
        normalize: bool | None,
        max_length: int | None,
        compile: bool,
        layer: int | None = None,
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
        if self.pooling not in (*POOLINGS, POOLING_NONE):
            raise InputError(f"unknown --pooling {self.pooling}: use {', '.join(POOLINGS)} or none")
        self.normalize = defaults.normalize if normalize is None else normalize
        if self.pooling == POOLING_NONE:
            if normalize:
                raise InputError(
                    "--normalize does not apply to --pooling none: token vectors are never normalised"
                )
            self.normalize = False  # as sentence-transformers' token_embeddings: before Normalize
        self.layer = resolve_layer(layer, int(config.get("num_hidden_layers", 0)))
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
        if self.network.ours and not compile and self.precision != "int8":
            self.model.use_onednn()  # on a CPU where oneDNN runs this dtype natively
        if self.precision == "int8":
            self._quantize(compile)  # calibrated on every layer, before --layer cuts them
        self.network.use_layer(self.layer)
        if self.network.ours:  # the layers above --layer are never run
            self.model.depth = self.network.layers if self.network.layer is None else self.network.layer
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
            "layer": self.layer,
            "max_length": self.max_length,
            "device": str(self.device),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "compile": self.compiled,
            "batch_tokens": self.batch_tokens,
            "batch_size": self.batch_size,
            "kernels": self.kernels(),
        }

    def kernels(self) -> str:
        """Which code runs the model here, in one line: backend, instruction set, matmul, attention.

        e.g. "torch 2.13.0 eager; cpu AVX2; matmul fp32 (MKL); attention sdpa", or on AVX-512
        "...; matmul bf16 (oneDNN, native, packed weights, GELU fused); ..."
        """
        mode = "torch.compile (inductor)" if self.compiled else "eager"
        parts = [f"torch {torch.__version__.split('+')[0]} {mode}"]
        if self.device.type == "cpu":
            parts.append(f"cpu {torch.backends.cpu.get_cpu_capability()}")
            if self.precision == "int8":
                from .int8 import INT8_KERNELS

                parts.append(INT8_KERNELS)
            else:
                parts.append(f"matmul {self.precision} ({self._cpu_matmul()})")
        elif self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            name = torch.cuda.get_device_name(index)
            parts.append(f"cuda {torch.version.cuda} {name}; matmul {self.precision} (cuBLAS)")
        else:
            parts.append(f"{self.device.type}; matmul {self.precision}")
        parts.append(f"attention {self.network.attention}")
        return "; ".join(parts)

    def _cpu_matmul(self) -> str:
        """Who runs the Linear layers on this CPU, and how (for ``kernels``)."""
        if getattr(self.model, "onednn", False):  # BertEncoder.use_onednn
            fused = self.model.layers[0].intermediate.fused
            native = "" if self.precision == "fp32" else "native, "
            return f"oneDNN, {native}packed weights" + (f", {fused.upper()} fused" if fused != "none" else "")
        if self.precision == "fp32":
            return "MKL" if torch.backends.mkl.is_available() else "ATen"
        native = cpu_has_native_bf16() if self.precision == "bf16" else False
        return "oneDNN, " + ("native" if native else "no native support: converted in the kernels")

    # -- the three steps the pipeline runs on separate threads: tokenize, run, (pool inside run)

    def tokenize(self, texts: list[str]) -> TokenizedChunk:
        """Token ids per text, and the length-sorted, padded batches to run them in."""
        ids, lengths, overflowed, spans = self.token_ids(texts)
        chunk = self.batch_ids(ids, lengths, sum(overflowed))
        chunk.overflowed = overflowed
        chunk.spans = spans
        return chunk

    def token_ids(self, texts: list[str]) -> tuple[FlatIds, np.ndarray, list[bool], list[np.ndarray] | None]:
        """Each text's ids (one flat array, no array per row), their lengths, whether each text
        was truncated at max_length, and under --pooling none each token's character span."""
        want_spans = self.pooling == POOLING_NONE
        lengths, values, overflowed = [np.zeros(0, np.int64)], [np.zeros(0, np.int32)], []
        spans: list[np.ndarray] | None = [] if want_spans else None
        # A slice at a time: the library's Encoding objects (a few KiB each) of a whole chunk
        # held at once cost ~30 MiB of peak memory per 8,192 rows (docs/PERFORMANCE.md, Memory).
        for start in range(0, len(texts), ENCODE_SLICE):
            encodings = self.encode(texts[start : start + ENCODE_SLICE], spans=want_spans)
            counts = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
            ids = itertools.chain.from_iterable(e.ids for e in encodings)
            values.append(np.fromiter(ids, dtype=np.int32, count=int(counts.sum())))
            lengths.append(counts)
            overflowed += [bool(e.overflowing) for e in encodings]
            if spans is not None:
                spans += [encoding_spans(e) for e in encodings]
        lengths = np.concatenate(lengths)
        return FlatIds(np.concatenate(values), row_offsets(lengths)), lengths, overflowed, spans

    def encode(self, texts: list[str], spans: bool = False) -> list[Any]:
        """The tokenizer's encodings of ``texts`` (ids, overflow), without character offsets
        where the library can skip them (a third of its time; the ids are the same) unless
        ``spans`` asks for them."""
        fast = None if spans else getattr(self.tokenizer, "encode_batch_fast", None)  # tokenizers >= 0.21
        if fast is not None:
            return fast(texts, add_special_tokens=True)
        return self.tokenizer.encode_batch(texts, add_special_tokens=True)

    def batch_ids(
        self,
        ids: FlatIds | list[np.ndarray],
        lengths: np.ndarray,
        truncated: int,
        plan: list[np.ndarray] | None = None,
    ) -> TokenizedChunk:
        """Rows of token ids into length-sorted, padded batches, ready for ``run``; ``plan``
        gives the batches' rows when they were planned elsewhere (the Spark engine's driver)."""
        flat = ids if isinstance(ids, FlatIds) else FlatIds.from_rows(ids)
        chunk = TokenizedChunk(flat, lengths, truncated)
        if plan is None:
            plan = plan_batches(lengths, self.batch_tokens, self.batch_size)
        for rows in plan:
            chunk.batches.append(pad_batch(flat, lengths, rows, self.pad_id))
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
    def run(
        self, chunk: TokenizedChunk, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray | TokenVectors:
        """Embed a tokenized chunk; rows come back in the chunk's input order. ``on_batch`` is
        told the rows of each batch as it is queued (a progress bar that moves per batch)."""
        n = len(chunk.ids)
        if n == 0:
            return self.empty()
        outputs = []
        for b in chunk.batches:
            with self._tuned(b):
                outputs.append(self._run_batch(b))
            if on_batch is not None:
                on_batch(len(b.rows))
        # One device-to-host copy per chunk: the GPU is never stalled per batch.
        stacked = torch.cat(outputs).to("cpu").numpy()
        if self.pooling == POOLING_NONE:
            return token_vectors(chunk, stacked)
        order = np.concatenate([b.rows for b in chunk.batches])
        result = np.empty((n, self.dim), dtype=np.float32)
        result[order] = stacked
        return result

    def _tuned(self, batch: Batch) -> AbstractContextManager[None]:
        return self.tuner.batch(batch.input_ids.size) if self.tuner is not None else nullcontext()

    def threads_note(self) -> str | None:
        """The CPU threads the model ended on (and any change the tuner made), for the summary."""
        if self.device.type != "cpu":
            return None
        return self.tuner.note() if self.tuner is not None else threads_phrase(torch.get_num_threads())

    def _run_batch(self, batch: Batch) -> torch.Tensor:
        input_ids, mask, positions = (
            None if a is None else torch.as_tensor(a).to(self.device, non_blocking=True)
            for a in (batch.input_ids, batch.attention_mask, batch.positions)
        )
        dtype = DTYPES[self.precision]
        autocast = dtype != torch.float32 and not self.network.ours  # ours casts for itself
        with torch.autocast(self.device.type, dtype=dtype, enabled=autocast):
            hidden = self.network.hidden(self._forward, input_ids, mask, positions)
        if self.pooling == POOLING_NONE:
            return real_tokens(hidden, mask)
        return pool(hidden.float(), mask, self.pooling, self.normalize)

    def empty(self) -> np.ndarray | TokenVectors:
        """What ``run`` gives for no rows."""
        if self.pooling == POOLING_NONE:
            return TokenVectors.empty(self.dim)
        return np.zeros((0, self.dim), dtype=np.float32)

    def embed(self, texts: list[str] | str) -> np.ndarray | TokenVectors:
        """Embed texts in memory: (len(texts), dim) float32, same order as ``texts``.
        One string gives one vector, (dim,), as sentence-transformers' encode does."""
        if isinstance(texts, str) and self.pooling == POOLING_NONE:
            return self.embed([texts]).vectors  # type: ignore[union-attr]
        if isinstance(texts, str):
            return self.embed([texts])[0]
        if isinstance(texts, (bytes, bytearray)):
            raise TypeError("embed() takes str texts (or a list of them), not bytes: decode them first")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"embed(): texts[{i}] is {type(text).__name__}, not a string")
        return self.run(self.tokenize(texts))


def resolve_layer(layer: int | None, layers: int) -> int | None:
    """--layer K as hidden_states' index 0..layers (0: the embeddings' output; -1: the last)."""
    if layer is None:
        return None
    index = layer + layers + 1 if layer < 0 else layer
    if not 0 <= index <= layers:
        raise InputError(
            f"--layer {layer} is outside the model's hidden states: use 0..{layers} or -{layers + 1}..-1"
        )
    return index
