"""The job description: every CLI flag lands here, and the pipeline reads only this."""

from __future__ import annotations

from dataclasses import dataclass, field

FORMATS_OUT = ("parquet", "npy", "jsonl")
ON_ERROR = ("fail", "skip")
OVERFLOW = ("truncate", "split", "mean", "reject")


@dataclass
class EmbedConfig:
    """Everything one `minilm embed` run needs. Defaults match the CLI's."""

    inputs: list[str]
    output: str
    input_format: str | None = None
    tsv_quoting: str = "csv"  # TSV quotes as in CSV (as pyarrow, pandas, Polars write them), or "none"
    text_column: str = "text"
    id_column: str | None = None
    keep_columns: tuple[str, ...] = ()
    column_types: dict[str, str] = field(default_factory=dict)  # --column-type NAME=TYPE
    model: str | None = None  # None: the packaged all-MiniLM-L6-v2
    pooling: str | None = None  # None: from the model's sentence-transformers config, else mean
    normalize: bool | None = None  # None: from the model's config, else False
    max_length: int | None = None
    overflow: str = "truncate"  # texts over max_length: truncate, split (windows), mean, reject
    stride: int | None = None  # tokens shared by consecutive windows; None: max_length // 8
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: per device (cpu 64, cuda 1024)
    batch_tokens: int | None = None  # None: per device (cpu 2048, cuda 65536)
    chunk_size: int = 8192
    shard_rows: int = 100_000
    format: str | None = None  # None: parquet for a directory, jsonl for "-"
    dtype: str = "float32"
    overwrite: bool = False
    resume: bool = False
    on_error: str = "fail"
    encoding_errors: str = "strict"
    quiet: bool = False
    compile: bool = False
    threads: int | None = None
    dedup: bool = True  # each distinct text through the model once per shard
    append: bool = False  # add the inputs OUTPUT does not hold yet, as a new generation
    reuse: tuple[str, ...] = ()  # earlier outputs whose vectors rows with the same text take
    num_shards: int = 1
    shard_index: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def to_stdout(self) -> bool:
        return self.output == "-"

    @property
    def output_format(self) -> str:
        if self.format:
            return self.format
        return "jsonl" if self.to_stdout else "parquet"
