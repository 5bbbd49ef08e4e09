"""Finding the inputs: files, directories, globs and stdin, with format and compression
from the file name. Every file-system look goes through ``minilm_cli.storage``."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import replace

from ..errors import InputError
from ..storage import input_key, is_remote, normalize_url, storage_for
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
    """Expand files, globs and directories into a list of inputs, each file once.

    A path that exists is taken literally, before any glob expansion. Inside a directory
    or a glob, the paths in ``exclude`` (the run's OUTPUT), every folder that holds a
    minilm manifest, hidden folders and files, and files of no supported format are never
    inputs; each is told to ``log``, one line per file or whole folder passed over. A file
    named again under any spelling (``x.csv ./x.csv``, a glob and a name, a symlink and
    its target: the same ``input_key``) is read once, at its first place, with one note.
    ``tsv_quoting``: ``csv`` (quotes quote, as in CSV) or ``none`` (quotes are text) for the
    TSV inputs."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise InputError("no INPUT given: name files, globs, directories or - for stdin")
    if "-" in patterns and len(patterns) > 1:
        raise InputError("- (stdin) cannot be combined with other inputs")
    if tsv_quoting not in TSV_QUOTING:
        raise InputError(f"tsv_quoting {tsv_quoting!r}: use one of {', '.join(TSV_QUOTING)}")
    tell = log or (lambda message: None)
    fence = _Fence(exclude or [])
    once = _Once()
    for given in patterns:
        # On a store, the normalised URL is what is opened: ``s3://b//x`` names ``s3://b/x``.
        pattern = normalize_url(given) if is_remote(given) else given
        if pattern != "-" and storage_for(pattern).is_dir(pattern):
            if once.add(pattern, given, folder=True):  # the same folder again: one note, not one a file
                for path in _walk(pattern, input_format, fence, tell):
                    once.add(path, path)
            continue
        paths = _expand(pattern, input_format, fence, tell)
        for path in paths:
            once.add(path, given if paths == [pattern] else path)
    for note in once.notes():
        tell(note)
    quoting = tsv_quoting == "csv"
    return [replace(_describe(p, input_format), quoting=quoting) for p in once.paths]


class _Once:
    """Each input at its first place, keyed by ``input_key``; the later spellings, for one note."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[str, str]] = {}  # key -> (path, as given)
        self.again: dict[str, list[str]] = {}
        self.folders: set[str] = set()

    def add(self, path: str, shown: str, folder: bool = False) -> bool:
        """False when ``path`` is an input already (or a folder already walked)."""
        key = input_key(path)
        if key in self.first:
            self.again.setdefault(key, []).append(shown)
            return False
        self.first[key] = (path, shown)
        if folder:
            self.folders.add(key)
        return True

    @property
    def paths(self) -> list[str]:
        """The files, in order (not the folders they were found in)."""
        return [path for key, (path, _) in self.first.items() if key not in self.folders]

    def notes(self) -> list[str]:
        lines = []
        for key, later in self.again.items():
            first = self.first[key][1]
            times = "twice" if len(later) == 1 else f"{len(later) + 1} times"
            other = [s for s in dict.fromkeys(later) if s != first]
            spelled = f" (as {', '.join(other)})" if other else ""
            lines.append(f"minilm: note: {first} given {times}{spelled}: read once")
        return lines


class _Fence:
    """Which paths a directory walk or glob must pass over: the OUTPUT being written and
    any folder holding a minilm manifest (an earlier run's output)."""

    def __init__(self, exclude: list[str]) -> None:
        self.exclude = [_real(p) for p in exclude if p and p != "-"]

    def blocked_by(self, path: str, manifest_dirs: list[str]) -> tuple[str, str] | None:
        """(the folder that is passed over, as spelled in ``path``; why), or None."""
        real = _real(path)
        for folder in self.exclude:
            if _inside(real, folder):
                return _spelled(path, folder), "it is this run's OUTPUT"
        for folder in manifest_dirs:
            if _inside(real, folder):
                return _spelled(path, folder), "an earlier minilm output (name it to read it)"
        return None


def _real(path: str) -> str:
    return storage_for(path).real_path(path)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _spelled(path: str, real_folder: str) -> str:
    """The folder above ``path`` whose real path is ``real_folder``, in ``path``'s spelling."""
    folder = path
    while os.path.dirname(folder) not in ("", folder):
        folder = os.path.dirname(folder)
        if _real(folder) == real_folder:
            return folder
    return real_folder


UNSUPPORTED = "not a supported input format (by its extension)"


class _Skipped:
    """What a walk or glob passed over: one entry per file or whole folder, with its reason."""

    SHOWN = 3  # entries an error line names before "and N more"

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}

    def add(self, shown: str, reason: str) -> None:
        self.entries.setdefault(shown, reason)

    def tell(self, log: Log) -> None:
        for shown, reason in self.entries.items():
            log(f"skipped {shown}: {reason}")

    def summary(self) -> str:
        """`` (skipped 2: a.md: why; .b.txt: hidden)`` for an error line; empty when none."""
        if not self.entries:
            return ""
        named = [f"{shown}: {reason}" for shown, reason in list(self.entries.items())[: self.SHOWN]]
        more = len(self.entries) - len(named)
        hint = ""
        if UNSUPPORTED in self.entries.values():  # e.g. /usr/share/common-licenses: text without .txt
            hint = "; --input-format txt (or csv, tsv, jsonl, parquet) reads files whatever their extension"
        return (
            f" (skipped {len(self.entries)}: {'; '.join(named)}{f'; and {more} more' if more else ''}){hint}"
        )


def _expand(pattern: str, input_format: str | None, fence: _Fence, log: Log) -> list[str]:
    """A file (taken literally when it exists) or a glob; folders are walked by ``_walk``."""
    if pattern == "-":
        return ["-"]
    store = storage_for(pattern)
    if store.exists(pattern) or not glob.has_magic(pattern):
        problem = store.file_problem(pattern)
        if problem == "not found":
            raise InputError(f"input not found: {pattern}")
        if problem:
            raise InputError(f"input {pattern}: {problem}")
        return [pattern]
    skipped = _Skipped()
    found = _filter(store.glob(pattern), input_format, fence, skipped, _glob_root(pattern), named=False)
    if not found:
        raise InputError(f"no files match {pattern}{skipped.summary()}")
    skipped.tell(log)
    return found


def _walk(folder: str, input_format: str | None, fence: _Fence, log: Log) -> list[str]:
    skipped = _Skipped()
    found = _filter(storage_for(folder).walk_files(folder), input_format, fence, skipped, folder, named=True)
    if not found:
        raise InputError(f"no supported input files in directory {folder}{skipped.summary()}")
    skipped.tell(log)
    return found


def _glob_root(pattern: str) -> str:
    """The folder a glob searches below: its path before the first wildcard."""
    head = pattern
    while glob.has_magic(head):
        head = os.path.dirname(head)
    return head


def _filter(
    paths: list[str], input_format: str | None, fence: _Fence, skipped: _Skipped, root: str, named: bool
) -> list[str]:
    """The inputs among ``paths`` (found below ``root``); the rest go to ``skipped``."""
    # A folder named explicitly may itself hold a manifest (the user asked for it): only
    # manifest folders below it are passed over. Outermost first: one line for the output.
    manifest_dirs = {_real(os.path.dirname(p)) for p in paths if MANIFEST_NAME.match(os.path.basename(p))}
    if named:
        manifest_dirs.discard(_real(root))
    fenced = sorted(manifest_dirs, key=len)
    found = []
    for path in paths:
        name = os.path.basename(path)
        where = fence.blocked_by(path, fenced) or _hidden_folder(path, root)
        if where is None and name.startswith("."):
            where = path, "hidden"  # temp files, editors' swap files, .DS_Store
        if where is None and not (input_format or split_extension(name)[0]):
            where = path, UNSUPPORTED
        if where is not None:
            skipped.add(*where)
            continue
        problem = storage_for(path).file_problem(path)
        if problem is not None:  # a broken link or an unreadable file is not ours to skip silently
            raise InputError(f"input {path}: {problem}")
        found.append(path)
    return found


def _hidden_folder(path: str, root: str) -> tuple[str, str] | None:
    """The first hidden folder between ``root`` and ``path`` (.git, .cache), if any."""
    sep = "/" if is_remote(path) else os.sep
    base = root.rstrip(sep) + sep if root else ""
    if not path.startswith(base):
        return None
    parts = path[len(base) :].split(sep)[:-1]
    for depth, part in enumerate(parts):
        if part.startswith(".") and part not in (".", ".."):
            return base + sep.join(parts[: depth + 1]), "hidden folder"
    return None


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
