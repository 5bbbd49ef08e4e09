"""The `minilm` commands: flags in, an EmbedConfig out. Everything real happens in
pipeline.run_job (and output.verify_output, output.merge_manifests); this only translates."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import __version__
from ..config import EmbedConfig
from ..errors import ExitCode
from .errors import OneLineErrors, handle_errors
from .options import (
    check_output,
    check_output_exists,
    configure_storage_options,
    embed_options,
    split_columns,
    storage_option,
)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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
@embed_options
@handle_errors
def embed(inputs: tuple[str, ...], output: str, **opts: Any) -> None:
    """Embed the text of INPUT... (files, globs, directories, or - for stdin) into OUTPUT.

    Writes OUTPUT/part-00000.parquet, ... (or embeddings/*.npy and metadata/*.parquet with
    --format npy) and OUTPUT/manifest.json. Exit codes: 0 done, 1 runtime failure,
    2 bad input or flags, 3 OUTPUT conflict, 130/143 interrupted, 141 stdout closed (-o - | head).
    """
    from ..pipeline import run_job
    from ..workers import parse_devices, run_on_devices

    configure_storage_options(opts["storage_option"])
    cfg = config_from_options(inputs, output, opts)
    if opts["engine"] == "ray":
        from ..ray import run_ray_job

        run_ray_job(
            cfg,
            address=opts["ray_address"],
            concurrency=opts["concurrency"],
            gpus_per_worker=opts["gpus_per_worker"],
        )
        return
    if opts["engine"] == "spark":
        from ..spark import run_spark_job

        run_spark_job(cfg, master=opts["spark_master"], parts=opts["spark_parts"])
        return
    devices = parse_devices(cfg.device)
    if devices:
        result = run_on_devices(cfg, devices)
        if not cfg.quiet:
            click.echo(f"{result['workers']} device workers done; manifest {result['manifest']}", err=True)
        return
    run_job(cfg)


def config_from_options(inputs: tuple[str, ...], output: str, opts: dict[str, Any]) -> EmbedConfig:
    """The flags of `minilm embed` as the job description the pipeline reads."""
    from ..sharding import shard_from_env
    from ..sources import parse_column_types

    num_shards, shard_index = shard_from_env(opts["num_shards"], opts["shard_index"])
    return EmbedConfig(
        inputs=list(inputs),
        output=output,
        input_format=opts["input_format"],
        tsv_quoting=opts["tsv_quoting"],
        text_column=opts["text_column"],
        id_column=opts["id_column"],
        keep_columns=split_columns(opts["keep_columns"]),
        column_types=parse_column_types(opts["column_types"]),
        model=opts["model"],
        pooling=opts["pooling"],
        layer=opts["layer"],
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
        truncate_dim=opts["truncate_dim"],
        calibration=opts["calibration"],
        ranges=opts["ranges"],
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
        host_workers=opts["host_workers"],
        num_shards=num_shards,
        shard_index=shard_index,
    )


@main.command(context_settings=CONTEXT)
@click.argument("output", callback=check_output)
@storage_option
@handle_errors
def verify(output: str, storage_option: tuple[str, ...]) -> None:
    """Check OUTPUT against its manifest: every shard present, checksums, row counts, dim,
    no NaN/Inf, unique ids, each shard's key file, and rows taken from --reuse outputs
    (byte copies of theirs). Exit 0 when sound, 4 with a report when not."""
    from ..output import verify_output

    configure_storage_options(storage_option)
    check_output_exists(output)

    report = verify_output(output)
    click.echo(report.text())
    if not report.ok:
        sys.exit(int(ExitCode.VERIFY_FAILED))


@main.command("merge-manifests", context_settings=CONTEXT)
@click.argument("output", callback=check_output)
@storage_option
@handle_errors
def merge_manifests_command(output: str, storage_option: tuple[str, ...]) -> None:
    """Check that the manifest parts of a sharded run (manifest-I-of-N.json) cover the whole
    input once, share their settings, are complete and have every listed file, then write one
    OUTPUT/manifest.json. Exit 4 when not."""
    from ..output import merge_manifests
    from ..storage import redact_url

    configure_storage_options(storage_option)
    check_output_exists(output)

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
    from ..model import Embedder

    configure_storage_options(storage_option)  # checked like embed's; its values are never shown

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
    click.echo(f"why         {data['precision_reason']}")
    click.echo(f"kernels     {data['kernels']}")
    click.echo("versions    " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    import pyarrow
    import tokenizers
    import torch

    return {
        "minilm-cli": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),  # without importing it: seconds per process
        "tokenizers": tokenizers.__version__,
        "pyarrow": pyarrow.__version__,
    }


if __name__ == "__main__":
    main()
