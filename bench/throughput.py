"""Throughput of minilm-cli against its rivals and against this machine's matmul limit, in one process.

    python bench/throughput.py [--rows 2000] [--long-rows 300] [--rounds 3] [--device cpu]
    python bench/throughput.py --quick      # tiny sizes and a short probe: a smoke run

First the matmul peak of this machine for the model's Linear shapes (bench/bound.py: fp32,
bf16, and int8 through fbgemm; whether the CPU has native bf16 / VNNI is printed), then two
corpora of real English, each through the same engines:
  - mixed: bench/data/mixed.jsonl.gz (WordNet glosses and fortunes, mean ~23 tokens, tail to 256),
  - long: paragraphs of 100-256 tokens built from the same file (consecutive rows joined with a
    space until a target length drawn uniformly from 100..256 is reached; each row used once).

Engines, alternating within each round after a short warm-up, median of --rounds:
  - sentence-transformers `encode`, fp32, batch 32: the reference for ratio and cosine,
  - sentence-transformers with the model cast to bf16,
  - ONNX Runtime fp32 and int8 (the packaged weights exported with torch.onnx.export, offline;
    int8 = onnxruntime.quantization.quantize_dynamic, per-channel QInt8), fed our own
    length-sorted padded batches, so they do the same padded work as we do; skipped with a
    note when onnxruntime is not installed (pip install '.[bench]'),
  - OpenVINO bf16 and fp32 (the same exported ONNX file, compiled for "CPU" with
    INFERENCE_PRECISION_HINT bf16 / f32, hint LATENCY, dynamic batch and length), fed our own
    batches too; the INFERENCE_PRECISION_HINT the compiled models report is printed (a CPU
    without native bf16 may run f32: the row then says so and takes the fp32 bound); skipped
    with a note when openvino is not installed (pip install '.[bench]'),
  - minilm-cli `Embedder` at its defaults, and at each other CPU precision it offers.
The matmul peak is measured again in every round, beside the engines, and each engine's
padded tokens/s (of_bound) and real tokens/s (real_of_bound) are divided by the bound of its
own precision from the same round: figures that travel between machines, where rows/s do not.
Our own encoder runs its Linear layers on real tokens only, so real_of_bound is its figure;
the others compute every padded token. Min and mean cosine are against the
sentence-transformers fp32 embeddings.

End to end (file to file, mixed corpus): JSONL -> Parquet, sentence-transformers scripted with
pyarrow against `minilm embed` in-process (run_job, model loaded once beforehand).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CORPUS = HERE / "data" / "mixed.jsonl.gz"
REFERENCE = "sentence-transformers fp32 (batch 32)"

from bound import bf16_hardware, flops_per_token, int8_hardware, matmul_peaks, tokens_bound  # noqa: E402


def corpus_rows() -> list[str]:
    return [json.loads(line)["text"] for line in gzip.open(CORPUS, "rt", encoding="utf-8")]


def load_texts(rows: int) -> list[str]:
    texts = corpus_rows()
    while len(texts) < rows:
        texts += texts
    return texts[:rows]


def long_texts(rows: int, tokenizer, low: int = 100, high: int = 256, seed: int = 0) -> list[str]:
    """Paragraphs of low..high tokens: consecutive corpus rows joined until a drawn target length."""
    rng = np.random.default_rng(seed)
    source = corpus_rows()
    counts = [len(e.ids) - 2 for e in tokenizer.encode_batch(source)]  # without [CLS] [SEP]
    out: list[str] = []
    parts: list[str] = []
    length, target = 0, int(rng.integers(low, high + 1))
    for text, n in zip(source, counts):
        if n + 2 > high:  # a row that alone would be truncated: not a paragraph of this corpus
            continue
        if length + n + 2 > high:  # would overflow: start again from this row
            parts, length = [], 0
        parts.append(text)
        length += n
        if length + 2 >= target:
            out.append(" ".join(parts))
            parts, length, target = [], 0, int(rng.integers(low, high + 1))
            if len(out) == rows:
                break
    while len(out) < rows:  # more rows asked than the corpus holds: repeat
        out += out[: rows - len(out)]
    return out


def st_padding_efficiency(texts: list[str], lengths: np.ndarray, batch: int = 32) -> float:
    """sentence-transformers sorts by character length (not tokens), then pads each batch of 32."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    padded = sum(
        len(part) * lengths[part].max()
        for part in (order[i : i + batch] for i in range(0, len(order), batch))
    )
    return float(lengths.sum()) / padded


def timed(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


# ---------------------------------------------------------------------------- ONNX Runtime, OpenVINO


def onnx_engines(workdir: Path, model_path: str, threads: int) -> dict[str, tuple] | str:
    """{row name: (infer, precision)} for ONNX Runtime fp32 and int8, or a note why not."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return "onnxruntime not installed (pip install '.[bench]'): ONNX Runtime rows skipped"

    int8_path = workdir / "model-int8.onnx"
    try:
        fp32_path = exported_model(workdir, model_path)
        quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8)
    except Exception as exc:  # noqa: BLE001 - exporter or quantizer missing/failing: say so, go on
        return f"ONNX export/quantization failed ({type(exc).__name__}: {str(exc)[:160]}): rows skipped"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning threads after a run: the engine timed next would lose the cores to them
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    engines = {}
    for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
        session = ort.InferenceSession(str(path), options, providers=providers)
        engines[f"ONNX Runtime {precision} (our batches)"] = (ort_infer(session), precision)
    return engines


def openvino_engines(workdir: Path, model_path: str, threads: int) -> dict[str, tuple] | str:
    """{row name: (infer, precision)} for OpenVINO bf16 and fp32 on the CPU, or a note why not."""
    try:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints
    except ImportError:
        return "openvino not installed (pip install '.[bench]'): OpenVINO rows skipped"
    try:
        core = ov.Core()
        # the exported file keeps its dynamic axes: batch and length are [?, ?] here, so each
        # of our padded batches runs as it comes, with no reshape between batches
        model = core.read_model(str(exported_model(workdir, model_path)))
        engines, ran_note = {}, []
        for precision, asked in (("bf16", ov.Type.bf16), ("fp32", ov.Type.f32)):
            config = {
                hints.inference_precision: asked,
                # LATENCY, not THROUGHPUT: we call one batch at a time and wait for it, as our
                # engine does; LATENCY gives that one request a single stream with every thread,
                # where THROUGHPUT splits the threads into streams that only pay off with several
                # requests in flight (one synchronous request would get a share of the threads)
                hints.performance_mode: hints.PerformanceMode.LATENCY,
                props.inference_num_threads: threads,  # the count our engine and ONNX Runtime get
                # not pinned to cores, as torch and ONNX Runtime are not (a shared machine moves us)
                hints.enable_cpu_pinning: False,
            }
            compiled = core.compile_model(model, "CPU", config)
            ran = compiled.get_property(hints.inference_precision).get_type_name()  # "bf16", "f32"
            ran_note.append(f"{precision} asked, {ran} ran")
            ran_as = {"f32": "fp32"}.get(ran, ran)
            # a CPU without native bf16 may run f32 when asked bf16: the row names and bounds what ran
            name = f"OpenVINO {precision} (our batches)"
            if ran_as != precision:
                name = f"OpenVINO {precision} (ran {ran}, our batches)"
            request = compiled.create_infer_request()
            engines[name] = (
                lambda ids, mask, r=request: r.infer({"input_ids": ids, "attention_mask": mask})[0],
                ran_as,
            )
    except Exception as exc:  # noqa: BLE001 - exporter, reader or compiler failing: say so, go on
        return f"OpenVINO export/compile failed ({type(exc).__name__}: {str(exc)[:160]}): rows skipped"
    print(
        f"note: OpenVINO {ov.__version__.split('-')[0]} on CPU, INFERENCE_PRECISION_HINT of the "
        f"compiled models: {'; '.join(ran_note)} (hint LATENCY, {threads} threads)"
    )
    return engines


def exported_model(workdir: Path, model_path: str) -> Path:
    """The packaged weights as workdir/model.onnx (exported once, shared by the rivals)."""
    path = workdir / "model.onnx"
    if path.exists():
        return path
    import torch
    from transformers import AutoModel

    class Hidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = Hidden(AutoModel.from_pretrained(model_path, attn_implementation="eager").eval())
    ids = torch.ones(2, 16, dtype=torch.int64)
    export_hidden(model, path, ids, ids)
    return path


def export_hidden(model, path: Path, ids, mask) -> None:
    """model(input_ids, attention_mask) -> last hidden state, to ONNX with dynamic batch and length."""
    import torch

    axes = {0: "batch", 1: "length"}
    with torch.inference_mode():
        torch.onnx.export(
            model,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["hidden"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
            opset_version=17,
            dynamo=False,
        )


def ort_infer(session):
    """An ONNX Runtime session of an exported encoder as infer(ids, mask) -> hidden states."""
    return lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def batches_embed(infer, chunk, dim: int) -> np.ndarray:
    """Our padded batches through infer(ids, mask) -> hidden; mean-pooled and normalised as the model does."""
    out = np.empty((len(chunk.ids), dim), dtype=np.float32)
    for batch in chunk.batches:
        hidden = np.asarray(infer(batch.input_ids, batch.attention_mask), dtype=np.float32)
        mask = batch.attention_mask[:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        out[batch.rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return out


# ---------------------------------------------------------------------------- tables


def engine_table(
    corpora: dict[str, list[str]], device: str, rounds: int, compile: bool, quick: bool
) -> tuple[dict[str, list[dict]], dict]:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig

    from minilm_cli.model import Embedder, resolve_model

    path = resolve_model(None).path
    config = AutoConfig.from_pretrained(path)
    st = SentenceTransformer(path, device=device)
    st_bf16 = SentenceTransformer(path, device=device, model_kwargs={"torch_dtype": torch.bfloat16})
    ours = Embedder(device=device)
    # name -> (embedder, precision of its matmuls for the bound)
    variants = {f"minilm-cli defaults ({ours.precision})": (ours, ours.precision)}
    if device == "cpu":
        from minilm_cli.devices import PRECISIONS

        for precision in PRECISIONS:
            if precision not in ("auto", "fp16", ours.precision):
                variants[f"minilm-cli --precision {precision}"] = (
                    Embedder(device=device, precision=precision),
                    precision,
                )
    if compile:  # the warm-up below pays the compilation, as a long job would once
        compiled = Embedder(device=device, compile=True)
        variants[f"minilm-cli --compile ({compiled.precision})"] = (compiled, compiled.precision)
    # rivals fed our batches: {row name: (infer(ids, mask) -> hidden, precision for the bound)}
    workdir = Path(tempfile.mkdtemp(prefix="minilm-onnx-"))
    rivals: dict[str, tuple] = {}
    for made in (
        onnx_engines(workdir, path, torch.get_num_threads()),
        openvino_engines(workdir, path, torch.get_num_threads()),
    ):
        if isinstance(made, str):
            print(f"note: {made}")
        else:
            rivals.update(made)

    probe_rows, probe_seconds = (256, 0.05) if quick else (ours.batch_tokens, 0.3)
    peak_rounds: list[dict] = []
    results: dict[str, list[dict]] = {}
    for corpus, texts in corpora.items():
        chunk = ours.tokenize(texts)
        engines = {
            REFERENCE: (lambda t=texts: st.encode(t, batch_size=32, normalize_embeddings=True), "fp32"),
            "sentence-transformers bf16 (batch 32)": (
                lambda t=texts: np.asarray(
                    st_bf16.encode(t, batch_size=32, normalize_embeddings=True, convert_to_tensor=True)
                    .float()
                    .cpu()
                ),
                "bf16",
            ),
        }
        for name, (infer, precision) in rivals.items():
            engines[name] = (lambda f=infer, c=chunk: batches_embed(f, c, ours.dim), precision)
        for name, (embedder, precision) in variants.items():
            engines[name] = (lambda e=embedder, t=texts: e.run(e.tokenize(t)), precision)
        st_eff = st_padding_efficiency(texts, chunk.lengths)
        # padded tokens each engine computes: ours, ONNX Runtime and OpenVINO run our batches;
        # sentence-transformers pads its own batches of 32 (estimated from our token counts)
        padded = {
            name: chunk.real_tokens / st_eff if name.startswith("sentence") else chunk.padded_tokens
            for name in engines
        }
        warm = ours.tokenize(texts[:: max(1, len(texts) // 48)])  # every length class, briefly
        for embedder, _ in variants.values():
            embedder.run(warm)
        for infer, _ in rivals.values():
            batches_embed(infer, warm, ours.dim)
        st.encode(texts[:32]), st_bf16.encode(texts[:32])
        times: dict[str, list[float]] = {name: [] for name in engines}
        fractions: dict[str, list[float]] = {name: [] for name in engines}
        real_fractions: dict[str, list[float]] = {name: [] for name in engines}
        outputs: dict[str, object] = {}
        for _ in range(rounds):  # alternate, so drift in machine speed hits all alike
            peaks = matmul_peaks(config, probe_rows, probe_seconds)
            peak_rounds.append(peaks)
            for name, (fn, precision) in engines.items():
                seconds, outputs[name] = timed(fn, 1)
                times[name].append(seconds)
                shapes = peaks.get("int8" if precision.startswith("int8") else precision)
                if shapes:
                    bound = tokens_bound(config, shapes)
                    fractions[name].append(padded[name] / seconds / bound)
                    real_fractions[name].append(chunk.real_tokens / seconds / bound)
        reference = np.asarray(outputs[REFERENCE], dtype=np.float32)
        rows = []
        for name, seconds_list in times.items():
            seconds = statistics.median(seconds_list)
            out = np.asarray(outputs[name], dtype=np.float32)
            cosine = (out * reference).sum(1) / (
                np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1)
            )
            eff = chunk.real_tokens / padded[name]
            rows.append(
                {
                    "engine": name,
                    "seconds": seconds,
                    "rows_per_s": len(texts) / seconds,
                    "tokens_per_s": chunk.real_tokens / seconds,
                    "padding_eff": eff,
                    "of_bound": statistics.median(fractions[name]) if fractions[name] else float("nan"),
                    "real_of_bound": (
                        statistics.median(real_fractions[name]) if real_fractions[name] else float("nan")
                    ),
                    "min_cosine": float(cosine.min()),
                    "mean_cosine": float(cosine.mean()),
                }
            )
        results[corpus] = rows
    summary = {
        "config": config,
        "peaks": {
            precision: {
                shape: statistics.median(p[precision][shape] for p in peak_rounds if precision in p)
                for shape in peak_rounds[0][precision]
            }
            for precision in peak_rounds[0]
        },
        "corpora": {c: ours.tokenize(t) for c, t in corpora.items()},
    }
    return results, summary


def end_to_end_table(texts: list[str], device: str, rounds: int) -> list[dict]:
    import pyarrow as pa
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    from minilm_cli.config import EmbedConfig
    from minilm_cli.model import resolve_model
    from minilm_cli.pipeline import build_embedder, run_job

    work = Path(tempfile.mkdtemp(prefix="minilm-bench-"))
    source = work / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    st = SentenceTransformer(resolve_model(None).path, device=device)

    def st_job() -> None:
        table = pa_json.read_json(source)
        emb = st.encode(table.column("text").to_pylist(), batch_size=32, normalize_embeddings=True)
        values = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        pq.write_table(
            pa.table({"id": pa.array(np.arange(len(emb))), "embedding": values}), work / "st.parquet"
        )

    cfg = EmbedConfig(
        inputs=[str(source)], output=str(work / "ours"), device=device, overwrite=True, quiet=True
    )
    # --dtype binary: 48 bytes a row instead of 1536 (the model's work is the same; the int8
    # ranges' calibration would be a fixed cost per run on top, so binary is the one measured)
    binary = EmbedConfig(**{**cfg.__dict__, "output": str(work / "binary"), "dtype": "binary"})
    embedder = build_embedder(cfg)
    # --pooling none: every token's vector, ids and spans (tens of times the bytes of a pooled row)
    tokens_cfg = EmbedConfig(
        inputs=[str(source)],
        output=str(work / "tokens"),
        device=device,
        overwrite=True,
        quiet=True,
        pooling="none",
    )
    tokens_embedder = build_embedder(tokens_cfg)

    def job(config: EmbedConfig):
        return lambda: run_job(config, embedder=embedder, log=lambda m: None)

    def tokens_job() -> None:
        run_job(tokens_cfg, embedder=tokens_embedder, log=lambda m: None)

    jobs = {
        "sentence-transformers read+encode+write": (st_job, work / "st.parquet"),
        "minilm embed (run_job)": (job(cfg), work / "ours"),
        "minilm embed --dtype binary": (job(binary), work / "binary"),
        "minilm embed --pooling none (run_job)": (tokens_job, work / "tokens"),
    }
    for run, _ in jobs.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, (run, _) in jobs.items():
            times[name].append(timed(run, 1)[0])
    return [
        {
            "engine": k,
            "seconds": statistics.median(v),
            "rows_per_s": len(texts) / statistics.median(v),
            "bytes_per_row": written_bytes(jobs[k][1]) / len(texts),
        }
        for k, v in times.items()
    ]


def written_bytes(path: Path) -> int:
    """Bytes of vectors and row data written (a file, or an OUTPUT's shards; no manifest, no key files)."""
    if path.is_file():
        return path.stat().st_size
    return sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and p.suffix in (".parquet", ".npy") and ".minilm-keys" not in p.parts
    )


def print_table(title: str, rows: list[dict], base: float) -> None:
    print(f"\n{title}")
    cols = [
        c
        for c in (
            "rows_per_s",
            "bytes_per_row",
            "tokens_per_s",
            "padding_eff",
            "of_bound",
            "real_of_bound",
            "min_cosine",
            "mean_cosine",
        )
        if c in rows[0]
    ]
    print(f"{'engine':42s} {'seconds':>8s} " + " ".join(f"{c:>12s}" for c in cols) + f" {'ratio':>7s}")
    for r in rows:
        vals = " ".join(
            f"{r[c]:12.1f}"
            if c.endswith("_s") or c == "bytes_per_row"
            else f"{r[c]:12.3f}"
            if c.endswith("of_bound")
            else f"{r[c]:12.5f}"
            for c in cols
        )
        print(f"{r['engine']:42s} {r['seconds']:8.2f} {vals} {r['rows_per_s'] / base:6.2f}x")


def print_peaks(summary: dict) -> None:
    config = summary["config"]
    print(
        f"\nmatmul peak of this machine (median of the rounds; GFLOP/s per Linear shape, "
        f"{flops_per_token(config) / 1e6:.2f} MFLOP per token in the Linear layers)"
    )
    for name, shapes in summary["peaks"].items():
        cells = "  ".join(f"{k}x{n} {g:7.1f}" for (k, n), g in shapes.items())
        print(f"  {name:13s} {cells}   bound {tokens_bound(config, shapes):9.0f} tokens/s")
    for corpus, chunk in summary["corpora"].items():
        lengths = chunk.lengths
        print(
            f"  corpus {corpus}: {len(lengths)} rows, {chunk.real_tokens} real tokens "
            f"(mean {lengths.mean():.0f}, min {lengths.min()}, max {lengths.max()}), "
            f"{chunk.padded_tokens} padded in our batches"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000, help="rows of the mixed corpus")
    parser.add_argument("--long-rows", type=int, default=300, help="paragraphs of the long corpus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--compile", action="store_true", help="add a row for torch.compile")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny corpora, short probe")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.long_rows = min(args.rows, 32), min(args.long_rows, 4)

    import torch

    from minilm_cli.model import Embedder

    tokenizer = Embedder(device="cpu", precision="fp32").tokenizer
    corpora = {"mixed": load_texts(args.rows), "long": long_texts(args.long_rows, tokenizer)}
    print(
        f"real text ({CORPUS.name}): mixed {len(corpora['mixed'])} rows, long {len(corpora['long'])} "
        f"paragraphs; device {args.device}, torch threads {torch.get_num_threads()}; "
        f"CPU bf16: {bf16_hardware()}; CPU int8: {int8_hardware()}"
    )
    tables, summary = engine_table(corpora, args.device, args.rounds, args.compile, args.quick)
    print_peaks(summary)
    for corpus, rows in tables.items():
        print_table(
            f"engine, {corpus} corpus: same texts, in memory (median of rounds; of_bound = padded "
            "tokens/s over the matmul bound of the engine's precision, real_of_bound = real tokens/s "
            "over it (what our packed encoder's Linear layers compute); ratio = rows/s over "
            "sentence-transformers fp32)",
            rows,
            rows[0]["rows_per_s"],
        )
    if not args.skip_e2e:
        e2e = end_to_end_table(corpora["mixed"], args.device, args.rounds)
        print_table(
            "end to end: JSONL file -> Parquet (ratio over sentence-transformers)", e2e, e2e[0]["rows_per_s"]
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
