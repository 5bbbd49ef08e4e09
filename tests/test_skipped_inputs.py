"""What a directory walk or a glob passes over (issue 20, item 9): one stderr line per skipped
file or whole folder, with the true reason, and an error that names every one skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_one_line_error, cli, model_args

from minilm_cli.errors import InputError
from minilm_cli.sources import resolve_inputs

UNSUPPORTED = "not a supported input format (by its extension)"


def skipped_lines(folder: Path, **kw) -> tuple[list[str], list[str]]:
    told: list[str] = []
    files = resolve_inputs([str(folder)], log=told.append, **kw)
    return [f.path for f in files], told


# One line per skipped file, with its reason: test_inputs.py::test_directory_input_says_which_files_it_skipped


def test_a_hidden_folder_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / ".cache" / "deep").mkdir(parents=True)
    (data / "a.txt").write_text("hello\n")
    for name in ("x.txt", "y.csv", "deep/z.jsonl"):
        (data / ".cache" / name).write_text("text\nnot read\n")
    files, told = skipped_lines(data)
    assert files == [str(data / "a.txt")]
    assert told == [f"skipped {data / '.cache'}: hidden folder"]


def test_an_earlier_output_is_one_line_for_the_folder(tmp_path: Path, tiny_model_dir) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("one\ntwo\n")
    earlier = data / "earlier"
    result = cli(
        ["embed", str(data / "a.txt"), "-o", str(earlier), "--format", "npy", *model_args(tiny_model_dir)]
    )
    assert result.exit_code == 0, result.output
    assert len([p for p in earlier.rglob("*") if p.is_file()]) > 3  # manifest, keys, metadata, embeddings
    files, told = skipped_lines(data)
    assert files == [str(data / "a.txt")]
    assert told == [f"skipped {earlier}: an earlier minilm output (name it to read it)"]
    # the run's own OUTPUT inside the input folder: one line too, with its own reason
    files, told = skipped_lines(data, exclude=[str(earlier)])
    assert told == [f"skipped {earlier}: it is this run's OUTPUT"]


def test_no_supported_input_files_names_every_skipped_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.md").write_text("x\n")
    (data / ".swap.txt").write_text("x\n")
    with pytest.raises(InputError) as caught:
        resolve_inputs([str(data)])
    message = str(caught.value)
    assert message.startswith(f"no supported input files in directory {data} (skipped 2: ")
    assert f"{data / '.swap.txt'}: hidden" in message and f"{data / 'notes.md'}: {UNSUPPORTED}" in message
    assert message.endswith(
        "; --input-format txt (or csv, tsv, jsonl, parquet) reads files whatever their extension"
    )


def test_only_hidden_files_give_no_input_format_hint(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ".swap.txt").write_text("x\n")
    with pytest.raises(InputError) as caught:
        resolve_inputs([str(data)])
    assert "--input-format" not in str(caught.value)


def test_many_skipped_files_are_capped_in_one_error_line(tmp_path: Path, tiny_model_dir) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(15):
        (data / f"n{i:02d}.md").write_text("x\n")
    result = cli(["embed", str(data), "-o", str(tmp_path / "out"), *model_args(tiny_model_dir)])
    line = assert_one_line_error(result, 2, "no supported input files", "skipped 15:", "and 12 more")
    assert str(data / "n00.md") in line and str(data / "n03.md") not in line


def test_a_glob_that_matches_only_skipped_files_says_so_in_one_line(tmp_path: Path, tiny_model_dir) -> None:
    (tmp_path / "a.md").write_text("x\n")
    result = cli(["embed", str(tmp_path / "*.md"), "-o", str(tmp_path / "out"), *model_args(tiny_model_dir)])
    assert_one_line_error(result, 2, "no files match", f"{tmp_path / 'a.md'}: {UNSUPPORTED}")
