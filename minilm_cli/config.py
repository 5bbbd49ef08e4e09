"""The job description: every CLI flag lands here, and the pipeline reads only this."""

from __future__ import annotations

from dataclasses import dataclass, field

FORMATS_OUT = ("parquet", "npy", "jsonl")
ON_ERROR = ("fail", "skip")
OVERFLOW = ("truncate", "split", "mean", "reject")
#: --dtype: the stored vectors (model/quantize.py computes them, output/writers.py types them)
STORED_DTYPES = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
PACKED_DTYPES = ("binary", "ubinary")  # 8 dims a byte


def stored_dim(dim: int, dtype: str) -> int:
    """Width of a stored row: ``dim`` values, or ``ceil(dim / 8)`` bytes of bits."""
    return (dim + 7) // 8 if dtype in PACKED_DTYPES else dim


#: What --overflow split writes (and split and mean carry) beside the kept columns.
WINDOW_COLUMNS = ("window", "char_start", "char_end", "tokens")
#: What --pooling none writes beside the embedding column: one list entry per token.
TOKEN_COLUMNS = ("token_ids", "token_char_start", "token_char_end")
# Rows per chunk and per shard when not given. Token vectors (--pooling none) are some
# tens of times bigger per row than one pooled vector, so their chunks and shards hold fewer rows.
CHUNK_SIZE, SHARD_ROWS = 8192, 100_000
TOKEN_CHUNK_SIZE, TOKEN_SHARD_ROWS = 512, 4096


def kept_column(spec: str) -> tuple[str, str]:
    """``"id:source_id"`` -> ``("id", "source_id")``; ``"k"`` -> ``("k", "k")``. Split at the
    last colon, so an input name holding a colon is kept by renaming it (``a:b:a_b``)."""
    source, sep, name = spec.rpartition(":")
    return (source, name) if sep else (spec, spec)


def kept_problem(
    specs: tuple[str, ...] | list[str], overflow: str = "truncate", pooling: str | None = None
) -> str | None:
    """What is wrong with ``--keep-columns``, as the one line to show, or None."""
    taken = {name: "the output already has an '{}' column" for name in ("id", "embedding")}
    if pooling == "none":
        taken.update({name: "--pooling none adds a '{}' column" for name in TOKEN_COLUMNS})
    if overflow in ("split", "mean"):  # the window columns ride along with the kept ones
        verb = "adds" if overflow == "split" else "uses"  # mean drops them again before writing
        taken.update({name: f"--overflow {overflow} {verb} a '{{}}' column" for name in WINDOW_COLUMNS})
    sources: set[str] = set()
    names: dict[str, str] = {}  # output name -> the spec that takes it
    for spec in specs:
        source, name = kept_column(spec)
        if not source or not name:
            return f"--keep-columns {spec!r}: expected NAME or NAME:NEWNAME"
        if source in sources:
            return f"--keep-columns: {source} is listed twice"
        sources.add(source)
        if name in taken:
            hint = " (or pass --id-column id to use it as the id)" if name == "id" == source else ""
            return (
                f"--keep-columns {spec}: {taken[name].format(name)}; keep it under another name "
                f"with {source}:input_{name}{hint}"
            )
        if name in names:
            return f"--keep-columns {names[name]} and {spec} would both be the output column '{name}'"
        names[name] = spec
    return None


@dataclass
class EmbedConfig:
    """Everything one `minilm embed` run needs. Defaults match the CLI's."""

    inputs: list[str]
    output: str
    input_format: str | None = None
    tsv_quoting: str = "csv"  # TSV quotes as in CSV (as pyarrow, pandas, Polars write them), or "none"
    text_column: str = "text"
    id_column: str | None = None
    keep_columns: tuple[str, ...] = ()  # NAME, or NAME:NEWNAME to keep it under another name
    column_types: dict[str, str] = field(default_factory=dict)  # --column-type NAME=TYPE
    model: str | None = None  # None: the packaged all-MiniLM-L6-v2
    # None: from the model's sentence-transformers config, else mean; "none": one vector per token
    pooling: str | None = None
    layer: int | None = None  # hidden_states index (0: embeddings, -1: last); None: the last
    normalize: bool | None = None  # None: from the model's config, else False
    max_length: int | None = None
    overflow: str = "truncate"  # texts over max_length: truncate, split (windows), mean, reject
    stride: int | None = None  # tokens shared by consecutive windows; None: max_length // 8
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: per device (cpu 64, cuda 1024)
    batch_tokens: int | None = None  # None: per device (cpu 2048, cuda 65536)
    chunk_size: int | None = None  # None: CHUNK_SIZE (TOKEN_CHUNK_SIZE with --pooling none)
    shard_rows: int | None = None  # None: SHARD_ROWS (TOKEN_SHARD_ROWS with --pooling none)
    format: str | None = None  # None: parquet for a directory, jsonl for "-"
    dtype: str = "float32"  # stored vectors: float32, float16, int8, uint8, binary, ubinary
    truncate_dim: int | None = None  # keep the first N dims (normalised again when the model normalises)
    calibration: str | None = None  # int8/uint8: texts whose vectors fix the ranges
    ranges: str | None = None  # int8/uint8: an earlier output (or its manifest.json) whose ranges to use
    overwrite: bool = False
    resume: bool = False
    on_error: str = "fail"
    encoding_errors: str = "strict"
    quiet: bool = False
    compile: bool = False
    threads: int | None = None
    host_workers: int | None = None  # tokenizing threads beside the reader; None: per device
    dedup: bool = True  # each distinct text through the model once per shard
    append: bool = False  # add the inputs OUTPUT does not hold yet, as a new generation
    reuse: tuple[str, ...] = ()  # earlier outputs whose vectors rows with the same text take
    num_shards: int = 1
    shard_index: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        tokens = self.pooling == "none"
        if self.chunk_size is None:
            self.chunk_size = TOKEN_CHUNK_SIZE if tokens else CHUNK_SIZE
        if self.shard_rows is None:
            self.shard_rows = TOKEN_SHARD_ROWS if tokens else SHARD_ROWS

    @property
    def kept(self) -> list[tuple[str, str]]:
        """The kept columns as (input name, output name), in the order given."""
        return [kept_column(spec) for spec in self.keep_columns]

    @property
    def to_stdout(self) -> bool:
        return self.output == "-"

    @property
    def output_format(self) -> str:
        if self.format:
            return self.format
        return "jsonl" if self.to_stdout else "parquet"
