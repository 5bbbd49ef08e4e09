"""The pipeline's own seams: long texts clipped before tokenizing, stdout pipes that close,
the Python API's single-path inputs, and one-line config errors."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, WORDS, cli, manifest, model_args, write_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from minilm_cli.config import EmbedConfig
from minilm_cli.errors import InputError
from minilm_cli.pipeline import check_config
from minilm_cli.pipeline.stages import clip_text


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(WORDS[:500] + ["x" * 150, "Ünïcödé", "日本語", "!!!", "a-b"]), max_size=700
    ),
    gaps=st.lists(st.sampled_from([" ", "  ", "\n", "\t", "\u3000", " \r\n "]), min_size=1, max_size=5),
)
def test_clip_text_keeps_exactly_the_tokens_of_the_whole_text(tiny_embedder, words, gaps) -> None:
    text = "".join(w + gaps[i % len(gaps)] for i, w in enumerate(words))
    clipped = clip_text(text, tiny_embedder)
    whole = tiny_embedder.tokenizer.encode(text)
    part = tiny_embedder.tokenizer.encode(clipped)
    assert part.ids == whole.ids
    assert bool(part.overflowing) == bool(whole.overflowing)  # the truncated count stays right
    assert text.startswith(clipped)


def test_clip_text_cuts_a_huge_line_to_a_short_prefix(tiny_embedder) -> None:
    rng = random.Random(5)
    text = " ".join(rng.choices(WORDS, k=200_000))
    clipped = clip_text(text, tiny_embedder)
    assert len(clipped) < 20 * tiny_embedder.max_length * 16
    assert tiny_embedder.tokenizer.encode(clipped).ids == tiny_embedder.tokenizer.encode(text).ids


def test_a_short_text_is_not_touched(tiny_embedder) -> None:
    text = "a short sentence"
    assert clip_text(text, tiny_embedder) is text


def _peak_rss_kib(args: list[str], tmp: Path) -> int:
    script = (
        "import resource, sys\n"
        "from minilm_cli.cli import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_10_mb_line_costs_about_what_a_normal_row_costs(tmp_path, tiny_model_dir) -> None:
    rng = random.Random(6)
    normal = write_corpus(tmp_path / "normal.txt", 2000, seed=6)
    huge = tmp_path / "huge.txt"
    huge.write_text(normal.read_text() + " ".join(rng.choices(WORDS, k=1_700_000)) + "\n")
    assert huge.stat().st_size > 10_000_000
    base = _peak_rss_kib(
        ["embed", str(normal), "-o", str(tmp_path / "a"), *model_args(tiny_model_dir), "-q"], tmp_path
    )
    peak = _peak_rss_kib(
        ["embed", str(huge), "-o", str(tmp_path / "b"), *model_args(tiny_model_dir)], tmp_path
    )
    assert peak - base < 100 * 1024, (base, peak)  # within 100 MB of a normal run
    totals = manifest(tmp_path / "b")["totals"]
    assert totals["rows"] == 2001
    assert totals["truncated"] >= 1


@pytest.mark.slow
def test_stdout_pipe_closed_by_head_stops_quietly(tmp_path, tiny_model_dir) -> None:
    src = write_corpus(tmp_path / "big.txt", 60_000, seed=7)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("MINILM_DEBUG", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minilm_cli.cli",
            "embed",
            str(src),
            "-o",
            "-",
            "--chunk-size",
            "512",
            *model_args(tiny_model_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    first = proc.stdout.readline()
    assert first.startswith(b'{"id": 0')
    proc.stdout.close()  # what `head -1` does once it has its line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert err == b""


def test_rejects_on_stdout_runs_reach_stderr_even_when_quiet(tmp_path, tiny_model_dir) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"text": ""}\n{"text": null}\n{"text": "also fine"}\n')
    result = cli(["embed", str(src), "-o", "-", "--on-error", "skip", "--quiet", *model_args(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    import json

    rejected = [json.loads(line) for line in result.stderr.splitlines()]  # as in rejects/*.jsonl
    assert [r["line"] for r in rejected] == [2, 3]
    assert [r["reason"] for r in rejected] == ["empty text", "null text"]


def test_python_api_takes_one_path_as_one_input(tmp_path) -> None:
    cfg = EmbedConfig(inputs=str(tmp_path / "a.txt"), output=str(tmp_path / "out"))  # type: ignore[arg-type]
    check_config(cfg)
    assert cfg.inputs == [str(tmp_path / "a.txt")]


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"on_error": "Fail"}, "on_error 'Fail'"),
        ({"output": ""}, "-o/--output is empty"),
        ({"keep_columns": ("k", "k")}, "k is listed twice"),
        ({"keep_columns": ("id",)}, "--id-column id"),
    ],
)
def test_config_mistakes_are_one_clear_error(tmp_path, changes, message) -> None:
    cfg = EmbedConfig(**{"inputs": [str(tmp_path / "a.txt")], "output": str(tmp_path / "out"), **changes})
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        check_config(cfg)


def test_repeated_user_ids_are_a_warning_and_a_count_in_embed_and_verify(tmp_path, tiny_model_dir) -> None:
    src = tmp_path / "in.csv"
    src.write_text("module,text\nm1,alpha\nm2,beta\nm1,gamma\nm3,delta\nm1,epsilon\n")
    out = tmp_path / "out"
    result = cli(["embed", str(src), "-o", str(out), "--id-column", "module", *model_args(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "warning: 2 rows repeat an id of column 'module'" in result.stderr
    assert manifest(out)["totals"]["duplicate_ids"] == 2
    check = cli(["verify", str(out)])
    assert check.exit_code == 0, check.output  # the same finding, a warning in both


def test_python_api_takes_a_pathlib_model_folder(tmp_path, tiny_model_dir) -> None:
    from minilm_cli import Embedder, run_job

    write_corpus(tmp_path / "a.txt", 5, seed=1)
    embedder = Embedder(model=Path(tiny_model_dir), device="cpu", precision="fp32", threads=1)
    cfg = EmbedConfig(inputs=[str(tmp_path / "a.txt")], output=str(tmp_path / "out"))
    assert run_job(cfg, embedder=embedder).rows == 5  # the manifest records the folder as text
    assert manifest(tmp_path / "out")["settings"]["model"]["name"] == str(tiny_model_dir)


def test_python_api_embeds_one_string_as_one_text(tiny_embedder) -> None:
    one = tiny_embedder.embed("a whole sentence")
    assert one.shape == (tiny_embedder.dim,)
    assert (one == tiny_embedder.embed(["a whole sentence"])[0]).all()
    with pytest.raises(ValueError, match=r"texts\[1\] is NoneType"):
        tiny_embedder.embed(["fine", None])
    with pytest.raises(TypeError, match="not bytes"):
        tiny_embedder.embed(b"raw bytes")


def test_progress_moves_per_model_batch_with_a_total_for_parquet(
    tmp_path, tiny_model_dir, monkeypatch
) -> None:
    """The bar (when stderr is a terminal) advances per model batch, and knows its total from
    Parquet metadata; every row is counted exactly once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import minilm_cli.pipeline.run as run_module

    texts = [" ".join(WORDS[i : i + 5]) for i in range(300)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet", row_group_size=100)
    bars: list = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.total, self.updates = kwargs.get("total"), []
            bars.append(self)

        def update(self, n):
            self.updates.append(n)

        def set_postfix_str(self, *args, **kwargs):
            pass

        def close(self):
            pass

    monkeypatch.setattr(run_module, "tqdm", Recorder)
    monkeypatch.setattr(run_module, "stderr_is_terminal", lambda: True)
    args = ["--chunk-size", "150", "--batch-size", "16", *model_args(tiny_model_dir)]
    result = cli(["embed", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 0, result.output
    (bar,) = bars
    assert bar.total == 300
    assert sum(bar.updates) == 300
    assert len([n for n in bar.updates if n]) >= 300 // 16  # per batch, not per 150-row chunk
