"""A store's exceptions as the one-line errors a user can act on (never with a secret in them)."""

from __future__ import annotations

from typing import Any

from ..errors import InputError, MinilmError
from .secrets import _SCHEME, redact, redact_url


def error_code(exc: BaseException) -> str | None:
    """The store's error code (``NoSuchBucket``, ``AccessDenied``...) behind ``exc``, if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
        e = e.__cause__ or e.__context__
    return None


_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "403",
}


def translate(exc: BaseException, url: str, options: dict[str, Any] | None = None) -> BaseException:
    """One line the CLI can print for a store error: InputError (exit 2) for what the user must
    fix (credentials, bucket, missing extra), MinilmError (exit 1) for the store failing.
    FileNotFoundError for a missing object passes through (callers decide what that means)."""
    if isinstance(exc, MinilmError):
        return exc
    where = redact_url(url)
    code = error_code(exc)
    if code in _CREDENTIAL_CODES or (code is None and isinstance(exc, PermissionError)):
        return InputError(
            f"access denied to {where}: check the credentials (environment, profile or "
            f"--storage-option) [{code or 'PermissionError'}]"
        )
    if code == "NoSuchBucket":
        return InputError(f"bucket not found: {_bucket_url(url)}")
    if code is None and _chain_has(exc, ("NoCredentialsError", "PartialCredentialsError")):
        return InputError(f"no credentials found for {where}: set them in the environment or a profile")
    if isinstance(exc, FileNotFoundError):
        return exc
    detail = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, options)
    return MinilmError(f"storage error on {where}: {type(exc).__name__}: {detail}")


def _chain_has(exc: BaseException, names: tuple[str, ...]) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in names:
            return True
        e = e.__cause__ or e.__context__
    return False


def _bucket_url(url: str) -> str:
    m = _SCHEME.match(url)
    if not m:
        return url
    return m.group(0) + url[m.end() :].split("/", 1)[0]


# -- the file system
