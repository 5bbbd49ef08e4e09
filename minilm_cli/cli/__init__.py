"""The `minilm` command line: ``commands`` (the Click group and its commands), ``options``
(the flags and their checks), ``errors`` (one line on stderr, a documented exit code),
``entry`` (``run``, the console script: leaves with that exit code)."""

from __future__ import annotations

from .commands import main
from .entry import run
from .errors import fail, handle_errors, one_line

__all__ = ["fail", "handle_errors", "main", "one_line", "run"]
