"""Our own BERT encoder for inference: the MiniLM family without transformers' model code.

Why not transformers' BertModel: importing its modeling code costs seconds per process (a cron
job that appends a few rows pays them every night), and its forward pass runs every Linear
layer on padding. Here the Linear layers, LayerNorm and GELU run on the real tokens only,
packed into one (tokens, hidden) matrix; only attention sees the padded (batch, length)
shape, through scaled_dot_product_attention with a key mask. The weights and the arithmetic
are BertModel's (tests/test_reference.py compares the two), and the Q, K and V projections
are one matmul.

``load_bert`` returns None for anything it does not implement exactly (another model type,
relative positions, another activation, weights it cannot map); the caller then falls back
to transformers' AutoModel. Weights load from safetensors only: no pickle is ever opened here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
ATTENTION_ENV = "MINILM_ATTENTION"
ATTENTION_MODES = ("varlen", "padded")
HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class BertShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    eps: float
    activation: str


def bert_shape(config: dict) -> BertShape | None:
    """The settings we implement, or None when the config asks for something else."""
    if config.get("model_type") != "bert" or config.get("is_decoder"):
        return None
    if config.get("position_embedding_type", "absolute") != "absolute":
        return None
    if config.get("hidden_act", "gelu") not in ACTIVATIONS:
        return None
    try:
        shape = BertShape(
            hidden=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=int(config["num_attention_heads"]),
            intermediate=int(config["intermediate_size"]),
            max_positions=int(config.get("max_position_embeddings", 512)),
            eps=float(config.get("layer_norm_eps", 1e-12)),
            activation=config.get("hidden_act", "gelu"),
        )
    except (KeyError, TypeError, ValueError):
        return None
    return shape if shape.hidden % shape.heads == 0 else None


class Linear(nn.Linear):
    # bf16/fp16 on a CPU (use_dtype) and every packed Linear (pack): the rows go through the
    # matmul in pieces (see PIECE_ROWS)
    piecewise = False
    packed: torch.Tensor | None = None  # oneDNN's blocked copy of the weight (pack)
    fused = "none"  # the activation oneDNN applies to the matmul's output (pack)

    def reset_parameters(self) -> None:
        """Nothing: the checkpoint's weights replace these at once (random init cost ~0.2 s)."""

    def pack(self, activation: str = "none") -> None:
        """Run as oneDNN's matmul on a weight reordered once into its blocked layout (no reorder
        per call), with ``activation`` ("gelu", "relu") applied inside it, in pieces. The dense
        weight is not read again: its storage is dropped (the dtype stays, for inspection)."""
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PIECE_ROWS << 6)
        self.fused = activation
        self.piecewise = True
        self.weight = nn.Parameter(self.weight.detach().new_empty(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = pieces(x.shape[0]) if self.piecewise else ()
        if self.packed is not None:
            # the rows of a matmul are independent: each piece is its own matmul
            parts = [self._packed_matmul(part) for part in x.split(sizes or (x.shape[0],))]
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        if len(sizes) <= 1:
            return F.linear(x, self.weight, self.bias)
        out = x.new_empty(x.shape[0], self.out_features)
        start = 0
        for size in sizes:
            end = start + size
            if self.bias is None:
                torch.mm(x[start:end], self.weight.t(), out=out[start:end])
            else:
                torch.addmm(self.bias, x[start:end], self.weight.t(), out=out[start:end])
            start = end
        return out

    def _packed_matmul(self, x: torch.Tensor) -> torch.Tensor:
        algorithm = "none" if self.fused == "gelu" else ""  # gelu: erf, as F.gelu (not tanh)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.fused, [], algorithm)


def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether our Linears run as oneDNN's packed-weight matmul on this CPU in ``dtype``: bf16 or
    fp16 where oneDNN has them natively (avx512_bf16 / AMX, avx512_fp16), fp32 where the CPU
    has AVX-512. On a 2-core AMD EPYC with AVX-512, MKL's fp32 GEMM ran at 0.43x oneDNN's and the
    packed bf16 model at 0.99-1.15x the unpacked one (docs/PERFORMANCE.md); on AVX2, oneDNN's
    fp32 in bounded shapes measured 0.94x MKL's, so MKL keeps fp32 there."""
    mkldnn = torch.backends.mkldnn
    if not mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return dtype == torch.float32 and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        """Nothing, as for Linear."""


# Kernel libraries keep something per new matrix shape: oneDNN a JIT-compiled primitive per
# bf16/fp16 matmul shape (measured on avx512_bf16: ~0.7 MiB each for a tiny model's weights,
# ~2.7 MiB for MiniLM's, kept by both oneDNN's and ideep's caches), and MKL's fp32 GEMM and
# fbgemm's int8 one something per row count too (measured: 3,000 batches of new packed row
# counts took a tiny model's fp32 run from 457 to 487 MiB and still climbing, int8 to 589;
# with the rows rounded, flat at 427 and 462). Packed token counts are nearly all new on real
# text, so on a CPU the packed rows are rounded up to a multiple of PIECE_ROWS in every
# precision, and wherever oneDNN runs the matmul (below fp32, and packed Linears: use_onednn)
# each Linear runs them as pieces of power-of-two multiples of it
# (1,500 rows: 1,504 = 1,024 + 256 + 128 + 64 + 32): each weight meets log2(rows / PIECE_ROWS)
# + 1 shapes in all (6 up to 2,048 rows), which a short run already visits, so memory is flat
# in the input's size. Below fp32 the attention batch and length are also rounded up to a
# geometric ladder (bucket); fp32's attention keeps its exact shapes (flat as measured).
PIECE_ROWS = 32  # under 32 padding rows per batch; a 32-row piece still runs at ~2/3 the speed of big ones
ATTENTION_RUNGS = 8  # per doubling of batch rows and of padded length: under 1/8 each


def pieces(rows: int) -> tuple[int, ...]:
    """``rows`` as power-of-two multiples of PIECE_ROWS, largest first (its binary digits), and
    what is left under PIECE_ROWS last, if anything (a caller that did not round up)."""
    units, tail = divmod(rows, PIECE_ROWS)
    sizes = tuple(PIECE_ROWS << bit for bit in reversed(range(units.bit_length())) if units >> bit & 1)
    return sizes + (tail,) if tail else sizes


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bucket(n: int, rungs: int) -> int:
    """``n`` rounded up to the ladder with ``rungs`` (a power of two) steps per doubling; values below
    ``2 * rungs`` are their own rung. At most ``rungs`` distinct values per octave, so under
    ``1 / rungs`` of the result is rounding."""
    step = 1 << max(0, n.bit_length() - rungs.bit_length())
    return -(-n // step) * step


@dataclass(frozen=True)
class Layout:
    """Where a batch's packed rows sit in the padded (batch, length) layout attention runs on."""

    where: torch.Tensor  # (real tokens,): each real token's flat slot in the layout
    gather: torch.Tensor  # (packed rows,): the slot each packed row reads back; rows past the
    # real tokens (bucket padding) repeat the first real slot, so they stay finite and unread
    key_mask: torch.Tensor  # (batch, 1, 1, length) bool
    # varlen attention only: where each sequence starts in the packed rows, and the total, as
    # (sequences + 1,) int32 (flash's cu_seqlens); ``longest`` bounds every sequence's length
    starts: torch.Tensor | None = None
    longest: int = 0

    @property
    def batch(self) -> int:
        return self.key_mask.shape[0]

    @property
    def length(self) -> int:
        return self.key_mask.shape[-1]

    @staticmethod
    def plain(where: torch.Tensor, key_mask: torch.Tensor) -> Layout:
        """The batch's own shape: one packed row per real token."""
        return Layout(where, where, key_mask)


def bucketed_layout(where: torch.Tensor, attention_mask: torch.Tensor) -> Layout:
    """The batch in a layout of bounded shape: batch rows and length rounded up the ladder (the
    new rows attend to their first slot only, so no row of the mask is empty), and packed rows
    up to a multiple of PIECE_ROWS. Only arithmetic on the device: nothing waits for a GPU."""
    batch, length = attention_mask.shape
    rows, width = bucket(batch, ATTENTION_RUNGS), bucket(length, ATTENTION_RUNGS)
    slots = where // length * width + where % length
    mask = torch.zeros(rows, width, dtype=torch.bool, device=attention_mask.device)
    mask[:batch, :length] = attention_mask.bool()
    mask[batch:, 0] = True
    return rounded_rows(Layout.plain(slots, mask.view(rows, 1, 1, width)))


def rounded_rows(layout: Layout) -> Layout:
    """``layout`` with its packed rows rounded up to a multiple of PIECE_ROWS: the extra rows
    repeat the first real slot (finite, never read back, and no new range for int8's scale)."""
    slots = layout.where
    extra = round_up(len(slots), PIECE_ROWS) - len(slots)
    return replace(layout, gather=torch.cat([slots, slots[:1].expand(extra)])) if extra else layout


def varlen_layout(layout: Layout, attention_mask: torch.Tensor) -> Layout:
    """``layout`` with the sequence starts varlen attention needs. The packed rows are the real
    tokens in row-major order, so each row's tokens are one run; the bucket padding rows past
    them become one more sequence of their own. Device arithmetic and shapes only: no sync."""
    batch, length = attention_mask.shape
    extra = len(layout.gather) - len(layout.where)
    lengths = attention_mask.sum(1, dtype=torch.int32)
    if extra:
        lengths = torch.cat([lengths, lengths.new_full((1,), extra)])
    starts = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    return replace(layout, starts=starts, longest=max(length, extra))


def attention_mode(device: torch.device, dtype: torch.dtype, compiling: bool) -> str:
    """varlen where flash's varlen kernel runs (CUDA from Ampere on, fp16/bf16), else padded;
    the environment's MINILM_ATTENTION wins, except under --compile, which is always padded (the
    compiled graph would see a new int per batch, and recompile). fp32 on CUDA stays padded: its jagged path
    (the memory-efficient kernel) has not been measured."""
    if compiling:
        return "padded"
    forced = os.environ.get(ATTENTION_ENV, "").strip().lower()
    if forced:
        if forced not in ATTENTION_MODES:
            from ..errors import InputError

            raise InputError(f"{ATTENTION_ENV}={forced!r}: expected one of {', '.join(ATTENTION_MODES)}")
        return forced
    return "varlen" if dtype in HALF and flash_capable(device) else "padded"


@cache
def _capability_at_least_ampere(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)


def flash_capable(device: torch.device) -> bool:
    """Whether flash attention runs on this device: CUDA, compute capability 8.0 (Ampere) or
    newer (a T4 or V100 keeps the padded path). A cached host query: no sync."""
    if device.type != "cuda":
        return False
    return _capability_at_least_ampere(
        device.index if device.index is not None else torch.cuda.current_device()
    )


VarlenKernel = Callable[..., torch.Tensor]


@cache
def _torch_varlen_attn() -> VarlenKernel | None:
    """torch's own flash varlen entry point (torch.nn.attention.varlen, torch >= 2.9), if any."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def flash_varlen(q: torch.Tensor) -> VarlenKernel | None:
    """The flash varlen kernel for these queries, or None where it does not run (a CPU, fp32, a
    GPU before Ampere, a head size flash does not take):
    varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k) on (rows, heads, head dim)."""
    head = q.shape[-1]
    if q.dtype not in HALF or head % 8 or head > 256 or not flash_capable(q.device):
        return None
    return _torch_varlen_attn()


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor, longest: int
) -> torch.Tensor:
    """Each sequence's rows (``starts``) attend to that sequence's rows only; q, k, v and the
    result are (packed rows, heads, head dim). Flash's varlen kernel where it runs, else SDPA on
    nested jagged tensors (CUDA: the fused jagged kernels; a CPU: the math backend, for tests)."""
    flash = flash_varlen(q)
    if flash is not None:
        return flash(q, k, v, starts, starts, longest, longest)

    def jagged(x: torch.Tensor) -> torch.Tensor:
        # min/max given, so torch never reads them off the offsets (a device sync)
        values = x.contiguous()  # the math backend wants each of q, k, v dense (a copy)
        nested = torch.nested.nested_tensor_from_jagged(values, starts, min_seqlen=1, max_seqlen=longest)
        return nested.transpose(1, 2)  # (sequences, heads, {length}, head dim)

    # the CPU math backend builds strided nested tensors, which warn (catch_warnings is process-wide,
    # hence only there: a CPU runs this for tests alone)
    with nullcontext() if q.is_cuda else warnings.catch_warnings():
        if not q.is_cuda:
            warnings.simplefilter("ignore", UserWarning)
        out = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v))
    return out.transpose(1, 2).values()


class BertLayer(nn.Module):
    # the Linear layers' dtype (their weights are stored in it); the residual stream, LayerNorm
    # and GELU's input stay in the dtype of x (fp32), as autocast would have them
    dtype = torch.float32

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.heads = shape.heads
        self.qkv = Linear(shape.hidden, 3 * shape.hidden)
        self.attention_out = Linear(shape.hidden, shape.hidden)
        self.attention_norm = nn.LayerNorm(shape.hidden, eps=shape.eps)
        self.intermediate = Linear(shape.hidden, shape.intermediate)
        self.output = Linear(shape.intermediate, shape.hidden)
        self.output_norm = nn.LayerNorm(shape.hidden, eps=shape.eps)
        self.activation = ACTIVATIONS[shape.activation]
        self.activation_fused = False

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        """x: (packed rows, hidden), the real tokens of the batch (and any bucket padding rows)."""
        x = self.attend(x, layout)
        inner = self.intermediate(x.to(self.dtype))
        if not self.activation_fused:  # else oneDNN applied it inside the matmul (use_onednn)
            inner = self.activation(inner)
        return self.output_norm(self.output(inner) + x)

    def attend(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Self-attention, its output projection and LayerNorm: the half before the FFN."""
        qkv = self.qkv(x.to(self.dtype))
        if layout.starts is not None:
            rows = qkv.shape[0]
            q, k, v = qkv.view(rows, 3, self.heads, -1).unbind(1)
            context = varlen_attention(q, k, v, layout.starts, layout.longest).reshape(rows, -1)
        else:
            context = self.padded_attention(qkv, layout)
        return self.attention_norm(self.attention_out(context) + x)

    def padded_attention(self, qkv: torch.Tensor, layout: Layout) -> torch.Tensor:
        """The packed rows scattered into the (batch, length) layout, SDPA with the key mask,
        and the packed rows gathered back."""
        batch, length, real = layout.batch, layout.length, layout.where.shape[0]
        padded = qkv.new_zeros(batch * length, qkv.shape[1]).index_copy_(0, layout.where, qkv[:real])
        q, k, v = padded.view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.key_mask)
        return context.transpose(1, 2).reshape(batch * length, -1).index_select(0, layout.gather)


class BertEncoder(nn.Module):
    """BertModel's encoder, returning hidden state ``depth`` (default: the last) in the padded
    (batch, length) shape. ``depth`` is hidden_states' index: 0 is the embeddings' output, k
    the output of layer k; the layers above it are never run (--layer)."""

    def __init__(self, shape: BertShape, vocab: int, type_vocab: int) -> None:
        super().__init__()
        self.shape = shape
        self.word_embeddings = Embedding(vocab, shape.hidden)
        self.position_embeddings = Embedding(shape.max_positions, shape.hidden)
        self.token_type_embeddings = Embedding(type_vocab, shape.hidden)
        self.embedding_norm = nn.LayerNorm(shape.hidden, eps=shape.eps)
        self.layers = nn.ModuleList(BertLayer(shape) for _ in range(shape.layers))
        self.bucketed = False
        self.depth = shape.layers
        self.compiling = False
        # packed rows rounded up on a CPU (see PIECE_ROWS); off under --compile and for an
        # export, where a traced graph would bake in one batch's row count
        self.round_rows = True
        self.linear_dtype = torch.float32  # use_dtype's
        self.onednn = False  # use_onednn's
        self._layout = bucketed_layout

    def attention_mode(self) -> str:
        """varlen or padded, for the device the weights sit on and the Linear layers' dtype."""
        return attention_mode(self.word_embeddings.weight.device, self.linear_dtype, self.compiling)

    def attention_name(self) -> str:
        """The attention this encoder runs, for ``minilm info`` and the manifest's kernels."""
        if self.attention_mode() == "padded":
            return "sdpa, packed tokens (minilm_cli.model.bert)"
        probe = torch.empty(0, device=self.word_embeddings.weight.device, dtype=self.linear_dtype)
        kernel = "flash varlen" if flash_varlen(probe) is not None else "sdpa on nested jagged tensors"
        return f"{kernel}, packed tokens without padding (minilm_cli.model.bert)"

    def prepare_compile(self) -> None:
        """--compile: the bucketed layout's Python arithmetic on the token count runs eagerly
        (wrapped only here: torch.compiler imports dynamo, about 60 MiB and a second)."""
        self._layout = torch.compiler.disable(bucketed_layout)
        self.compiling = True  # inductor writes its own matmuls: no pieces (and no recompiles for them)
        self.round_rows = False
        for module in self.modules():
            if isinstance(module, Linear):
                module.piecewise = False

    def use_onednn(self) -> bool:
        """On a CPU where oneDNN runs the Linear layers' dtype natively (onednn_packs): their
        weights packed once, GELU fused into the FFN's first matmul, rows in pieces (oneDNN
        keeps a primitive per shape). Not under --compile (inductor writes its own). Returns
        whether it did."""
        on_cpu = self.word_embeddings.weight.device.type == "cpu"
        if not on_cpu or self.compiling or not onednn_packs(self.linear_dtype):
            return False
        fusable = {F.gelu: "gelu", F.relu: "relu"}
        for layer in self.layers:
            for linear in (layer.qkv, layer.attention_out, layer.output):
                linear.pack()
            layer.intermediate.pack(fusable.get(layer.activation, "none"))
            layer.activation_fused = layer.intermediate.fused != "none"
        self.onednn = True
        return True

    def use_dtype(self, dtype: torch.dtype) -> None:
        """Linear weights stored in ``dtype`` once (no cast per call, no autocast), LayerNorm,
        embeddings and the residual stream in fp32; below fp32, shapes bounded (see PIECE_ROWS)."""
        self.bucketed = dtype != torch.float32
        self.linear_dtype = dtype
        for layer in self.layers:
            for module in layer.modules():
                if isinstance(module, nn.Linear):
                    module.to(dtype)
                if isinstance(module, Linear):
                    # cuBLAS keeps nothing per shape; pieces would only add launches there
                    on_cpu = module.weight.device.type == "cpu"
                    module.piecewise = self.bucketed and on_cpu and not self.compiling
            layer.dtype = dtype

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, where: torch.Tensor | None = None
    ) -> torch.Tensor:
        """where: the flat positions of the real tokens (``attention_mask``'s non-zeros), where
        the caller has them already: finding them here would wait for the device."""
        batch, length = input_ids.shape
        if where is None:
            where = attention_mask.reshape(-1).nonzero().squeeze(1)
        if self.bucketed:
            layout = self._layout(where, attention_mask)
        else:
            layout = Layout.plain(where, attention_mask.bool().view(batch, 1, 1, length))
            if input_ids.device.type == "cpu" and self.round_rows:
                layout = rounded_rows(layout)
        extra = len(layout.gather) - len(where)
        rows = torch.cat([where, where[:1].expand(extra)]) if extra else where
        if not self.compiling and self.attention_mode() == "varlen":  # (no environ read in a graph)
            layout = varlen_layout(layout, attention_mask)
        x = self.word_embeddings(input_ids.reshape(-1).index_select(0, rows))
        x = x + self.token_type_embeddings.weight[0] + self.position_embeddings(rows % length)
        x = self.embedding_norm(x)
        for layer in self.layers[: self.depth]:
            x = layer(x, layout)
        # where.shape[0], not len(where): an ONNX export traces the size, where len() bakes in a constant
        hidden = x.new_zeros(batch * length, x.shape[1]).index_copy_(0, where, x[: where.shape[0]])
        return hidden.view(batch, length, -1)


def load_bert(config: dict, weights_file: str | Path) -> BertEncoder | None:
    """Our encoder with these weights (config: the folder's config.json, already read), or None
    when it is not a plain BERT we implement."""
    if not str(weights_file).endswith(".safetensors"):
        return None
    shape = bert_shape(config)
    if shape is None:
        return None
    from safetensors.torch import load_file

    tensors = _strip_prefix(load_file(str(weights_file)))
    state = _our_names(tensors, shape.layers)
    if state is None:
        return None
    encoder = BertEncoder(shape, int(config.get("vocab_size", 0)), int(config.get("type_vocab_size", 2)))
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError:  # shapes that do not match the config
        return None
    return encoder.eval()


def _strip_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints of BertFor* models keep the encoder under "bert."."""
    if "embeddings.word_embeddings.weight" in tensors:
        return tensors
    return {k.removeprefix("bert."): v for k, v in tensors.items()}


def _our_names(t: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor] | None:
    """BertModel's parameter names mapped to ours, Q, K and V stacked into one matrix."""
    try:
        state = {
            "word_embeddings.weight": t["embeddings.word_embeddings.weight"],
            "position_embeddings.weight": t["embeddings.position_embeddings.weight"],
            "token_type_embeddings.weight": t["embeddings.token_type_embeddings.weight"],
            "embedding_norm.weight": t["embeddings.LayerNorm.weight"],
            "embedding_norm.bias": t["embeddings.LayerNorm.bias"],
        }
        for i in range(layers):
            hf, ours = f"encoder.layer.{i}.", f"layers.{i}."
            for part in ("weight", "bias"):
                qkv = [t[f"{hf}attention.self.{name}.{part}"] for name in ("query", "key", "value")]
                state[f"{ours}qkv.{part}"] = torch.cat(qkv)
                state[f"{ours}attention_out.{part}"] = t[f"{hf}attention.output.dense.{part}"]
                state[f"{ours}attention_norm.{part}"] = t[f"{hf}attention.output.LayerNorm.{part}"]
                state[f"{ours}intermediate.{part}"] = t[f"{hf}intermediate.dense.{part}"]
                state[f"{ours}output.{part}"] = t[f"{hf}output.dense.{part}"]
                state[f"{ours}output_norm.{part}"] = t[f"{hf}output.LayerNorm.{part}"]
    except KeyError:
        return None
    if any(f"encoder.layer.{layers}." in k for k in t):
        return None  # more layers than the config says
    return {k: v.float() for k, v in state.items()}
