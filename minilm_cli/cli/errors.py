"""Every failure as one line on stderr and a documented exit code, never a traceback."""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from ..errors import ExitCode, Interrupted, MinilmError


def one_line(message: str) -> str:
    """A message must stay one printable line whatever a path, a column name or a CSV header
    holds: everything not printable (line breaks \\n, \\x85, \\u2028 ..., control characters,
    undecodable bytes) is written as its escape. The data in it is already cut (errors.shown)."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def fail(message: str, code: int) -> None:
    from ..storage import redact, storage_options

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
    # pipeline.to_directory counts OUTPUT's finished shards: with none, --resume has nothing to keep
    if getattr(exc, "finished_shards", 0):
        return f"{reason}{where}; finished shards are kept: fix this and rerun with --resume"
    return f"{reason}{where}"


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
