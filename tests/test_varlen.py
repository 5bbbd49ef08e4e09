"""Attention without padding (minilm_cli/model/bert.py's varlen path), run on the CPU.

On CUDA in fp16/bf16 the encoder hands each sequence's packed rows to a varlen kernel instead of
scattering them into a padded batch. The kernel itself needs a GPU (tests/test_cuda.py), but the
code around it runs here: MINILM_ATTENTION=varlen forces the path, which then goes through SDPA on
nested jagged tensors (the math backend), or through a stand-in for flash's varlen_attn written
here, so the sequence starts and lengths the encoder builds are checked against the padded path
and against transformers' BertModel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minilm_cli.errors import InputError
from minilm_cli.model import bert
from minilm_cli.model.bert import BertEncoder, BertShape, attention_mode

# mixed lengths, a length-1 and a length-2 row among them, the longest not first
LENGTHS = [5, 1, 2, 40, 17, 3, 128, 2, 64, 9]


def random_encoder(layers: int = 2) -> BertEncoder:
    """MiniLM's shape (hidden 384, 12 heads of 32, FFN 1536), random weights."""
    shape = BertShape(
        hidden=384,
        layers=layers,
        heads=12,
        intermediate=1536,
        max_positions=512,
        eps=1e-12,
        activation="gelu",
    )
    torch.manual_seed(0)
    encoder = BertEncoder(shape, vocab=1000, type_vocab=2)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            p.normal_(0.0, 0.2 if "embeddings" in name else 0.05)
            if "norm.weight" in name:
                p.add_(1.0)  # LayerNorm scales near 1, as trained ones are
    return encoder.eval()


def batch(lengths: list[int], vocab: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, as batching.pad_batch lays them out."""
    gen = torch.Generator().manual_seed(1)
    width = max(lengths)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, vocab, (len(lengths), width), generator=gen) * mask
    return ids, mask


def run(encoder: BertEncoder, ids: torch.Tensor, mask: torch.Tensor, mode: str, monkeypatch) -> torch.Tensor:
    monkeypatch.setenv(bert.ATTENTION_ENV, mode)
    assert encoder.attention_mode() == mode
    with torch.inference_mode():
        return encoder(ids, mask)


def reference_varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k):
    """flash's varlen_attn as documented, one sequence at a time through plain SDPA; it also checks
    the arguments the flash kernel would rely on."""
    assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k)
    assert int(cu_seq_q[0]) == 0 and int(cu_seq_q[-1]) == q.shape[0]
    lengths = cu_seq_q.diff()
    assert bool((lengths >= 1).all()) and int(lengths.max()) <= max_q == max_k
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
    out = torch.empty_like(q)
    for start, end in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist()):
        per = [t[start:end].transpose(0, 1) for t in (q, k, v)]  # (heads, length, head dim)
        out[start:end] = F.scaled_dot_product_attention(*per).transpose(0, 1)
    return out


def test_varlen_equals_padded_in_fp32(monkeypatch) -> None:
    encoder = random_encoder()
    ids, mask = batch(LENGTHS)
    padded = run(encoder, ids, mask, "padded", monkeypatch)
    varlen = run(encoder, ids, mask, "varlen", monkeypatch)
    real = mask.bool()
    assert (varlen[real] - padded[real]).abs().max() <= 1e-5
    assert varlen[~real].abs().max() == 0  # padding slots carry nothing, as in the padded path
    assert padded[real].std(0).mean() > 0.5  # tokens differ: real, non-trivial activations
    one_sequence = run(encoder, ids, torch.ones_like(mask), "padded", monkeypatch)
    assert (one_sequence[real] - padded[real]).abs().max() > 0.1  # attention's reach matters


def test_the_flash_calling_convention_gives_the_padded_result(monkeypatch) -> None:
    """What the encoder hands flash's varlen kernel (starts, longest, views of the packed qkv),
    here given to a stand-in that implements varlen_attn's contract one sequence at a time."""
    calls = []

    def fake_flash(q: torch.Tensor):
        calls.append(q.shape)
        return reference_varlen_attn

    encoder = random_encoder()
    ids, mask = batch(LENGTHS)
    padded = run(encoder, ids, mask, "padded", monkeypatch)
    monkeypatch.setattr(bert, "flash_varlen", fake_flash)
    varlen = run(encoder, ids, mask, "varlen", monkeypatch)
    # once per layer, on the real tokens (rounded up to PIECE_ROWS: this runs on a CPU, where the
    # packed rows are rounded in every precision; the extra rows are a sequence of their own)
    assert calls == [(bert.round_up(sum(LENGTHS), bert.PIECE_ROWS), 12, 32)] * 2
    real = mask.bool()
    assert (varlen[real] - padded[real]).abs().max() <= 1e-5


def test_bucket_padding_rows_are_a_sequence_of_their_own(monkeypatch) -> None:
    """bf16: packed rows are rounded up to a multiple of 32 (bert.PIECE_ROWS); the extra rows
    must not be attended to by any real token, and must stay finite."""
    seen = []

    def fake_flash(q: torch.Tensor):
        def kernel(q, k, v, cu_q, cu_k, max_q, max_k):
            seen.append((cu_q.tolist(), max_q))
            out = reference_varlen_attn(q.float(), k.float(), v.float(), cu_q, cu_k, max_q, max_k)
            return out.to(q.dtype)

        return kernel

    encoder = random_encoder()
    encoder.use_dtype(torch.bfloat16)
    ids, mask = batch(LENGTHS)
    padded = run(encoder, ids, mask, "padded", monkeypatch)
    monkeypatch.setattr(bert, "flash_varlen", fake_flash)
    varlen = run(encoder, ids, mask, "varlen", monkeypatch)
    total = sum(LENGTHS)
    rounded = -(-total // bert.PIECE_ROWS) * bert.PIECE_ROWS
    starts, longest = seen[0]
    assert starts[: len(LENGTHS) + 1] == [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    assert starts[-1] == rounded and len(starts) == len(LENGTHS) + 2 and longest == max(LENGTHS)
    real = mask.bool()
    cosine = F.cosine_similarity(varlen[real].float(), padded[real].float(), dim=-1)
    assert cosine.min() >= 0.999 and torch.isfinite(varlen).all()


def test_jagged_sdpa_in_bf16_matches_padded(monkeypatch) -> None:
    """The nested-jagged fallback (fp32 on CUDA if forced, and any varlen_attn-less torch) in bf16."""
    encoder = random_encoder()
    encoder.use_dtype(torch.bfloat16)
    ids, mask = batch(LENGTHS)
    padded = run(encoder, ids, mask, "padded", monkeypatch)
    varlen = run(encoder, ids, mask, "varlen", monkeypatch)
    real = mask.bool()
    assert F.cosine_similarity(varlen[real].float(), padded[real].float(), dim=-1).min() >= 0.999


def test_varlen_equals_bertmodel_on_the_tiny_model(tiny_model_dir: str, monkeypatch) -> None:
    from transformers import AutoModel

    from minilm_cli.model import Embedder

    monkeypatch.setenv(bert.ATTENTION_ENV, "varlen")
    embedder = Embedder(model=tiny_model_dir, device="cpu", precision="fp32")
    assert "without padding" in embedder.kernels()
    ids, mask = batch([1, 2, 7, 30, 64, 3], vocab=100)
    reference = AutoModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    with torch.inference_mode():
        ours = embedder.model(ids, mask)
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() <= 1e-5


@pytest.mark.real_model
def test_varlen_equals_bertmodel_on_the_real_model(real_model_dir: str, monkeypatch) -> None:
    from transformers import AutoModel

    from minilm_cli.model import Embedder

    monkeypatch.setenv(bert.ATTENTION_ENV, "varlen")
    embedder = Embedder(model=real_model_dir, device="cpu", precision="fp32")
    texts = ["A", "ok", "a cat sat on the mat", "the quick brown fox jumps over the lazy dog " * 20]
    chunk = embedder.tokenize(texts)
    reference = AutoModel.from_pretrained(real_model_dir, attn_implementation="eager").eval()
    for b in chunk.batches:
        ids, mask = torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask)
        with torch.inference_mode():
            ours = embedder.model(ids, mask)
            theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        assert (ours[real] - theirs[real]).abs().max() <= 1e-5
    assert sorted(int(n) for b in chunk.batches for n in b.attention_mask.sum(1))[:2] == [3, 3]


def test_the_default_mode_per_device_and_dtype(monkeypatch) -> None:
    monkeypatch.delenv(bert.ATTENTION_ENV, raising=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not bert.flash_capable(cpu)
    monkeypatch.setattr(bert, "flash_capable", lambda device: False)  # a T4, a V100
    assert attention_mode(cuda, torch.bfloat16, compiling=False) == "padded"
    monkeypatch.setattr(bert, "flash_capable", lambda device: device.type == "cuda")  # Ampere on
    assert attention_mode(cuda, torch.bfloat16, compiling=False) == "varlen"
    assert attention_mode(cuda, torch.float16, compiling=False) == "varlen"
    assert attention_mode(cuda, torch.float32, compiling=False) == "padded"
    assert attention_mode(cuda, torch.bfloat16, compiling=True) == "padded"
    assert attention_mode(cpu, torch.bfloat16, compiling=False) == "padded"
    assert attention_mode(cpu, torch.float32, compiling=False) == "padded"
    monkeypatch.setenv(bert.ATTENTION_ENV, "varlen")
    assert attention_mode(cuda, torch.bfloat16, compiling=True) == "padded"  # --compile: always
    assert attention_mode(cpu, torch.float32, compiling=False) == "varlen"
    monkeypatch.setenv(bert.ATTENTION_ENV, "Padded")
    assert attention_mode(cuda, torch.bfloat16, compiling=False) == "padded"
    monkeypatch.setenv(bert.ATTENTION_ENV, "flash")
    with pytest.raises(InputError, match="MINILM_ATTENTION"):
        attention_mode(cpu, torch.float32, compiling=False)
