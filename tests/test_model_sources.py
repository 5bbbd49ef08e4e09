"""Where the weights come from: packaged (sha256-checked), a local folder, a hub id via the cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from minilm_cli.cli import main
from minilm_cli.devices import usable_cpus
from minilm_cli.errors import InputError
from minilm_cli.model import PACKAGED_SHA256, REFERENCE_MODEL, Embedder, resolve_model


def _hub_cache(root: Path, repo_id: str, model_dir: str) -> Path:
    """Lay a model folder out as the Hugging Face cache does: refs/main -> snapshots/<rev>."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_packaged_model_is_checked(real_model_dir):
    source = resolve_model(None)
    assert source.source == "packaged"
    assert source.weights_file == "model.safetensors"
    assert source.weights_sha256 == PACKAGED_SHA256
    assert Path(source.path) == Path(real_model_dir)


def test_packaged_model_with_wrong_hash_is_refused(monkeypatch):
    import minilm_cli.model.source as model

    monkeypatch.setattr(model, "PACKAGED_SHA256", "0" * 64)
    with pytest.raises(InputError, match="sha256"):
        resolve_model(None)


def test_reference_hub_id_served_from_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    snapshot = _hub_cache(tmp_path / "hub", REFERENCE_MODEL, tiny_model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    source = resolve_model(REFERENCE_MODEL)
    assert source.source == "hub"
    assert Path(source.path).resolve() == snapshot.resolve()
    embedder = Embedder(model=REFERENCE_MODEL, device="cpu", precision="fp32")
    local = Embedder(model=tiny_model_dir, device="cpu", precision="fp32")
    texts = ["the same weights", "from two places"]
    assert (embedder.embed(texts) == local.embed(texts)).all()


def test_uncached_hub_id_is_one_line(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "minilm_cli.cli", "info", "--model", "nreimers/MiniLM-L6-H384-uncased"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minilm: error: model nreimers/MiniLM-L6-H384-uncased")
    assert "--model" in lines[0] and "Traceback" not in proc.stderr


def test_a_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["info", "--model", str(tmp_path)])
    assert result.exit_code == 2
    assert "has no config.json and model.safetensors" in result.stderr


def test_remote_code_is_never_run(tiny_model_dir, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "pwned"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(
        config.replace("{", '{"auto_map": {"AutoModel": "evil.EvilModel"},', 1)
    )
    embedder = Embedder(model=str(folder), device="cpu", precision="fp32")
    assert embedder.embed(["still a plain BERT"]).shape == (1, 32)
    assert not marker.exists()


def test_threads_follow_the_affinity_mask():
    if not shutil.which("taskset"):
        pytest.skip("taskset not installed")
    code = "from minilm_cli.devices import usable_cpus; print(usable_cpus())"
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"
    assert usable_cpus() >= 1
