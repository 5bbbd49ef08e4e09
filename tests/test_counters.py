"""The summary's and the manifest's figures describe the rows written by this run: `truncated`
counts copied and reused rows too, and a run with nothing to do shows no earlier run's figures."""

from __future__ import annotations

from helpers import cli, manifest, model_args

# 40 distinct words: far more than --max-length 16 tokens, so this text is always truncated
LONG = " ".join(f"word{i} alpha beta gamma" for i in range(10))
SHORT = ["a cat", "the dog", "red sun", "blue sky", "green tree"]
MAX_LENGTH = ["--max-length", "16"]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary(result) -> str:
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith(("embedded", "added"))]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_truncated_counts_dedup_copies(tmp_path, tiny_model_dir):
    """The long text three times (once embedded, twice copied) and in a later chunk of the
    same shard once more: four rows written with a truncated text."""
    lines = [LONG, SHORT[0], LONG, SHORT[1], LONG, *SHORT[2:], LONG]
    src = _write(tmp_path / "in.txt", lines)
    out = tmp_path / "out"
    args = ["embed", str(src), "-o", str(out), "--chunk-size", "4", *MAX_LENGTH, *model_args(tiny_model_dir)]
    line = _summary(cli(args))
    assert "4 truncated" in line, line
    assert "rows copied an earlier vector" in line  # the copies really were copies
    doc = manifest(out)
    assert sum(s["truncated"] for s in doc["shards"]) == 4
    assert doc["totals"]["truncated"] == 4

    plain = cli([*args[:3], str(tmp_path / "plain"), *args[4:], "--no-dedup"])
    assert "4 truncated" in _summary(plain)  # the same figure when every row goes through the model


def test_truncated_counts_reused_rows(tmp_path, tiny_model_dir):
    first = _write(tmp_path / "a.txt", [LONG, *SHORT[:2]])
    assert (
        cli(
            ["embed", str(first), "-o", str(tmp_path / "a"), *MAX_LENGTH, *model_args(tiny_model_dir)]
        ).exit_code
        == 0
    )
    second = _write(tmp_path / "b.txt", [SHORT[3], LONG, SHORT[4]])
    args = ["embed", str(second), "-o", str(tmp_path / "b"), "--reuse", str(tmp_path / "a")]
    line = _summary(cli([*args, *MAX_LENGTH, *model_args(tiny_model_dir)]))
    assert "1 truncated" in line, line
    assert manifest(tmp_path / "b")["totals"]["reused"] == 1  # the long row's vector was the earlier one
    assert manifest(tmp_path / "b")["totals"]["truncated"] == 1


def test_append_with_nothing_new_shows_no_earlier_figures(tmp_path, tiny_model_dir):
    src = _write(tmp_path / "in.txt", [LONG, *SHORT])
    out = tmp_path / "out"
    args = ["embed", str(src), "-o", str(out), "--append", *MAX_LENGTH, *model_args(tiny_model_dir)]
    assert "1 truncated" in _summary(cli(args))
    again = cli(args)
    assert again.exit_code == 0, again.output
    assert "nothing to append" in again.stderr
    assert f"added 0 rows; {out} holds 6 rows in 1 shard(s)" in again.stderr
    for stale in ("truncated", "rejected", "padding efficiency", "rows/s"):
        assert stale not in again.stderr, again.stderr
