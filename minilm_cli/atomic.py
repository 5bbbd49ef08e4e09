"""Crash-safe file steps: a file is either absent or complete, never half there."""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def temp_path(final: Path) -> Path:
    """Hidden (dot-prefixed) so pyarrow.dataset, DuckDB globs and Polars skip it."""
    return final.with_name(f".{final.name}{TMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """fsync the finished temp file, rename it into place, and make the rename durable."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_atomic(final: Path, data: bytes) -> None:
    tmp = temp_path(final)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete what an interrupted run left half-written; return what was removed."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.rglob(f".*{TMP_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
