"""The process's way out: the console script ``minilm`` and ``python -m minilm_cli.cli``.

``main`` (the Click group) decides the exit code; this hands it to the operating system
with ``os._exit`` once everything of ours is finished. Why not a normal interpreter exit:
native libraries keep pools of C++ threads (Arrow's CPU and I/O pools, torch's, the
tokenizers'), and work they still hold can release a Python-backed buffer after the
command has returned. During interpreter shutdown such a thread's request for the GIL
ends it inside a C++ destructor, and the process aborts (``terminate called without an
active exception``, exit 134) after having printed its result. Under load this happened to
about one ``minilm verify`` in twenty. Leaving with ``os._exit`` after our own clean-up
skips interpreter shutdown, so no native thread can run into it, and the exit code is the
one the command chose.

CliRunner tests call ``main`` in-process and never come here.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import NoReturn

from ..errors import ExitCode
from .commands import main

OWN_THREAD_GRACE_S = 10.0  # a daemon of ours still alive here is stuck on I/O; it dies with the process


def run() -> NoReturn:
    """Run ``minilm`` with the process's arguments and leave with its documented exit code."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = _exit_status(exc.code)
    os._exit(_finish(code))


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"), as the interpreter would print it
    return 1


def _finish(code: int) -> int:
    """What the interpreter's own exit would do for us, short of shutting the runtime down:
    wait for our threads (the pipeline joins its own; a prefetch or lease thread gets a
    moment) and for threads that are not daemons, finalize what is unreachable (an
    unclosed file is flushed and closed, on this thread), run atexit handlers (spawned
    workers), flush stdout and stderr. A reader of stdout that went away is exit 141."""
    for thread in threading.enumerate():
        if thread is threading.current_thread():
            continue
        if not thread.daemon:
            thread.join()
        elif thread.name.startswith("minilm-"):
            thread.join(timeout=OWN_THREAD_GRACE_S)
    gc.collect()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or int(ExitCode.BROKEN_PIPE)
    except (OSError, ValueError):
        code = code or int(ExitCode.RUNTIME_FAILURE)
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return code
