"""Which file an input names, however it is spelled: its canonical key.

``data/inc.csv``, ``./data/inc.csv``, ``/home/me/data/inc.csv`` and ``link/inc.csv`` (a
symlinked folder) are one file, and --append, --resume and the job-array checks must see one
file: the manifest records each input under its key, and every comparison is by key.

* Locally the key is ``os.path.realpath``: absolute, ``.``/``..`` and symlinks resolved.
* On a store it is the URL normalised: scheme lower-cased, bucket/host as written, repeated
  slashes and ``./`` segments collapsed, no trailing slash, credentials redacted. Stores have
  no symlinks; ``s3://b//x.csv`` and ``s3://b/x.csv`` are the same input (discovery opens the
  normalised URL, so a key that really holds ``//`` cannot be named).
"""

from __future__ import annotations

import os
import re

from .secrets import redact_url, scheme_of

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def normalize_url(url: str) -> str:
    """``url`` with a lower-case scheme, no empty or ``.`` path segments and no trailing
    slash; the bucket (or host) and the query are kept as written. A plain path is unchanged."""
    m = _SCHEME.match(url)
    if not m:
        return url
    rest = url[m.end() :]
    rest, q, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    segments = [s for s in path.split("/") if s not in ("", ".")]
    tail = "/" + "/".join(segments) if segments else ""
    return f"{m.group(1).lower()}://{netloc}{tail}{q}{query}"


def input_key(location: str | os.PathLike[str]) -> str:
    """The canonical key of an input (see the module docstring); ``-`` (stdin) is itself.
    A relative local path is taken against the current working directory."""
    text = os.fspath(location)
    if text == "-":
        return text
    scheme = scheme_of(text)
    if scheme is None:
        return os.path.realpath(text)
    if scheme == "file":
        return os.path.realpath(text[len("file://") :])
    return normalize_url(redact_url(text))
