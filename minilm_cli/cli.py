"""The `minilm` command: flags in, an EmbedConfig out, errors as one line on stderr.

Everything real happens in pipeline.run_job; this module only translates.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from . import __version__
from .config import EmbedConfig
from .errors import ExitCode, Interrupted, MinilmError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# Everything str.splitlines() breaks on: a message must stay one line whatever a path, a
# column name or a CSV header holds, so these are written as escapes (\n, \r, \x85, ...).
_LINE_BREAKS = {
    c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)
}
MAX_ROWS = 2**31 - 1  # --chunk-size, --shard-rows, --batch-size: beyond this a number is a typo
MAX_THREADS = 4096
MAX_SHARDS = 1 << 20  # as sharding.MAX_SHARDS (not imported here: it pulls in pyarrow)


def one_line(message: str) -> str:
    return message.translate(_LINE_BREAKS)


def fail(message: str, code: int) -> None:
    from .storage import redact, storage_options

    # never a secret: storage-option values, credential variables, URL user info
    click.echo(f"minilm: error: {one_line(redact(message, storage_options()))}", err=True)
    sys.exit(int(code))


def _describe_failure(exc: BaseException) -> tuple[str, int]:
    """The one line and the documented exit code for a failure escaping a command."""
    if isinstance(exc, Interrupted):
        return (
            f"{exc}; finished shards are kept: rerun the same command with --resume to continue",
            exc.exit_code,
        )
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; rerun the same command with --resume to continue", ExitCode.INTERRUPTED_SIGINT
    if isinstance(exc, MinilmError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        return _describe_os_error(exc), ExitCode.RUNTIME_FAILURE
    if isinstance(exc, MemoryError):
        return "out of memory: lower --batch-tokens or --chunk-size", ExitCode.RUNTIME_FAILURE
    text = " ".join(str(exc).split())[:300]
    return (
        f"unexpected {type(exc).__name__}: {text} (set MINILM_DEBUG=1 for a traceback)",
        ExitCode.RUNTIME_FAILURE,
    )


def handle_errors(fn: Callable) -> Callable:
    """Turn every failure into one stderr line and a documented exit code, never a traceback.
    MINILM_DEBUG=1 prints the traceback first; the line and the exit code stay the same."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: OneLineErrors prints it as one line
        except BrokenPipeError:
            _quiet_broken_pipe()
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("MINILM_DEBUG"):
                traceback.print_exc(file=sys.stderr)
                sys.stderr.flush()
            fail(*_describe_failure(exc))

    return wrapper


def _quiet_broken_pipe() -> None:
    """The reader of stdout went away (`| head`): stop like other Unix tools, silently, 141."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
    except (OSError, ValueError):
        pass
    sys.exit(int(ExitCode.BROKEN_PIPE))


def _describe_os_error(exc: OSError) -> str:
    # pyarrow sets errno but not filename; its own message names the file
    where = f" ({exc.filename})" if exc.filename else f" ({' '.join(str(exc).split())[:200]})"
    reasons = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EROFS: "read-only file system",
    }
    reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{reason}{where}; finished shards are kept: fix this and rerun with --resume"


def _columns(value: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in value.split(",") if c.strip()) if value else ()


def _check_keep_columns(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    seen: set[str] = set()
    for name in _columns(value):
        if name in seen:
            raise click.BadParameter(f"'{name}' is listed twice", ctx, param)
        seen.add(name)
    return value


def _at_most(limit: int) -> Callable:
    """A callback refusing numbers no run can mean (10**20 rows or threads) as a usage error,
    before they overflow somewhere deep inside as an 'unexpected' exit 1."""

    def check(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        if value is not None and value > limit:
            raise click.BadParameter(f"{value} is more than the most allowed, {limit}", ctx, param)
        return value

    return check


def _check_output(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
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


def _configure_storage(items: tuple[str, ...]) -> None:
    from .storage import configure_storage, parse_storage_options

    configure_storage(parse_storage_options(items))


def _existing_output(output: str) -> None:
    """OUTPUT must exist: a local directory (click's own check, exit 2), or a prefix with
    objects under it on a store (checked through the storage, after --storage-option)."""
    from .storage import is_remote, redact_url, storage_for

    ctx = click.get_current_context()
    param = next(p for p in ctx.command.params if p.name == "output")
    if not is_remote(output):
        click.Path(file_okay=False, exists=True).convert(output, param, ctx)
        return
    if not storage_for(output).is_dir(output):
        raise click.BadParameter(f"Directory '{redact_url(output)}' does not exist.", ctx, param)


class OneLineErrors(click.Group):
    """Click's usage errors (unknown flag, bad choice) as one line too, like every other error."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            fail("aborted", ExitCode.INTERRUPTED_SIGINT)
        except click.ClickException as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) else ""
            fail(" ".join(exc.format_message().split()) + where, exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=OneLineErrors, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="minilm")
def main() -> None:
    """Embed text corpora with MiniLM models, into Parquet or .npy shards.

    \b
    minilm embed corpus.parquet -o embeddings/     embed a file into a directory
    minilm verify embeddings/                      check the output against its manifest
    minilm info                                    the model and the device it would use
    """


@main.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-o",
    "--output",
    required=True,
    callback=_check_output,
    help="Output directory, or - for JSON lines on stdout.",
)
@click.option(
    "--input-format",
    type=click.Choice(["csv", "tsv", "jsonl", "parquet", "txt"]),
    help="Input format. Default: from the extension (.csv .tsv .jsonl .ndjson .json-lines .parquet .txt, "
    "optionally .gz .bz2 .zst); stdin is read as jsonl if it starts with '{', else as txt.",
)
@click.option(
    "--text-column", default="text", show_default=True, help="Column (or JSON field) holding the text."
)
@click.option(
    "--id-column", help="Column copied to the output's id. Default: the 0-based row number over all inputs."
)
@click.option(
    "--keep-columns",
    metavar="A,B",
    callback=_check_keep_columns,
    help="Comma-separated columns copied through to the output.",
)
@click.option(
    "--column-type",
    "column_types",
    multiple=True,
    metavar="NAME=TYPE",
    help="Fix the output type of an id or kept column (repeatable): string, int64, float64, bool or "
    "json (objects and arrays as JSON text). Default: CSV/TSV values are text as written; Parquet "
    "types pass through; JSON lines types come from the first rows (see the README).",
)
@click.option(
    "--model",
    envvar="MINILM_MODEL",
    help="Local folder or hub id (e.g. nreimers/MiniLM-L6-H384-uncased). Default: the packaged "
    "all-MiniLM-L6-v2, offline, sha256-checked. [env MINILM_MODEL]",
)
@click.option(
    "--pooling",
    type=click.Choice(["mean", "cls", "max"]),
    help="Default: the model's sentence-transformers config, else mean.",
)
@click.option(
    "--normalize/--no-normalize", default=None, help="L2-normalise embeddings. Default: the model's config."
)
@click.option(
    "--max-length",
    type=click.IntRange(2),
    callback=_at_most(MAX_ROWS),
    help="Tokens per text (or per window); longer texts go as --overflow says. "
    "Default: the model's max_seq_length, else 512.",
)
@click.option(
    "--overflow",
    type=click.Choice(["truncate", "split", "mean", "reject"]),
    default="truncate",
    show_default=True,
    help="Texts over --max-length: truncate (counted); split into overlapping windows, one row each "
    "(adds window, char_start, char_end, tokens columns); mean of the windows' vectors weighted by "
    "their tokens, one row per text; reject as a bad row (see --on-error).",
)
@click.option(
    "--stride",
    type=click.IntRange(0),
    help="split/mean: tokens consecutive windows share. Default: --max-length // 8 (32 for 256).",
)
@click.option(
    "--device",
    envvar="MINILM_DEVICE",
    default="auto",
    show_default=True,
    help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps. [env MINILM_DEVICE]",
)
@click.option(
    "--precision",
    envvar="MINILM_PRECISION",
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
    default="auto",
    show_default=True,
    help="Autocast precision. auto: bf16/fp16 on CUDA, bf16 on a CPU with native bf16, else fp32. "
    "[env MINILM_PRECISION]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    callback=_at_most(MAX_ROWS),
    help="Most rows per forward pass. Default: 64 on CPU, 1024 on CUDA.",
)
@click.option(
    "--batch-tokens",
    type=click.IntRange(1),
    callback=_at_most(MAX_ROWS),
    help="Most padded tokens (rows x longest row) per forward pass. Default: 2048 on CPU, 65536 on CUDA.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1),
    callback=_at_most(MAX_ROWS),
    default=8192,
    show_default=True,
    help="Rows read, length-sorted and embedded together.",
)
@click.option(
    "--shard-rows",
    type=click.IntRange(1),
    callback=_at_most(MAX_ROWS),
    default=100_000,
    show_default=True,
    help="Rows per output shard.",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["parquet", "npy", "jsonl"]),
    help="Output layout. Default: parquet for a directory, jsonl for -o -.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Stored embedding precision.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing output (only this tool's files are removed)."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run into the same OUTPUT, keeping finished shards.",
)
@click.option(
    "--on-error",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="Bad rows (malformed, null, empty, not text, bad UTF-8): stop, or set aside in OUTPUT/rejects/.",
)
@click.option(
    "--encoding-errors",
    type=click.Choice(["strict", "replace"]),
    default="strict",
    show_default=True,
    help="Invalid UTF-8: a bad row, or replaced with U+FFFD.",
)
@click.option(
    "--dedup/--no-dedup",
    default=True,
    show_default=True,
    help="Run each distinct text through the model once (per shard); repeats get a byte copy of "
    "the first occurrence's vector. Every input row still gets its own output row, in order.",
)
@click.option(
    "--append",
    is_flag=True,
    help="Add to OUTPUT the inputs it does not hold yet (new files; changed files are embedded again "
    "and their old shards superseded). Rerun after a failure to continue.",
)
@click.option(
    "--reuse",
    multiple=True,
    metavar="PREVIOUS_OUTPUT",
    help="An earlier output of the same model and settings (repeatable): rows whose text it already "
    "holds take its stored vector (a byte copy) instead of running the model.",
)
@click.option(
    "--compile", "compile_", is_flag=True, help="torch.compile the model (pays off only on long GPU jobs)."
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    callback=_at_most(MAX_THREADS),
    help="CPU threads for the model. Default: the cores this process may use.",
)
@click.option(
    "--num-shards",
    type=click.IntRange(1),
    callback=_at_most(MAX_SHARDS),
    envvar="MINILM_NUM_SHARDS",
    help="Split the input into this many parts for independent runs (job arrays). Default: from "
    "SLURM_ARRAY_TASK_COUNT or WORLD_SIZE, else 1. [env MINILM_NUM_SHARDS]",
)
@click.option(
    "--shard-index",
    type=click.IntRange(0),
    callback=_at_most(MAX_SHARDS - 1),
    envvar="MINILM_SHARD_INDEX",
    help="Which part this run embeds, 0-based. Default: from SLURM_ARRAY_TASK_ID (minus "
    "SLURM_ARRAY_TASK_MIN), JOB_COMPLETION_INDEX (Kubernetes) or RANK, else 0. [env MINILM_SHARD_INDEX]",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: run on a Ray cluster with Ray Data (pip install minilm-cli[ray]).",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    help="Ray cluster to join (default: a local Ray). [env RAY_ADDRESS]",
)
@click.option(
    "--concurrency", type=click.IntRange(1), help="Ray engine: embedding actors (default: 1 per GPU, else 1)."
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(0),
    default=None,
    help="Ray engine: GPUs per actor (e.g. 0.5 packs two per GPU).",
)
@storage_option
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No progress bar and no summary line (rejected rows of -o - still go to stderr).",
)
@handle_errors
def embed(inputs: tuple[str, ...], output: str, **opts: Any) -> None:
    """Embed the text of INPUT... (files, globs, directories, or - for stdin) into OUTPUT.

    Writes OUTPUT/part-00000.parquet, ... (or embeddings/*.npy and metadata/*.parquet with
    --format npy) and OUTPUT/manifest.json. Exit codes: 0 done, 1 runtime failure,
    2 bad input or flags, 3 OUTPUT conflict, 130/143 interrupted, 141 stdout closed (-o - | head).
    """
    from .pipeline import run_job
    from .sharding import shard_from_env
    from .sources import parse_column_types
    from .workers import parse_devices, run_on_devices

    _configure_storage(opts["storage_option"])
    num_shards, shard_index = shard_from_env(opts["num_shards"], opts["shard_index"])
    cfg = EmbedConfig(
        inputs=list(inputs),
        output=output,
        input_format=opts["input_format"],
        text_column=opts["text_column"],
        id_column=opts["id_column"],
        keep_columns=_columns(opts["keep_columns"]),
        column_types=parse_column_types(opts["column_types"]),
        model=opts["model"],
        pooling=opts["pooling"],
        normalize=opts["normalize"],
        max_length=opts["max_length"],
        overflow=opts["overflow"],
        stride=opts["stride"],
        device=opts["device"],
        precision=opts["precision"],
        batch_size=opts["batch_size"],
        batch_tokens=opts["batch_tokens"],
        chunk_size=opts["chunk_size"],
        shard_rows=opts["shard_rows"],
        format=opts["format_"],
        dtype=opts["dtype"],
        overwrite=opts["overwrite"],
        resume=opts["resume"],
        on_error=opts["on_error"],
        encoding_errors=opts["encoding_errors"],
        quiet=opts["quiet"],
        compile=opts["compile_"],
        dedup=opts["dedup"],
        reuse=tuple(opts["reuse"]),
        append=opts["append"],
        threads=opts["threads"],
        num_shards=num_shards,
        shard_index=shard_index,
    )
    if opts["engine"] == "ray":
        from .ray import run_ray_job

        run_ray_job(
            cfg,
            address=opts["ray_address"],
            concurrency=opts["concurrency"],
            gpus_per_worker=opts["gpus_per_worker"],
        )
        return
    devices = parse_devices(cfg.device)
    if devices:
        result = run_on_devices(cfg, devices)
        if not cfg.quiet:
            click.echo(f"{result['workers']} device workers done; manifest {result['manifest']}", err=True)
        return
    run_job(cfg)


@main.command(context_settings=CONTEXT)
@click.argument("output", callback=_check_output)
@storage_option
@handle_errors
def verify(output: str, storage_option: tuple[str, ...]) -> None:
    """Check OUTPUT against its manifest: every shard present, checksums, row counts, dim,
    no NaN/Inf, unique ids. Exit 0 when sound, 4 with a report when not."""
    from .output import verify_output

    _configure_storage(storage_option)
    _existing_output(output)

    report = verify_output(output)
    click.echo(report.text())
    if not report.ok:
        sys.exit(int(ExitCode.VERIFY_FAILED))


@main.command("merge-manifests", context_settings=CONTEXT)
@click.argument("output", callback=_check_output)
@storage_option
@handle_errors
def merge_manifests_command(output: str, storage_option: tuple[str, ...]) -> None:
    """Check that the manifest parts of a sharded run (manifest-I-of-N.json) cover the whole
    input once, share their settings, are complete and have every listed file, then write one
    OUTPUT/manifest.json. Exit 4 when not."""
    from .output import merge_manifests
    from .storage import redact_url

    _configure_storage(storage_option)
    _existing_output(output)

    path, problems = merge_manifests(output)
    if problems:
        click.echo(f"cannot merge {redact_url(output)}: {len(problems)} problem(s):", err=True)
        for problem in problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(int(ExitCode.VERIFY_FAILED))
    click.echo(f"merged into {redact_url(path)}", err=True)


@main.command(context_settings=CONTEXT)
@click.option("--model", envvar="MINILM_MODEL", help="As for embed. [env MINILM_MODEL]")
@click.option("--device", envvar="MINILM_DEVICE", default="auto", show_default=True, help="As for embed.")
@click.option(
    "--precision", envvar="MINILM_PRECISION", default="auto", show_default=True, help="As for embed."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@storage_option
@handle_errors
def info(
    model: str | None, device: str, precision: str, as_json: bool, storage_option: tuple[str, ...]
) -> None:
    """The model, its dim, max length and pooling, the device and precision auto picks, and versions."""
    from .model import Embedder

    _configure_storage(storage_option)  # checked like embed's; its values are never shown

    embedder = Embedder(model=model, device=device, precision=precision)
    data = embedder.info()
    data["versions"] = _versions()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    m = data["model"]
    click.echo(f"model       {m['name']} ({m['source']}: {m['path']})")
    click.echo(f"weights     {m['weights_file']} sha256 {m['weights_sha256']}")
    click.echo(f"dim         {data['dim']}")
    click.echo(f"max length  {data['max_length']}")
    click.echo(f"pooling     {data['pooling']}{', normalized' if data['normalize'] else ''}")
    click.echo(f"device      {data['device']}")
    click.echo(f"precision   {data['precision']}")
    click.echo(f"kernels     {data['kernels']}")
    click.echo("versions    " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))


def _versions() -> dict[str, str]:
    import platform

    import pyarrow
    import tokenizers
    import torch
    import transformers

    return {
        "minilm-cli": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "pyarrow": pyarrow.__version__,
    }


if __name__ == "__main__":
    main()
