"""Every command on object-store URLs, end to end: a real S3 protocol server on loopback
(moto, the ``s3_server`` fixture in conftest.py) reached through s3fs and AWS_ENDPOINT_URL,
memory:// for the quick checks. Each S3 result is compared with the same run on local disk."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, cli, model_args, write_corpus

import minilm_cli
from minilm_cli.output.layout import Layout
from minilm_cli.output.manifest import Manifest
from minilm_cli.sources import resolve_inputs
from minilm_cli.storage import storage_for

SAMPLE = REPO / "sample_data"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
INPUTS = [
    "glosses.csv",
    "glosses.tsv",
    "glosses.jsonl",
    "glosses.parquet",
    "glosses.txt",
    "glosses.csv.gz",
    "glosses.tsv.gz",
    "glosses.jsonl.gz",
    "glosses.txt.gz",
]
SMALL = ["--shard-rows", "128", "--chunk-size", "64"]


def put(s3, key: str, data: bytes, bucket: str | None = None) -> str:
    s3.client().put_object(Bucket=bucket or s3.bucket, Key=key, Body=data)
    return f"s3://{bucket or s3.bucket}/{key}"


def read_output(root: str) -> tuple[list, np.ndarray]:
    """ids and embeddings of an OUTPUT (local or URL) in order, through the storage layer."""
    store = storage_for(root)
    doc = Manifest.load(os.path.join(root, "manifest.json")).doc
    ids, blocks = [], []
    for shard in doc["shards"]:
        files = shard["files"]
        if "data" in files:
            with store.open_read(os.path.join(root, files["data"]["path"])) as f:
                table = pq.read_table(f)
            column = table.column("embedding").combine_chunks()
            blocks.append(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size))
        else:
            with store.open_read(os.path.join(root, files["embeddings"]["path"])) as f:
                blocks.append(np.load(f))
            with store.open_read(os.path.join(root, files["metadata"]["path"])) as f:
                table = pq.read_table(f)
        ids += table.column("id").to_pylist()
    return ids, np.concatenate(blocks)


def assert_same_output(got: str, want: str) -> None:
    got_ids, got_vectors = read_output(got)
    want_ids, want_vectors = read_output(want)
    assert got_ids == want_ids
    assert got_vectors.dtype == np.float32 and got_vectors.shape == want_vectors.shape
    np.testing.assert_allclose(got_vectors, want_vectors, atol=1e-6, rtol=0)


def embed_args(model: str) -> list[str]:
    return [*SMALL, *model_args(model), "-q"]


@pytest.fixture(scope="module")
def s3_inputs(s3_server, tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """name -> (s3 URL, the same bytes on local disk)."""
    local = tmp_path_factory.mktemp("objstore-in")
    out = {}
    for name in INPUTS:
        plain = name.removesuffix(".gz")
        data = (SAMPLE / plain).read_bytes()
        if name.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        (local / name).write_bytes(data)
        out[name] = (put(s3_server, f"inputs/{name}", data), local / name)
    return out


# -- round trips


@pytest.mark.parametrize("layout", ["parquet", "npy"])
@pytest.mark.parametrize("name", INPUTS)
def test_every_format_on_s3_equals_the_local_run(
    s3_server, s3_inputs, tiny_model_dir, tmp_path, name, layout
):
    url, local = s3_inputs[name]
    out_url = f"s3://{s3_server.bucket}/out-{name}-{layout}"
    out_local = str(tmp_path / "out")
    flags = ["--format", layout, *embed_args(tiny_model_dir)]
    assert cli(["embed", str(local), "-o", out_local, *flags]).exit_code == 0
    result = cli(["embed", url, "-o", out_url, *flags])
    assert result.exit_code == 0, result.output
    assert_same_output(out_url, out_local)
    doc = Manifest.load(out_url + "/manifest.json").doc
    assert doc["inputs"][0]["path"] == url and doc["inputs"][0]["etag"].startswith("etag:")
    check = cli(["verify", out_url])
    assert check.exit_code == 0, check.output
    assert check.output.startswith(f"ok: {out_url}:")
    table = minilm_cli.open_dataset(out_url).to_table()
    assert table.column("id").to_pylist() == read_output(out_local)[0]
    assert all(p.startswith(out_url + "/") for p in minilm_cli.finished_files(out_url))


def test_polars_reads_the_s3_output_through_the_same_endpoint(s3_server, s3_inputs, tiny_model_dir):
    pl = pytest.importorskip("polars")
    url, _ = s3_inputs["glosses.parquet"]
    out = f"s3://{s3_server.bucket}/polars-out"
    assert cli(["embed", url, "-o", out, *embed_args(tiny_model_dir)]).exit_code == 0
    options = {
        "aws_endpoint_url": s3_server.endpoint,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    frame = pl.read_parquet(minilm_cli.finished_files(out), storage_options=options)
    ids, vectors = read_output(out)
    assert frame["id"].to_list() == ids
    np.testing.assert_array_equal(np.array(frame["embedding"].to_list(), dtype=np.float32), vectors)


def test_glob_and_prefix_inputs_expand_remotely_sorted(s3_server, tiny_model_dir):
    bucket = s3_server.new_bucket()
    lines = (SAMPLE / "glosses.txt").read_text().splitlines()
    for i, name in enumerate(["c.txt", "a.txt", "sub/b.txt", "skip.bin"]):
        put(s3_server, f"corpus/{name}", ("\n".join(lines[i * 10 : i * 10 + 10]) + "\n").encode(), bucket)
    base = f"s3://{bucket}/corpus"
    # the OUTPUT inside the walked prefix is never an input (URLs compared as URLs)
    assert cli(["embed", f"{base}/*.txt", "-o", f"{base}/out", *embed_args(tiny_model_dir)]).exit_code == 0
    by_glob = [f.path for f in resolve_inputs(f"{base}/*.txt", exclude=[f"{base}/out"])]
    assert by_glob == [f"{base}/a.txt", f"{base}/c.txt"]
    by_prefix = [f.path for f in resolve_inputs(base + "/", exclude=[f"{base}/out"])]
    assert by_prefix == [f"{base}/a.txt", f"{base}/c.txt", f"{base}/sub/b.txt"]
    result = cli(["embed", base + "/", "-o", f"s3://{bucket}/by-prefix", *embed_args(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    doc = Manifest.load(f"s3://{bucket}/by-prefix/manifest.json").doc
    assert [f["path"] for f in doc["inputs"]] == by_prefix
    assert doc["totals"]["rows"] == 30


@pytest.mark.parametrize("name", ["glosses.jsonl", "glosses.csv"])  # a CSV range finds its record starts
def test_num_shards_parts_into_one_s3_output_then_merge(name, s3_server, s3_inputs, tiny_model_dir, tmp_path):
    url, local = s3_inputs[name]
    out = f"s3://{s3_server.bucket}/parts-{name.replace('.', '-')}"
    for index in (0, 1):
        args = ["embed", url, "-o", out, "--num-shards", "2", "--shard-index", str(index)]
        result = cli([*args, *embed_args(tiny_model_dir)])
        assert result.exit_code == 0, result.output
    merged = cli(["merge-manifests", out])
    assert merged.exit_code == 0, merged.output
    assert f"merged into {out}/manifest.json" in merged.output
    assert cli(["verify", out]).exit_code == 0
    whole = str(tmp_path / "whole")
    assert cli(["embed", str(local), "-o", whole, *embed_args(tiny_model_dir)]).exit_code == 0
    assert_same_output(out, whole)


def test_verify_and_merge_check_a_missing_output_through_the_storage(s3_server, tmp_path):
    for command in ("verify", "merge-manifests"):
        result = cli([command, f"s3://{s3_server.bucket}/never-written"])
        assert result.exit_code == 2, result.output
        assert "does not exist" in result.output and len(result.output.strip().splitlines()) == 1
        local = cli([command, str(tmp_path / "missing")])
        assert local.exit_code == 2 and "does not exist" in local.output


# -- memory:// unit checks


def test_layout_relpath_on_urls() -> None:
    layout = Layout("s3://bucket/out")
    assert layout.rel("s3://bucket/out/embeddings/part-00000.npy") == "embeddings/part-00000.npy"
    assert Layout("s3://bucket/out/").rel("s3://bucket/out/part-00001.parquet") == "part-00001.parquet"
    assert Layout("/tmp/x").rel("/tmp/x/a/b.parquet") == "a/b.parquet"


def test_memory_store_round_trip_and_exclude(tiny_model_dir) -> None:
    store = storage_for("memory://objwire/in")
    store.write_atomic("memory://objwire/in/a.txt", b"one\ntwo\nthree\n")
    out = "memory://objwire/in/out"
    result = cli(["embed", "memory://objwire/in", "-o", out, *embed_args(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    again = [f.path for f in resolve_inputs("memory://objwire/in", exclude=[out])]
    assert again == ["memory://objwire/in/a.txt"]  # the OUTPUT inside the prefix is passed over
    assert cli(["verify", out]).exit_code == 0
    assert minilm_cli.open_dataset(out).count_rows() == 3


# -- faults


def _popen(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "minilm_cli.cli", "embed", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )


def _env() -> dict[str, str]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("MINILM_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _wait_for(predicate, proc: subprocess.Popen, what: str, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before {what}: {proc.stderr.read()!r}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} within {limit} s")
        time.sleep(0.05)


def _markers(s3, bucket: str, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/.minilm-shards/")
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.fixture(scope="module")
def big_corpus(s3_server, tmp_path_factory) -> tuple[str, Path]:
    local = write_corpus(tmp_path_factory.mktemp("objstore-big") / "big.txt", 6000, seed=5)
    return put(s3_server, "big/big.txt", local.read_bytes()), local


@pytest.fixture(scope="module")
def big_reference(big_corpus, tiny_model_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("objstore-big-ref") / "out")
    result = cli(["embed", str(big_corpus[1]), "-o", out, *FAULT_PLAN, *model_args(tiny_model_dir), "-q"])
    assert result.exit_code == 0, result.output
    return out


FAULT_PLAN = ["--shard-rows", "200", "--chunk-size", "100", "--batch-size", "16"]


@pytest.mark.slow
def test_sigkill_then_resume_equals_a_clean_run_and_a_second_writer_is_refused(
    s3_server, big_corpus, big_reference, tiny_model_dir
):
    out_key = "killed"
    out = f"s3://{s3_server.bucket}/{out_key}"
    proc = _popen([big_corpus[0], "-o", out, *FAULT_PLAN, *model_args(tiny_model_dir)], _env())
    try:
        _wait_for(lambda: _markers(s3_server, s3_server.bucket, out_key), proc, "a shard marker")
        second = cli(
            ["embed", big_corpus[0], "-o", out, "--resume", *FAULT_PLAN, *model_args(tiny_model_dir)]
        )
        assert second.exit_code == 3, second.output  # the lease is held by a live run
        assert "in use by another run" in second.output
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    resumed = cli(
        ["embed", big_corpus[0], "-o", out, "--resume", *FAULT_PLAN, *model_args(tiny_model_dir), "-q"]
    )
    assert resumed.exit_code == 0, resumed.output  # a dead holder's lease (same host) is stale at once
    assert_same_output(out, big_reference)
    assert cli(["verify", out]).exit_code == 0
    assert s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket).get("Uploads", []) == []


@pytest.mark.slow
def test_server_stopped_mid_run_is_one_line_exit_1_and_resume_completes(
    s3_server, big_corpus, big_reference, tiny_model_dir
):
    from moto.server import ThreadedMotoServer

    out_key = "outage"
    out = f"s3://{s3_server.bucket}/{out_key}"
    host, port = s3_server.server.get_host_and_port()
    proc = _popen([big_corpus[0], "-o", out, *FAULT_PLAN, *model_args(tiny_model_dir)], _env())
    try:
        _wait_for(lambda: _markers(s3_server, s3_server.bucket, out_key), proc, "a shard marker")
        # The server goes away: stop serving and close the listening socket (werkzeug's
        # shutdown alone leaves it open, so requests would hang rather than be refused).
        # moto's backend lives in this process, so the objects survive the restart below.
        s3_server.server.stop()
        s3_server.server._server.server_close()
        try:
            _, stderr = proc.communicate(timeout=240)
        finally:
            restarted = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
            restarted.start()
            s3_server.server = restarted
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = stderr.decode().strip().splitlines()
    assert proc.returncode == 1, stderr
    assert len(lines) == 1 and lines[0].startswith("minilm: error: "), lines
    assert "testing" not in stderr.decode()  # the (test) secret key never shows
    resumed = cli(
        ["embed", big_corpus[0], "-o", out, "--resume", *FAULT_PLAN, *model_args(tiny_model_dir), "-q"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert_same_output(out, big_reference)


def test_wrong_credentials_and_missing_bucket_are_one_line_exit_2_without_secrets(
    s3_server, s3_inputs, tiny_model_dir, monkeypatch
):
    from moto import settings

    url, _ = s3_inputs["glosses.txt"]
    out = f"s3://{s3_server.bucket}/secret-check"
    # a good run with a secret in --storage-option: the manifest never holds it
    opts = ["--storage-option", f"secret={SECRET}", "--storage-option", f"key={KEY_ID}"]
    # moto accepts any credentials unless told to check them
    result = cli(["embed", url, "-o", out, *opts, *embed_args(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    manifest_text = storage_for(out).read_bytes(out + "/manifest.json").decode()
    assert (
        SECRET not in manifest_text and KEY_ID not in manifest_text and "storage_option" not in manifest_text
    )

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto now checks every key
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    for args in (
        ["embed", url, "-o", f"s3://{s3_server.bucket}/denied", *embed_args(tiny_model_dir)],
        ["embed", url, "-o", f"s3://{s3_server.bucket}/denied", *opts, *embed_args(tiny_model_dir)],
        ["verify", out],
    ):
        denied = cli(args)
        assert denied.exit_code == 2, denied.output
        lines = denied.output.strip().splitlines()
        assert len(lines) == 1 and "access denied" in lines[0], lines
        assert SECRET not in denied.output and KEY_ID not in denied.output
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    for args in (
        ["embed", url, "-o", "s3://no-such-bucket-objwire/out", *embed_args(tiny_model_dir)],
        [
            "embed",
            "s3://no-such-bucket-objwire/in.txt",
            "-o",
            f"s3://{s3_server.bucket}/nb",
            *embed_args(tiny_model_dir),
        ],
    ):
        missing = cli(args)
        assert missing.exit_code == 2, missing.output
        lines = missing.output.strip().splitlines()
        assert len(lines) == 1, lines
        assert "no-such-bucket-objwire" in lines[0], lines


@pytest.mark.slow
def test_device_workers_get_the_storage_options(s3_server, s3_inputs, tiny_model_dir, tmp_path, monkeypatch):
    """--device cpu,cpu spawns workers: the endpoint reaches them only through --storage-option
    (the environment points at a closed loopback port)."""
    url, local = s3_inputs["glosses.csv"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    out = f"s3://{s3_server.bucket}/devices"
    args = ["embed", url, "-o", out, "--storage-option", f"endpoint_url={s3_server.endpoint}"]
    flags = [*SMALL, "--model", tiny_model_dir, "--precision", "fp32", "--threads", "1", "-q"]
    result = cli([*args, "--device", "cpu,cpu", *flags])
    assert result.exit_code == 0, result.output
    reference = str(tmp_path / "ref")
    assert cli(["embed", str(local), "-o", reference, *embed_args(tiny_model_dir)]).exit_code == 0
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    assert_same_output(out, reference)
    assert json.loads(storage_for(out).read_bytes(out + "/manifest.json"))["status"] == "complete"


def test_an_input_rewritten_in_place_is_noticed_by_its_etag(s3_server, tiny_model_dir):
    """Same size, same second: only the ETag tells; --resume refuses, --append re-embeds it."""
    bucket = s3_server.new_bucket()
    url = put(s3_server, "in/a.txt", b"alpha\nbeta\n", bucket)
    out = f"s3://{bucket}/out"
    assert cli(["embed", url, "-o", out, *embed_args(tiny_model_dir)]).exit_code == 0
    before = Manifest.load(out + "/manifest.json").doc["inputs"][0]
    put(s3_server, "in/a.txt", b"gamma\ndelta\n"[:11], bucket)  # 11 bytes again
    resumed = cli(["embed", url, "-o", out, "--resume", *embed_args(tiny_model_dir)])
    assert resumed.exit_code == 3, resumed.output
    appended = cli(["embed", url, "-o", out, "--append", *embed_args(tiny_model_dir)])
    assert appended.exit_code == 0, appended.output
    after = Manifest.load(out + "/manifest.json").doc["inputs"][0]
    assert after["size"] == before["size"] and after["etag"] != before["etag"]
    assert minilm_cli.open_dataset(out).count_rows() == 2
