"""--dtype, --truncate-dim, --calibration, --ranges: one run's StoredForm, and the model stage
that applies it.

int8/uint8 ranges are fixed before the first shard, in this order of preference:
``--ranges`` (an earlier output), ``--calibration`` (texts of any input format), the ranges
this OUTPUT already records (--resume, --append, another part of a job array), else the
packaged calibration texts. The ranges then go in the manifest's settings, so every later
shard, part, generation and resume is held to them (a different one is refused there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

from ..config import STORED_DTYPES, EmbedConfig
from ..errors import InputError, MinilmError, shown
from ..model import Embedder
from ..model.quantize import SCALAR, StoredForm, calibrate
from .stages import ModelStage

CALIBRATION_BLOCK = 1024  # texts embedded at a time while calibrating (bounded memory)


def check_stored(cfg: EmbedConfig, embedder: Embedder | None = None) -> None:
    """The flags alone (and, with the model, --truncate-dim against its dim)."""
    if cfg.dtype not in STORED_DTYPES:
        raise InputError(f"dtype {cfg.dtype!r}: use one of {', '.join(STORED_DTYPES)}")
    if (cfg.ranges or cfg.calibration) and cfg.dtype not in SCALAR:
        flag = "--ranges" if cfg.ranges else "--calibration"
        raise InputError(f"{flag} is for --dtype int8 or uint8, not {cfg.dtype}")
    if cfg.ranges and cfg.calibration:
        raise InputError("--ranges and --calibration both fix the int8 ranges; pass one")
    if cfg.truncate_dim is not None and cfg.truncate_dim < 1:
        raise InputError("--truncate-dim must be at least 1")
    if embedder is not None and cfg.truncate_dim is not None and cfg.truncate_dim > embedder.dim:
        raise InputError(f"--truncate-dim {cfg.truncate_dim} is more than the model's dim, {embedder.dim}")


def stored_form(
    cfg: EmbedConfig, embedder: Embedder, log: Callable[[str], None], own_output: bool = True
) -> StoredForm:
    """The run's StoredForm; int8/uint8 ranges resolved (see the module docstring).
    ``own_output``: OUTPUT may hold ranges to keep (read under this writer's lock only)."""
    form = StoredForm(embedder.dim, cfg.dtype, cfg.truncate_dim, embedder.normalize)
    if cfg.dtype not in SCALAR:
        return form
    if cfg.ranges:
        form.ranges = ranges_of_output(cfg.ranges, form.dim, f"--ranges {shown(cfg.ranges)}")
    elif cfg.calibration:
        form.ranges = calibrated(embedder, form, calibration_blocks(cfg.calibration, cfg.text_column))
    elif own_output and (cfg.resume or cfg.append or cfg.num_shards > 1) and not cfg.overwrite:
        form.ranges = recorded_ranges(cfg.output, form.dim)
    if form.ranges is None:
        from ..model.int8 import calibration_texts

        form.ranges = calibrated(embedder, form, iter([calibration_texts()]))
    return form


def calibrated(embedder: Embedder, form: StoredForm, blocks: Iterator[list[str]]) -> np.ndarray:
    tracker = calibrate(embedder, blocks, form.dim, form.normalize)
    if tracker.rows < 2:
        raise InputError(f"--calibration: {tracker.rows} texts; int8 ranges need at least 2 (ideally 1000s)")
    return tracker.ranges()


def calibration_blocks(path: str, text_column: str) -> Iterator[list[str]]:
    """The texts of ``path`` (any input format, as for embed; bad rows are skipped), in blocks."""
    from ..sources import Columns, check_rows, read_file, resolve_inputs

    for f in resolve_inputs([path]):
        if f.is_stdin:
            raise InputError("--calibration needs a file, not stdin")
        for raw in read_file(f, Columns(text_column), CALIBRATION_BLOCK, "replace"):
            yield check_rows(raw, 0, "replace", "skip").texts


def ranges_of_output(path: str, dim: int, name: str) -> np.ndarray:
    """The ranges an earlier output recorded: ``path`` is its manifest.json or its folder."""
    from ..output import Manifest, find_manifests
    from ..storage import storage_for

    paths = [path] if path.endswith(".json") else find_manifests(path)
    if not paths or not storage_for(paths[0]).exists(paths[0]):
        raise InputError(f"{name}: no manifest.json there (pass an earlier output or its manifest)")
    try:
        settings = Manifest.load(paths[0]).doc.get("settings", {})
    except MinilmError as exc:
        raise InputError(f"{name}: {exc}") from None
    if settings.get("ranges") is None:
        raise InputError(f"{name}: that output records no int8 ranges (its dtype is {settings.get('dtype')})")
    return checked_ranges(settings["ranges"], dim, name)


def recorded_ranges(root: str, dim: int) -> np.ndarray | None:
    """The ranges OUTPUT's manifests already record (this part's, the merged one, then any
    other part's), or None when none does."""
    from ..output import Manifest
    from ..output.manifest import find_manifests, manifest_parts
    from ..storage import storage_for

    storage = storage_for(root)
    try:
        paths = find_manifests(root, storage) + manifest_parts(root, storage)
    except (OSError, MinilmError):  # no OUTPUT yet (a prefix on a store need not "exist")
        return None
    for path in dict.fromkeys(paths):
        try:
            ranges = Manifest.load(path, storage).doc.get("settings", {}).get("ranges")
        except MinilmError:
            continue  # a damaged part is reported by its own run, not here
        if ranges is not None and len(ranges) == 2 and len(ranges[0]) == dim:
            return checked_ranges(ranges, dim, os.path.basename(path))
    return None


def checked_ranges(value: object, dim: int, name: str) -> np.ndarray:
    try:
        ranges = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{name}: its ranges are not a 2 x dim list of numbers") from None
    if ranges.ndim != 2 or ranges.shape[0] != 2 or not np.isfinite(ranges).all():
        raise InputError(f"{name}: its ranges are not a 2 x dim list of finite numbers")
    if ranges.shape[1] != dim:
        raise InputError(f"{name}: ranges of {ranges.shape[1]} dims, this run stores {dim}")
    return ranges


def store_stage(form: StoredForm) -> ModelStage:
    """The model stage that turns each chunk's float32 rows into their stored form."""

    def stage(embedded: Iterator) -> Iterator:
        for chunk, vectors in embedded:
            yield chunk, form.apply(vectors)

    return stage
