"""Errors the CLI turns into one line on stderr and a documented exit code."""

from __future__ import annotations

import enum


def shown(value: object, limit: int = 80) -> str:
    """Data quoted into an error line (a header, a value, a parser's message about them): every
    character that is not printable as an escape (``\\x00``, ``\\udcff``), and at most ``limit``
    characters, cut with an ellipsis, so that a binary file read as text stays one short line."""
    out: list[str] = []
    used = 0
    for ch in str(value):
        piece = ch if ch.isprintable() else repr(ch)[1:-1]
        if used + len(piece) > limit:
            out.append("…")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


class ExitCode(enum.IntEnum):
    """Exit codes, documented in the README; scripts may rely on them."""

    OK = 0
    RUNTIME_FAILURE = 1  # disk full, permission denied, model crash: finished shards stay valid
    INPUT_ERROR = 2  # bad flags, missing file or column, unknown format, unreadable model, bad row
    OUTPUT_CONFLICT = 3  # OUTPUT exists, is locked by another run, or --resume does not match
    VERIFY_FAILED = 4  # `minilm verify` found a problem
    BROKEN_PIPE = 141  # stdout's reader closed the pipe (`-o - | head`); 128 + SIGPIPE, as shells report
    INTERRUPTED_SIGINT = 130
    INTERRUPTED_SIGTERM = 143


class MinilmError(Exception):
    """An error with a message fit for one line on stderr."""

    exit_code: ExitCode = ExitCode.RUNTIME_FAILURE

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(MinilmError):
    """The user's input or flags are wrong; rerunning unchanged will fail again."""

    exit_code = ExitCode.INPUT_ERROR


class BadRowError(InputError):
    """A row that cannot be embedded, under --on-error fail."""


class OutputConflict(MinilmError):
    """The output directory cannot be used as asked (exists, locked, or mismatched on resume)."""

    exit_code = ExitCode.OUTPUT_CONFLICT


class OutputInUse(OutputConflict):
    """Another run holds the output's lock (a caller may wait for it rather than give up)."""


class Interrupted(MinilmError):
    """SIGINT or SIGTERM arrived; finished shards are kept."""

    def __init__(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        code = ExitCode.INTERRUPTED_SIGINT if name == "SIGINT" else ExitCode.INTERRUPTED_SIGTERM
        super().__init__(f"interrupted by {name}", code)
        self.signum = signum
