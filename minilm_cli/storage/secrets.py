"""Storage options and keeping secrets out of every line we print or store."""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import InputError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SENSITIVE_NAME = re.compile(r"(sig|token|key|secret|pass|credential|auth|session)", re.I)
_KEY_ID = re.compile(r"\b(AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)


def scheme_of(location: str | os.PathLike[str] | None) -> str | None:
    """The URL scheme (lower case), or None for a plain path."""
    if location is None:
        return None
    m = _SCHEME.match(os.fspath(location))
    return m.group(1).lower() if m else None


# -- secrets


def redact_url(url: str) -> str:
    """``url`` without user info and with credential-like query values replaced by ***."""
    url = os.fspath(url)
    m = _SCHEME.match(url)
    if not m:
        return url
    rest = url[m.end() :]
    before_query = rest.split("?", 1)[0]
    userinfo, at, _ = before_query.rpartition("@")
    # user:password@host (a password may hold an unencoded '/'); hf://repo@revision is no user info
    if at and (":" in userinfo or "/" not in userinfo):
        rest = "***@" + rest[len(userinfo) + 1 :]
    netloc, slash, path = rest.partition("/")
    path, q, query = path.partition("?")
    if q:
        parts = []
        for item in query.split("&"):
            name, eq, _ = item.partition("=")
            parts.append(f"{name}=***" if eq and _SENSITIVE_NAME.search(name) else item)
        query = "&".join(parts)
    return f"{m.group(0)}{netloc}{slash}{path}{q}{query}"


def _secret_values(options: dict[str, Any] | None) -> list[str]:
    values: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, str) and len(v) >= 4:
            values.append(v)

    walk(options or {})
    values += [os.environ[n] for n in _SECRET_ENV if len(os.environ.get(n, "")) >= 4]
    return sorted(set(values), key=len, reverse=True)


def redact(text: str, options: dict[str, Any] | None = None) -> str:
    """``text`` with every storage-option value, secret environment value, URL credential
    and AWS key id replaced by ***."""
    for value in _secret_values(options):
        text = text.replace(value, "***")
    text = _KEY_ID.sub("***", text)
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), text)


# -- options


def parse_storage_options(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """``--storage-option KEY=VALUE`` (repeatable) as fsspec keyword arguments.

    true/false become booleans, integers and floats numbers, everything else stays text.
    A dotted key nests: ``client_kwargs.region_name=eu-west-1``. Errors name the key,
    never the value (it may be a secret).
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            shown = key if eq else "(no '=')"
            raise InputError(f"--storage-option expects KEY=VALUE, got {shown!s}")
        target = out
        *parents, leaf = key.split(".")
        for p in parents:
            nested = target.setdefault(p, {})
            if not isinstance(nested, dict):
                raise InputError(f"--storage-option {key}: {p} is given both as a value and as a group")
            target = nested
        target[leaf] = _parse_value(raw)
    return out


def _parse_value(raw: str) -> Any:
    low = raw.strip().lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


# -- errors
