"""An input is one file however it is spelled (issue 20, item 2): relative, ./relative,
absolute, through a symlinked folder, from another working directory, or an s3:// URL with a
doubled slash. --append, --resume and a file named twice all go by that identity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import cli, manifest, model_args

import minilm_cli
from minilm_cli.sources import resolve_inputs
from minilm_cli.storage import input_key, normalize_url

ROWS = 42


def write_rows(path: Path, n: int = ROWS, tag: str = "row") -> None:
    path.write_text("text\n" + "".join(f"{tag} number {i} of the file\n" for i in range(n)), encoding="utf-8")


def rows_in(out: Path) -> int:
    return minilm_cli.open_dataset(out).to_table().num_rows


def embed(model: str, *args) -> object:
    return cli(["embed", *[str(a) for a in args], "--shard-rows", "16", *model_args(model)])


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    """tmp/data/inc.csv, tmp/link -> data, tmp/elsewhere; the working directory is tmp."""
    (tmp_path / "data").mkdir()
    write_rows(tmp_path / "data" / "inc.csv")
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_input_key_is_one_for_every_spelling(tree: Path) -> None:
    want = str((tree / "data" / "inc.csv").resolve())
    spellings = ["data/inc.csv", "./data/inc.csv", "data//inc.csv", "link/inc.csv", want, f"file://{want}"]
    assert {input_key(s) for s in spellings} == {want}
    os.chdir(tree / "data")
    assert input_key("inc.csv") == want and input_key("../link/./inc.csv") == want


def test_url_normalisation() -> None:
    assert normalize_url("S3://bkt//a/./b//c.csv/") == "s3://bkt/a/b/c.csv"
    assert normalize_url("s3://Bkt/a.csv?versionId=1") == "s3://Bkt/a.csv?versionId=1"  # bucket as is
    assert input_key("s3://user:pw@bkt//x.csv") == "s3://***@bkt/x.csv"  # never a credential
    assert input_key("-") == "-"


def test_append_from_three_directories_and_four_spellings_adds_rows_once(tree: Path, tiny_model_dir) -> None:
    out = tree / "out"
    first = embed(tiny_model_dir, "data/inc.csv", "-o", out, "--append")
    assert first.exit_code == 0, first.output
    assert rows_in(out) == ROWS
    runs = [
        (tree, "./data/inc.csv"),
        (tree / "elsewhere", str(tree / "data" / "inc.csv")),  # a cron job: absolute, another cwd
        (tree, "link/inc.csv"),  # through a symlinked folder
        (tree / "data", "inc.csv"),  # relative to a third working directory
    ]
    for cwd, spelling in runs:
        os.chdir(cwd)
        again = embed(tiny_model_dir, spelling, "-o", out, "--append")
        assert again.exit_code == 0, again.output
        assert "nothing to append" in again.stderr, (spelling, again.stderr)
        assert rows_in(out) == ROWS, spelling
    doc = manifest(out)
    assert [f["path"] for f in doc["inputs"]] == [str((tree / "data" / "inc.csv").resolve())]
    assert cli(["verify", str(out)]).exit_code == 0

    write_rows(tree / "data" / "new.csv", 5, tag="new")  # a genuinely new file is still appended
    os.chdir(tree / "elsewhere")
    grown = embed(tiny_model_dir, tree / "link", "-o", out, "--append")
    assert grown.exit_code == 0, grown.output
    assert rows_in(out) == ROWS + 5


def test_resume_accepts_another_spelling(tree: Path, tiny_model_dir) -> None:
    out = tree / "out"
    assert embed(tiny_model_dir, "data/inc.csv", "-o", out).exit_code == 0
    for cwd, spelling in [(tree, "./data/inc.csv"), (tree / "elsewhere", "../link/inc.csv")]:
        os.chdir(cwd)
        resumed = embed(tiny_model_dir, spelling, "-o", out, "--resume")
        assert resumed.exit_code == 0, resumed.output
        assert "already complete" in resumed.stderr
    assert rows_in(out) == ROWS


def _as_old_manifest(out: Path, absolute: str, relative: str) -> bool:
    """Rewrite the manifest the way an older minilm recorded its inputs: the literal spelling."""
    path = out / "manifest.json"

    def back(value):
        if isinstance(value, dict):
            return {k: back(v) for k, v in value.items()}
        if isinstance(value, list):
            return [back(v) for v in value]
        return relative if value == absolute else value

    doc = json.loads(path.read_text())
    old = back(doc)
    path.write_text(json.dumps(old, indent=2))
    return old != doc


def test_an_old_manifest_with_relative_paths_still_resumes_and_appends(tree: Path, tiny_model_dir) -> None:
    out = tree / "out"
    absolute = str((tree / "data" / "inc.csv").resolve())
    assert embed(tiny_model_dir, "data/inc.csv", "-o", out, "--append").exit_code == 0
    assert _as_old_manifest(out, absolute, "data/inc.csv")  # the key was recorded, now it is not
    same = embed(tiny_model_dir, "data/inc.csv", "-o", out, "--resume")  # same spelling, same cwd
    assert same.exit_code == 0, same.output
    # an old relative entry is taken against the working directory: other spellings from there match
    for spelling in (absolute, "link/inc.csv", "./data/inc.csv"):
        _as_old_manifest(out, absolute, "data/inc.csv")
        other = embed(tiny_model_dir, spelling, "-o", out, "--append")
        assert other.exit_code == 0, other.output
        assert "nothing to append" in other.stderr, spelling
    assert rows_in(out) == ROWS


def test_parts_of_a_job_array_may_spell_the_input_differently(tree: Path, tiny_model_dir) -> None:
    write_rows(tree / "data" / "inc.csv", 400)  # big enough to be cut into byte ranges
    out = tree / "out"
    tasks = [(tree, "data/inc.csv"), (tree / "elsewhere", str(tree / "link" / "inc.csv"))]
    for index, (cwd, spelling) in enumerate(tasks):  # each task of the array starts elsewhere
        os.chdir(cwd)
        part = embed(tiny_model_dir, spelling, "-o", out, "--num-shards", "2", "--shard-index", str(index))
        assert part.exit_code == 0, part.output
    merged = cli(["merge-manifests", str(out)])
    assert merged.exit_code == 0, merged.output
    assert rows_in(out) == 400


@pytest.mark.parametrize("second", ["x.csv", "./x.csv", "ABSOLUTE", "*.csv", "alias.csv"])
def test_a_file_given_twice_is_read_once_at_its_first_place(tmp_path: Path, monkeypatch, second) -> None:
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "x.csv")
    write_rows(tmp_path / "w.txt", 2)
    if second == "alias.csv":  # a symlink and its target
        (tmp_path / "alias.csv").symlink_to(tmp_path / "x.csv")
    second = str(tmp_path / "x.csv") if second == "ABSOLUTE" else second
    told: list[str] = []
    files = resolve_inputs(["x.csv", "w.txt", second], log=told.append)
    assert [f.path for f in files] == ["x.csv", "w.txt"]
    assert len(told) == 1 and told[0].startswith("minilm: note: x.csv given twice"), told
    assert told[0].endswith("read once")


def test_x_csv_twice_on_the_command_line_gives_its_rows_once(tmp_path: Path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "x.csv")
    for n, second in enumerate(["x.csv", "./x.csv"]):
        out = tmp_path / f"out{n}"
        result = embed(tiny_model_dir, "x.csv", second, "-o", out)
        assert result.exit_code == 0, result.output
        assert rows_in(out) == ROWS
        note = "minilm: note: x.csv given twice" + ("" if second == "x.csv" else f" (as {second})")
        assert note in result.stderr


def test_a_folder_given_twice_is_one_note(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / "d" / name).write_text("one\n")
    told: list[str] = []
    files = resolve_inputs(["d", "./d/"], log=told.append)
    assert [os.path.basename(f.path) for f in files] == ["a.txt", "b.txt", "c.txt"]
    assert told == ["minilm: note: d given twice (as ./d/): read once"]


def test_an_s3_url_with_a_doubled_slash_is_the_same_input(s3_server, tmp_path: Path, tiny_model_dir) -> None:
    bucket = s3_server.new_bucket()
    body = "text\n" + "".join(f"remote row {i}\n" for i in range(10))
    s3_server.client().put_object(Bucket=bucket, Key="in/x.csv", Body=body.encode())
    plain, doubled = f"s3://{bucket}/in/x.csv", f"s3://{bucket}//in//x.csv"
    told: list[str] = []
    files = resolve_inputs([plain, doubled], log=told.append)
    assert [f.path for f in files] == [plain] and len(told) == 1
    out = tmp_path / "out"
    for url in (doubled, plain, f"s3://{bucket}/in/./x.csv"):
        result = embed(tiny_model_dir, url, "-o", out, "--append")
        assert result.exit_code == 0, result.output
    assert rows_in(out) == 10
    assert manifest(out)["inputs"][0]["path"] == plain
