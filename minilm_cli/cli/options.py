"""The flags: their checks, and the option list of `minilm embed` (kept here so that the
commands stay short)."""

from __future__ import annotations

from collections.abc import Callable

import click

MAX_ROWS = 2**31 - 1  # --chunk-size, --shard-rows, --batch-size: beyond this a number is a typo
MAX_THREADS = 4096
MAX_SHARDS = 1 << 20  # as sharding.MAX_SHARDS (not imported here: it pulls in pyarrow)


def split_columns(value: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in value.split(",") if c.strip()) if value else ()


def at_most(limit: int) -> Callable:
    """A callback refusing numbers no run can mean (10**20 rows or threads) as a usage error,
    before they overflow somewhere deep inside as an 'unexpected' exit 1."""

    def check(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        if value is not None and value > limit:
            raise click.BadParameter(f"{value} is more than the most allowed, {limit}", ctx, param)
        return value

    return check


def check_output(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # An unset shell variable (-o "$OUT") must not turn into the current directory.
    if value is not None and not value.strip():
        raise click.BadParameter(
            "is empty (an unset variable?): name a directory, or - for stdout", ctx, param
        )
    return value


def storage_option(fn: Callable) -> Callable:
    """``--storage-option KEY=VALUE`` (repeatable; never from the environment: credentials come
    from the store's usual variables), passed to every object-store file system."""
    return click.option(
        "--storage-option",
        "storage_option",
        multiple=True,
        metavar="KEY=VALUE",
        help="Passed to the object store's file system (repeatable), e.g. endpoint_url=http://minio:9000, "
        "anon=true, client_kwargs.region_name=eu-west-1. Values are never printed or stored.",
    )(fn)


def configure_storage_options(items: tuple[str, ...]) -> None:
    from ..storage import configure_storage, parse_storage_options

    configure_storage(parse_storage_options(items))


def check_output_exists(output: str) -> None:
    """OUTPUT must exist: a local directory (click's own check, exit 2), or a prefix with
    objects under it on a store (checked through the storage, after --storage-option)."""
    from ..storage import is_remote, redact_url, storage_for

    ctx = click.get_current_context()
    param = next(p for p in ctx.command.params if p.name == "output")
    if not is_remote(output):
        click.Path(file_okay=False, exists=True).convert(output, param, ctx)
        return
    if not storage_for(output).is_dir(output):
        raise click.BadParameter(f"Directory '{redact_url(output)}' does not exist.", ctx, param)


_EMBED_OPTIONS = [
    click.argument("inputs", nargs=-1, required=True, metavar="INPUT..."),
    click.option(
        "-o",
        "--output",
        required=True,
        callback=check_output,
        help="Output directory, or - for JSON lines on stdout.",
    ),
    click.option(
        "--input-format",
        type=click.Choice(["csv", "tsv", "jsonl", "parquet", "txt"]),
        help="Input format. Default: from the extension (.csv .tsv .jsonl .ndjson .json-lines .parquet .txt, "
        "optionally .gz .bz2 .zst .xz); stdin is read as jsonl if it starts with '{' (after a BOM, "
        "blank lines or indentation), else as txt, and the guess is noted on stderr.",
    ),
    click.option(
        "--tsv-quoting",
        type=click.Choice(["csv", "none"]),
        default="csv",
        show_default=True,
        help='TSV quotes: csv reads a field that starts with " as quoted (doubled "" inside, tabs '
        "and newlines allowed), as pyarrow, pandas, Polars and DuckDB write and read TSV; none "
        "keeps every quote as text (a tab separates fields, a line ends a row).",
    ),
    click.option(
        "--text-column", default="text", show_default=True, help="Column (or JSON field) holding the text."
    ),
    click.option(
        "--id-column",
        help="Column copied to the output's id. Default: the 0-based row number over all inputs.",
    ),
    click.option(
        "--keep-columns",
        metavar="A,B",
        help="Comma-separated columns copied through to the output. NAME:NEWNAME keeps one under another "
        "name (e.g. id:source_id: the output's own columns id and embedding are taken). The --id-column "
        "may be kept too (the same values as id).",
    ),
    click.option(
        "--column-type",
        "column_types",
        multiple=True,
        metavar="NAME=TYPE",
        help="Fix the output type of an id or kept column (repeatable): string, int64, float64, bool or "
        "json (objects and arrays as JSON text). Default: CSV/TSV values are text as written; Parquet "
        "types pass through; JSON lines types come from the first rows (see the README).",
    ),
    click.option(
        "--model",
        envvar="MINILM_MODEL",
        help="Local folder or hub id (e.g. nreimers/MiniLM-L6-H384-uncased). Default: the packaged "
        "all-MiniLM-L6-v2, offline, sha256-checked. [env MINILM_MODEL]",
    ),
    click.option(
        "--pooling",
        type=click.Choice(["mean", "cls", "max", "none"]),
        help="Default: the model's sentence-transformers config, else mean. none: one vector per token "
        "([CLS] and [SEP] included, never normalised) with token_ids, token_char_start and token_char_end "
        "list columns; not with --reuse or --overflow mean; repeated texts are not deduplicated.",
    ),
    click.option(
        "--layer",
        type=int,
        help="Hidden state to pool or write: 0 the embeddings' output, 1..N each layer's (N the last), "
        "negative from the end (-1 the last). Layers above it are not run. Default: the last.",
    ),
    click.option(
        "--normalize/--no-normalize",
        default=None,
        help="L2-normalise embeddings. Default: the model's config.",
    ),
    click.option(
        "--max-length",
        type=click.IntRange(2),
        callback=at_most(MAX_ROWS),
        help="Tokens per text (or per window); longer texts go as --overflow says. "
        "Default: the model's max_seq_length, else 512.",
    ),
    click.option(
        "--overflow",
        type=click.Choice(["truncate", "split", "mean", "reject"]),
        default="truncate",
        show_default=True,
        help="Texts over --max-length: truncate (counted); split into overlapping windows, one row each "
        "(adds window, char_start, char_end, tokens columns); mean of the windows' vectors weighted by "
        "their tokens, one row per text; reject as a bad row (see --on-error). A window begins and ends "
        "at word edges, so text[char_start:char_end] tokenizes to exactly its tokens (a word longer than "
        "a window is cut), and ends at the last sentence end (. ! ? then a space, or a line break) in "
        "its last quarter when there is one.",
    ),
    click.option(
        "--stride",
        type=click.IntRange(0),
        help="split/mean: most tokens consecutive windows share (fewer when the next window's first "
        "word begins later). Default: --max-length // 8 (32 for 256).",
    ),
    click.option(
        "--device",
        envvar="MINILM_DEVICE",
        default="auto",
        show_default=True,
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps. [env MINILM_DEVICE]",
    ),
    click.option(
        "--precision",
        envvar="MINILM_PRECISION",
        type=click.Choice(["auto", "fp32", "fp16", "bf16", "int8"]),
        default="auto",
        show_default=True,
        help="Autocast precision. auto: bf16/fp16 on CUDA, bf16 on a CPU with native bf16, else fp32. "
        "int8 (CPU only, opt-in): int8 Linear layers, faster than fp32 at a mean cosine of "
        "about 0.997 to it on real text. [env MINILM_PRECISION]",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(1),
        callback=at_most(MAX_ROWS),
        help="Most rows per forward pass. Default: 64 on CPU, 1024 on CUDA.",
    ),
    click.option(
        "--batch-tokens",
        type=click.IntRange(1),
        callback=at_most(MAX_ROWS),
        help="Most padded tokens (rows x longest row) per forward pass. Default: 2048 on CPU, 65536 on CUDA.",
    ),
    click.option(
        "--chunk-size",
        type=click.IntRange(1),
        callback=at_most(MAX_ROWS),
        help="Rows read, length-sorted and embedded together. Default: 8192 (512 with --pooling none).",
    ),
    click.option(
        "--shard-rows",
        type=click.IntRange(1),
        callback=at_most(MAX_ROWS),
        help="Rows per output shard. Default: 100000 (4096 with --pooling none).",
    ),
    click.option(
        "--format",
        "format_",
        type=click.Choice(["parquet", "npy", "jsonl"]),
        help="Output layout. Default: parquet for a directory, jsonl for -o -.",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["float32", "float16", "int8", "uint8", "binary", "ubinary"]),
        default="float32",
        show_default=True,
        help="Stored embedding type, as sentence-transformers' quantize_embeddings: int8/uint8 one "
        "byte a dim over per-dim ranges (see --calibration, --ranges); binary/ubinary 8 dims a byte "
        "(bit = value > 0; binary is the byte minus 128, as int8).",
    ),
    click.option(
        "--truncate-dim",
        type=click.IntRange(1),
        help="Keep the first N dims of each vector (Matryoshka), L2-normalised again when the model "
        "normalises; before --dtype.",
    ),
    click.option(
        "--calibration",
        metavar="FILE",
        help="int8/uint8: texts (any input format, --text-column) whose vectors fix each dim's "
        "min and max. Default: the ranges OUTPUT already records (--resume, --append, other parts), "
        "else the 256 packaged calibration texts.",
    ),
    click.option(
        "--ranges",
        metavar="OUTPUT_OR_MANIFEST",
        help="int8/uint8: use the ranges of an earlier output (its folder or manifest.json), so two "
        "outputs quantize alike.",
    ),
    click.option(
        "--overwrite", is_flag=True, help="Replace an existing output (only this tool's files are removed)."
    ),
    click.option(
        "--resume",
        is_flag=True,
        help="Continue an interrupted run into the same OUTPUT, keeping finished shards.",
    ),
    click.option(
        "--on-error",
        type=click.Choice(["fail", "skip"]),
        default="fail",
        show_default=True,
        help="Bad rows (malformed, null, empty, not text, bad UTF-8): stop, or set aside in OUTPUT/rejects/.",
    ),
    click.option(
        "--encoding-errors",
        type=click.Choice(["strict", "replace"]),
        default="strict",
        show_default=True,
        help="Invalid UTF-8: a bad row, or replaced with U+FFFD.",
    ),
    click.option(
        "--dedup/--no-dedup",
        default=True,
        show_default=True,
        help="Run each distinct text through the model once (per shard); repeats get a byte copy of "
        "the first occurrence's vector. Every input row still gets its own output row, in order.",
    ),
    click.option(
        "--append",
        is_flag=True,
        help="Add to OUTPUT the inputs it does not hold yet (new files; changed files are embedded again "
        "and their old shards superseded). Rerun after a failure to continue. With --num-shards, every "
        "task of the array embeds its part of the same new generation; merge-manifests once all have run.",
    ),
    click.option(
        "--reuse",
        multiple=True,
        metavar="PREVIOUS_OUTPUT",
        help="An earlier output of the same model and settings (repeatable): rows whose text it already "
        "holds take its stored vector (a byte copy) instead of running the model.",
    ),
    click.option(
        "--compile",
        "compile_",
        is_flag=True,
        help="torch.compile the model (pays off only on long GPU jobs).",
    ),
    click.option(
        "--threads",
        type=click.IntRange(1),
        callback=at_most(MAX_THREADS),
        help="CPU threads for the model, exactly. Default: the cores this process may use, "
        "fewer when other processes keep cores busy and a short check measures fewer faster "
        "(followed through the run in bf16/fp16).",
    ),
    click.option(
        "--host-workers",
        type=click.IntRange(0),
        callback=at_most(MAX_THREADS),
        envvar="MINILM_HOST_WORKERS",
        help="Threads that tokenize and pad chunks beside the reader (0: on the reader thread). "
        "Output bytes are the same for any count. Default: 1 on a CPU, the spare cores (at most 4) "
        "beside a GPU. [env MINILM_HOST_WORKERS]",
    ),
    click.option(
        "--num-shards",
        type=click.IntRange(1),
        callback=at_most(MAX_SHARDS),
        envvar="MINILM_NUM_SHARDS",
        help="Split the input into this many parts for independent runs (job arrays). Default: from "
        "SLURM_ARRAY_TASK_COUNT or WORLD_SIZE, else 1. [env MINILM_NUM_SHARDS]",
    ),
    click.option(
        "--shard-index",
        type=click.IntRange(0),
        callback=at_most(MAX_SHARDS - 1),
        envvar="MINILM_SHARD_INDEX",
        help="Which part this run embeds, 0-based. Default: from SLURM_ARRAY_TASK_ID (minus "
        "SLURM_ARRAY_TASK_MIN), JOB_COMPLETION_INDEX (Kubernetes) or RANK, else 0. [env MINILM_SHARD_INDEX]",
    ),
    click.option(
        "--engine",
        type=click.Choice(["local", "ray", "spark"]),
        default="local",
        show_default=True,
        help="ray: run on a Ray cluster with Ray Data (in a clone: pip install '.[ray]'); spark: each "
        "Spark task reads, embeds and writes one part of the inputs (stdin, -o -: only the model "
        "runs on Spark) (pip install '.[spark]').",
    ),
    click.option(
        "--spark-master",
        help="Spark engine: master URL for a new session (default local[*]); spark-submit's "
        "session or SPARK_REMOTE's (Spark Connect) is used when there is one.",
    ),
    click.option(
        "--spark-parts",
        type=click.IntRange(1, MAX_SHARDS),
        help="Spark engine: parts (Spark tasks) the inputs are cut into, as --num-shards cuts them "
        "(default: the parts OUTPUT already holds, else 2 per Spark core).",
    ),
    click.option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="Ray cluster to join (default: a local Ray). [env RAY_ADDRESS]",
    ),
    click.option(
        "--concurrency",
        type=click.IntRange(1),
        help="Ray engine: embedding actors (default: 1 per GPU, else 1).",
    ),
    click.option(
        "--gpus-per-worker",
        type=click.FloatRange(0),
        default=None,
        help="Ray engine: GPUs per actor (e.g. 0.5 packs two per GPU).",
    ),
    storage_option,
    click.option(
        "-q",
        "--quiet",
        is_flag=True,
        help="No progress bar and no summary line (rejected rows of -o - still go to stderr).",
    ),
]


def embed_options(fn: Callable) -> Callable:
    """Every flag of `minilm embed`, applied in the order --help lists them."""
    for option in reversed(_EMBED_OPTIONS):
        fn = option(fn)
    return fn
