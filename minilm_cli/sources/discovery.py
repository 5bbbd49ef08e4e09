"""Finding the inputs: files, directories, globs and stdin, with format and compression
from the file name. Every file-system look goes through ``minilm_cli.storage``."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import replace

from ..errors import InputError
from ..storage import is_remote, storage_for
from .rows import FORMATS, InputFile

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json-lines": "jsonl",
    ".parquet": "parquet",
    ".txt": "txt",
}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".xz": "xz"}
TSV_QUOTING = ("csv", "none")
MANIFEST_NAME = re.compile(r"^manifest(-\d+-of-\d+)?\.json$")

Log = Callable[[str], None]


def split_extension(path: str) -> tuple[str | None, str | None]:
    """Return (format, compression) guessed from a file name, either may be None."""
    name = os.path.basename(path).lower()
    compression = None
    for ext, codec in COMPRESSIONS.items():
        if name.endswith(ext):
            compression, name = codec, name[: -len(ext)]
            break
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt, compression
    return None, compression


def resolve_inputs(
    patterns: list[str] | str,
    input_format: str | None = None,
    exclude: list[str] | None = None,
    log: Log | None = None,
    tsv_quoting: str = "csv",
) -> list[InputFile]:
    """Expand files, globs and directories into a sorted, de-duplicated list of inputs.

    A path that exists is taken literally, before any glob expansion. Inside a directory
    or a glob, the paths in ``exclude`` (the run's OUTPUT) and every folder that holds a
    minilm manifest are never inputs; each file passed over is told to ``log``, one line
    each (hidden files are passed over silently). ``tsv_quoting``: ``csv`` (quotes quote, as
    in CSV) or ``none`` (quotes are text) for the TSV inputs."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise InputError("no INPUT given: name files, globs, directories or - for stdin")
    if "-" in patterns and len(patterns) > 1:
        raise InputError("- (stdin) cannot be combined with other inputs")
    tell = log or (lambda message: None)
    fence = _Fence(exclude or [])
    paths: list[str] = []
    for pattern in patterns:
        paths.extend(_expand(pattern, input_format, fence, tell))
    if tsv_quoting not in TSV_QUOTING:
        raise InputError(f"tsv_quoting {tsv_quoting!r}: use one of {', '.join(TSV_QUOTING)}")
    quoting = tsv_quoting == "csv"
    return [replace(_describe(p, input_format), quoting=quoting) for p in dict.fromkeys(paths)]


class _Fence:
    """Which paths a directory walk or glob must pass over: the OUTPUT being written and
    any folder holding a minilm manifest (an earlier run's output)."""

    def __init__(self, exclude: list[str]) -> None:
        self.exclude = [_real(p) for p in exclude if p and p != "-"]

    def blocked_by(self, path: str, manifest_dirs: list[str]) -> str | None:
        real = _real(path)
        for folder in self.exclude:
            if _inside(real, folder):
                return "it is inside OUTPUT"
        for folder in manifest_dirs:
            if _inside(real, folder):
                return f"{os.path.dirname(path) or '.'} holds a minilm manifest (name it to read it)"
        return None


def _real(path: str) -> str:
    return storage_for(path).real_path(path)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _expand(pattern: str, input_format: str | None, fence: _Fence, log: Log) -> list[str]:
    if pattern == "-":
        return ["-"]
    store = storage_for(pattern)
    if store.is_dir(pattern):
        return _walk(pattern, input_format, fence, log)
    if store.exists(pattern) or not glob.has_magic(pattern):
        problem = store.file_problem(pattern)
        if problem == "not found":
            raise InputError(f"input not found: {pattern}")
        if problem:
            raise InputError(f"input {pattern}: {problem}")
        return [pattern]
    found = _filter(store.glob(pattern), input_format, fence, log, named=False)
    if not found:
        raise InputError(f"no files match {pattern}")
    return found


def _walk(folder: str, input_format: str | None, fence: _Fence, log: Log) -> list[str]:
    store = storage_for(folder)
    names = store.walk_files(folder)
    skipped: list[str] = []
    found = _filter(names, input_format, fence, skipped.append, named=True, root=folder)
    if not found:
        more = f" (skipped {len(skipped)}: {skipped[0]})" if skipped else ""
        raise InputError(f"no supported input files in directory {folder}{more}")
    for line in skipped:
        log(line)
    return found


def _filter(
    paths: list[str], input_format: str | None, fence: _Fence, log: Log, named: bool, root: str = ""
) -> list[str]:
    # A folder named explicitly may itself hold a manifest (the user asked for it): only
    # manifest folders below it are passed over.
    manifest_dirs = [
        _real(os.path.dirname(p))
        for p in paths
        if MANIFEST_NAME.match(os.path.basename(p)) and (not root or _real(os.path.dirname(p)) != _real(root))
    ]
    found = []
    for path in paths:
        name = os.path.basename(path)
        reason = fence.blocked_by(path, manifest_dirs)
        if reason is None and name.startswith("."):
            continue  # hidden: temp files, editors' swap files, .DS_Store
        if reason is None and not (input_format or split_extension(name)[0]):
            reason = "not a supported input format (by its extension)"
        if reason is None:
            problem = storage_for(path).file_problem(path)
            if problem is not None:  # a broken link or an unreadable file is not ours to skip silently
                raise InputError(f"input {path}: {problem}")
        if reason is not None:
            log(f"skipped {path}: {reason}")
            continue
        found.append(path)
    return found


def _describe(path: str, input_format: str | None) -> InputFile:
    if path == "-":
        return InputFile("-", input_format or "auto")
    fmt, compression = split_extension(path)
    fmt = input_format or fmt
    if fmt is None:
        raise InputError(f"cannot tell the format of {path}: use --input-format {'|'.join(FORMATS)}")
    if fmt == "parquet" and compression:
        raise InputError(f"{path}: Parquet is compressed inside the file; decompress it first")
    info = storage_for(path).info(path)
    if info is None:
        raise InputError(f"input not found: {path}")
    remote = is_remote(path)
    return InputFile(path, fmt, compression, info.size, info.mtime_ns, info.fingerprint if remote else None)
