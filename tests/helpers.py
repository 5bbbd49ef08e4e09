"""Small helpers shared by the reliability tests (resume, signals, faults, lock, bad rows, verify)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

from minilm_cli.cli import main
from minilm_cli.errors import MinilmError
from minilm_cli.output.manifest import Manifest

REPO = Path(__file__).resolve().parent.parent
WORDS = (REPO / "sample_data" / "glosses.txt").read_text(encoding="utf-8").split()


def write_corpus(path: Path, rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choices(WORDS, k=rng.randint(2, 10))) for _ in range(rows)) + "\n")
    return path


def model_args(model: str) -> list[str]:
    return ["--model", model, "--precision", "fp32", "--device", "cpu", "--threads", "1"]


def cli(args: list[str]):
    return CliRunner().invoke(main, args)


def manifest(out: Path, name: str = "manifest.json") -> dict:
    """The manifest as readers see it: the header plus the commit markers of a live run."""
    return Manifest.load(str(out / name)).doc


def listed_shards(out: Path, name: str = "manifest.json") -> int:
    try:
        return len(manifest(out, name)["shards"])
    except (MinilmError, ValueError, KeyError):
        return -1


def listed_files(out: Path) -> dict[str, str]:
    """The finished shards' files as the manifest lists them (path -> sha256)."""
    return {f["path"]: f["sha256"] for s in manifest(out)["shards"] for f in s["files"].values()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_files(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): sha256(p)
        for p in sorted(out.rglob("*"))
        if p.is_file()
        and p.name not in ("manifest.json", ".manifest.json.lock")
        and ".minilm-shards" not in p.parts
    }


def embeddings(out: Path) -> tuple[list, np.ndarray]:
    ids, blocks = [], []
    for shard in manifest(out)["shards"]:
        table = pq.read_table(out / shard["files"]["data"]["path"])
        column = table.column("embedding").combine_chunks()
        blocks.append(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size))
        ids += table.column("id").to_pylist()
    return ids, np.concatenate(blocks)


def assert_one_line_error(result, code: int, *words: str) -> str:
    """The documented exit code and exactly one `minilm: error:` line holding ``words``."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("minilm: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]
