"""`minilm info`, `--help` and `--version`."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import pytest


def invoke(args: list, env: dict | None = None):
    from click.testing import CliRunner

    from minilm_cli.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def info_json() -> dict:
    result = invoke(["info", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.output
    return json.loads(result.stdout)  # stdout is exactly one JSON document


@pytest.mark.real_model
def test_info_json_describes_the_packaged_model(info_json: dict, real_model_dir: str) -> None:
    assert info_json["dim"] == 384
    assert info_json["max_length"] == 256
    assert info_json["pooling"] == "mean"
    assert info_json["normalize"] is True
    assert info_json["device"] == "cpu"
    assert info_json["precision"] in ("bf16", "fp32")
    model = info_json["model"]
    assert model["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert model["source"] == "packaged"
    assert Path(model["path"]).resolve() == Path(real_model_dir).resolve()
    weights = Path(real_model_dir) / model["weights_file"]
    assert model["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "cpuinfo,native",
    [
        ("flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16\n", True),
        ("flags\t\t: fpu sse avx2 amx_bf16 amx_tile\n", True),
        ("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n", False),
        (None, False),  # no /proc/cpuinfo (macOS, a sandbox)
    ],
)
def test_auto_precision_on_a_cpu_follows_its_bf16_flags(monkeypatch, cpuinfo, native) -> None:
    import minilm_cli.devices as devices

    class FakeProc:
        def __init__(self, path: str) -> None:
            self.path = path

        def read_text(self) -> str:
            if cpuinfo is None:
                raise OSError("no such file")
            return cpuinfo

    import torch

    monkeypatch.setattr(devices, "Path", FakeProc)
    assert devices.cpu_has_native_bf16() is native
    assert devices.choose_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    reason = devices.precision_reason("auto", torch.device("cpu"))
    expected = ("AMX" if "amx" in cpuinfo else "avx512_bf16 without AMX") if native else "fp32"
    assert reason.startswith("auto: ") and expected in reason, reason
    assert ("VNNI" in reason) == bool(cpuinfo and "vnni" in cpuinfo)
    assert devices.precision_reason("fp32", torch.device("cpu")) == "asked for (--precision fp32)"


@pytest.mark.real_model
def test_info_json_versions(info_json: dict) -> None:
    import pyarrow
    import tokenizers
    import torch
    import transformers

    import minilm_cli

    versions = info_json["versions"]
    assert versions["minilm-cli"] == minilm_cli.__version__
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__
    assert versions["tokenizers"] == tokenizers.__version__
    assert versions["pyarrow"] == pyarrow.__version__


@pytest.mark.real_model
def test_info_default_device_on_this_machine() -> None:
    import torch

    result = invoke(
        ["info", "--json"], env={"MINILM_DEVICE": None, "MINILM_PRECISION": None, "MINILM_MODEL": None}
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    if torch.cuda.is_available():
        assert data["device"].startswith("cuda")
    elif not torch.backends.mps.is_available():
        assert data["device"] == "cpu"
        assert data["precision"] in ("bf16", "fp32")


@pytest.mark.real_model
def test_info_precision_flag(tmp_path: Path) -> None:
    result = invoke(["info", "--json", "--device", "cpu", "--precision", "fp32"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["precision"] == "fp32"


@pytest.mark.real_model
def test_info_text(info_json: dict) -> None:
    result = invoke(["info", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "sentence-transformers/all-MiniLM-L6-v2" in out
    assert info_json["model"]["weights_sha256"] in out
    lines = {line.split(None, 1)[0]: line for line in out.splitlines() if line.strip()}
    assert lines["dim"].split()[-1] == "384"
    assert [x.split()[-1] for x in out.splitlines() if x.startswith("max length")] == ["256"]
    assert "mean" in lines["pooling"] and "normalized" in lines["pooling"]
    assert lines["device"].split()[-1] == "cpu"
    assert lines["precision"].split()[-1] == info_json["precision"]
    assert lines["why"] == f"why         {info_json['precision_reason']}"
    assert "torch" in lines["versions"]


def test_info_with_the_tiny_model(tiny_model_dir: str) -> None:
    result = invoke(["info", "--json", "--model", tiny_model_dir, "--device", "cpu", "--precision", "fp32"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["dim"], data["max_length"], data["pooling"], data["normalize"]) == (32, 64, "mean", True)
    assert data["model"]["source"] == "local"
    assert data["precision"] == "fp32"


def test_info_with_a_bad_model(tmp_path: Path) -> None:
    result = invoke(["info", "--model", tmp_path])
    assert result.exit_code == 2
    assert result.stderr.startswith("minilm: error: ")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output


def test_info_with_a_bad_device(tiny_model_dir: str) -> None:
    result = invoke(["info", "--model", tiny_model_dir, "--device", "tpu"])
    assert result.exit_code == 2
    assert result.stderr.startswith("minilm: error: ") and "tpu" in result.stderr


# ---------------------------------------------------------------------------- help and version


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help(flag: str) -> None:
    result = invoke([flag])
    assert result.exit_code == 0
    for word in ("embed", "verify", "info"):
        assert word in result.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_embed_help_mentions_key_flags(flag: str) -> None:
    result = invoke(["embed", flag])
    assert result.exit_code == 0
    out = result.stdout
    for option in (
        "--output",
        "--input-format",
        "--text-column",
        "--id-column",
        "--keep-columns",
        "--model",
        "--device",
        "--precision",
        "--batch-size",
        "--batch-tokens",
        "--chunk-size",
        "--shard-rows",
        "--format",
        "--dtype",
        "--overwrite",
        "--resume",
        "--on-error",
        "--quiet",
    ):
        assert option in out, option
    for word in ("parquet", "npy", "stdout", "manifest.json", "Exit codes"):
        assert word in out, word


@pytest.mark.parametrize("command", ["info", "verify"])
def test_subcommand_help(command: str) -> None:
    result = invoke([command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout


def test_help_does_not_import_torch() -> None:
    """`minilm --help` stays fast: torch is imported lazily."""
    import subprocess
    import sys

    code = "import sys; from minilm_cli.cli import main; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_version() -> None:
    import minilm_cli

    result = invoke(["--version"])
    assert result.exit_code == 0
    assert minilm_cli.__version__ in result.stdout
