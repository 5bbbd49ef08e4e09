"""FsspecStorage: memory:// for the fast unit tests, a moto S3 server on loopback (s3fs, the
client path a real AWS account takes) for commits, multipart uploads, locks and errors."""

from __future__ import annotations

import gzip
import io
import json
import socket
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minilm_cli.errors import ExitCode, InputError, MinilmError, OutputConflict
from minilm_cli.output.layout import Layout
from minilm_cli.storage import (
    FsspecStorage,
    LocalStorage,
    configure_storage,
    parse_storage_options,
    redact,
    redact_url,
    remote,
    storage_for,
    storage_options,
)

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def uploads(client, bucket: str) -> list[dict]:
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def keys(client, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


# -- options, dispatch, secrets (no store needed)


def test_parse_storage_options_types_nesting_and_errors() -> None:
    opts = parse_storage_options(
        [
            "anon=false",
            "use_ssl=true",
            "max_concurrency=4",
            "ratio=0.5",
            "client_kwargs.region_name=eu-west-1",
        ]
    )
    assert opts == {
        "anon": False,
        "use_ssl": True,
        "max_concurrency": 4,
        "ratio": 0.5,
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    assert parse_storage_options(["endpoint_url=http://127.0.0.1:9000/x=y"]) == {
        "endpoint_url": "http://127.0.0.1:9000/x=y"
    }
    with pytest.raises(InputError) as exc:
        parse_storage_options([f"secret{SECRET}"])  # forgot the '=': the value must not be echoed
    assert SECRET not in str(exc.value) and "KEY=VALUE" in str(exc.value)


def test_storage_for_dispatches_by_scheme(tmp_path) -> None:
    assert isinstance(storage_for(str(tmp_path)), LocalStorage)
    assert isinstance(storage_for(None), LocalStorage)
    (tmp_path / "a.txt").write_bytes(b"x")
    via_url = storage_for(f"file://{tmp_path}")
    assert via_url.info(f"file://{tmp_path}/a.txt").size == 1
    assert via_url.list_dir(f"file://{tmp_path}") == ["a.txt"]
    mem = storage_for("memory://bucket/x")
    assert isinstance(mem, FsspecStorage) and mem.scheme == "memory"
    assert storage_for("memory://other") is mem  # one storage per scheme + options
    configure_storage({"skip_instance_cache": True})
    try:
        assert storage_options() == {"skip_instance_cache": True}
        assert storage_for("memory://bucket/x") is not mem
    finally:
        configure_storage({})


def test_redaction() -> None:
    assert redact_url("s3://bucket/key") == "s3://bucket/key"
    assert redact_url(f"https://user:{SECRET}@host/p?X-Amz-Signature=abc&part=1&token=t") == (
        "https://***@host/p?X-Amz-Signature=***&part=1&token=***"
    )
    text = redact(f"failed for {KEY_ID} with {SECRET} at https://u:pw@h/x", {"secret": SECRET})
    assert SECRET not in text and KEY_ID not in text and "pw" not in text


def test_missing_extra_is_one_line(monkeypatch) -> None:
    import importlib

    imported = importlib.import_module("fsspec.registry")._registry  # the module, not fsspec.registry
    monkeypatch.setattr(remote, "_FS_CACHE", {})
    for scheme in ("s3", "hf"):  # forget classes fsspec imported already in this session
        monkeypatch.delitem(imported, scheme, raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now fails
    with pytest.raises(InputError) as exc:
        FsspecStorage("s3", {})
    msg = str(exc.value)
    assert "\n" not in msg and "pip install s3fs (or '.[s3]' in a clone)" in msg and exc.value.exit_code == 2
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(InputError, match=r"pip install huggingface_hub \(or .\.\[hf\]. in a clone\)"):
        FsspecStorage("hf", {})
    with pytest.raises(InputError, match="unknown storage scheme"):
        FsspecStorage("nosuchscheme", {})


def test_https_is_read_only() -> None:
    pytest.importorskip("aiohttp")
    store = FsspecStorage("https", {})
    with pytest.raises(InputError, match="read-only"):
        store.create("https://127.0.0.1/x")
    with pytest.raises(InputError, match="read-only"):
        store.write_atomic("https://127.0.0.1/x", b"")


# -- memory://: commits, listings, fingerprints, the lease


@pytest.fixture
def mem():
    store = storage_for("memory://")
    root = f"memory://t{time.monotonic_ns()}"
    yield store, root
    store.fs.rm(store.key(root), recursive=True) if store.exists(root) else None


def test_memory_commit_discard_write_atomic(mem) -> None:
    store, root = mem
    pending = store.create(f"{root}/out/a.parquet")
    pending.stream.write(b"PAR1 data")
    assert not store.exists(f"{root}/out/a.parquet")  # nothing before commit
    pending.commit()
    assert store.read_bytes(f"{root}/out/a.parquet") == b"PAR1 data"
    gone = store.create(f"{root}/out/b.parquet")
    gone.stream.write(b"half")
    gone.discard()
    gone.discard()  # twice is harmless
    assert store.list_dir(f"{root}/out") == ["a.parquet"]
    store.write_atomic(f"{root}/out/manifest.json", b"{}")
    store.write_atomic(f"{root}/out/manifest.json", b'{"v": 2}')
    assert store.read_bytes(f"{root}/out/manifest.json") == b'{"v": 2}'
    assert store.read_range(f"{root}/out/a.parquet", 0, 4) == b"PAR1"
    assert store.read_range(f"{root}/out/a.parquet", -4, 4) == b"data"
    store.remove(f"{root}/out/a.parquet")
    store.remove(f"{root}/out/a.parquet")  # already gone: fine
    assert store.file_problem(f"{root}/out/a.parquet") == "not found"
    assert store.file_problem(f"{root}/out") == "is a directory"
    assert store.file_problem(f"{root}/out/manifest.json") is None


def test_memory_listings_sorted(mem) -> None:
    store, root = mem
    for name in ["z.txt", "a/2.txt", "a/1.txt", "m.jsonl", "a/b/3.txt"]:
        store.write_atomic(f"{root}/{name}", b"x")
    assert store.list_dir(root) == ["a", "m.jsonl", "z.txt"]
    assert store.list_dir(f"{root}/missing") == []
    assert store.walk_files(root) == [
        f"{root}/a/1.txt",
        f"{root}/a/2.txt",
        f"{root}/a/b/3.txt",
        f"{root}/m.jsonl",
        f"{root}/z.txt",
    ]
    assert store.glob(f"{root}/a/*.txt") == [f"{root}/a/1.txt", f"{root}/a/2.txt"]
    assert store.glob(f"{root}/**/*.txt")[-1] == f"{root}/z.txt"
    assert store.is_dir(f"{root}/a") and not store.is_dir(f"{root}/z.txt")
    assert store.real_path(f"{root}/a/") == f"{root}/a"


def test_memory_lease_refuses_second_holder_and_stale_is_taken(mem) -> None:
    store, root = mem
    path = f"{root}/out/.lock"
    first = store.lock(path)
    assert store.lock_holder(path) == f"{__import__('os').getpid()} on {socket.gethostname()}"
    with pytest.raises(OutputConflict, match="in use by another run"):
        store.lock(path)
    first.release()
    assert store.lock_holder(path) is None and not store.exists(path)
    # A lease whose heartbeat stopped long ago (a dead run elsewhere) is taken over.
    stale = {"run_id": "dead", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600, "ttl": 60}
    store.write_atomic(path, json.dumps(stale).encode())
    assert store.lock_holder(path) is None
    second = store.lock(path)
    assert json.loads(store.read_bytes(path))["run_id"] == second.run_id
    second.release()
    # A fresh lease from another host is honoured.
    fresh = dict(stale, heartbeat=time.time())
    store.write_atomic(path, json.dumps(fresh).encode())
    with pytest.raises(OutputConflict, match="elsewhere"):
        store.lock(path)
    store.remove(path)


def test_dead_pid_on_this_host_is_stale_at_once() -> None:
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    lease = {
        "run_id": "x",
        "host": socket.gethostname(),
        "pid": child.pid,
        "heartbeat": time.time(),
        "ttl": 60,
    }
    assert remote.lease_is_stale(lease)
    assert not remote.lease_is_stale(dict(lease, pid=__import__("os").getpid()))
    assert remote.lease_is_stale({"garbage": True})


# -- S3 through moto on loopback


@pytest.fixture
def s3(s3_server):  # noqa: F811
    store = storage_for("s3://")
    assert store.is_s3
    return store, f"s3://{s3_server.bucket}/t{time.monotonic_ns()}", s3_server


def test_s3_commit_makes_the_object_appear_whole(s3) -> None:
    store, root, server = s3
    client = server.client()
    path = f"{root}/shard-00000.parquet"
    data = bytes(range(256)) * (12 * 2**20 // 256)  # 12 MiB: one part goes up before commit
    pending = store.create(path)
    pending.stream.write(data)
    pending.stream.flush()
    assert not store.exists(path)
    assert len(uploads(client, server.bucket)) == 1  # the multipart upload is under way
    pending.commit()
    assert store.info(path).size == len(data)
    assert store.read_bytes(path) == data
    assert uploads(client, server.bucket) == []


def test_s3_discard_leaves_no_object_and_no_upload(s3) -> None:
    store, root, server = s3
    client = server.client()
    for size in (10, 9 * 2**20):  # a small one never started an upload; a big one did
        path = f"{root}/gone-{size}.npy"
        pending = store.create(path)
        pending.stream.write(b"x" * size)
        pending.stream.flush()
        pending.discard()
        assert not store.exists(path)
    assert uploads(client, server.bucket) == []
    assert not any(k.startswith(root.split("/", 3)[3]) for k in keys(client, server.bucket))


def test_s3_write_atomic_listings_and_fingerprints(s3) -> None:
    store, root, _ = s3
    for name in ["b/2.jsonl", "b/1.jsonl", "a.csv", "c/d/e.txt"]:
        store.write_atomic(f"{root}/{name}", name.encode())
    assert store.list_dir(root) == ["a.csv", "b", "c"]
    assert store.walk_files(root) == [f"{root}/{n}" for n in ["a.csv", "b/1.jsonl", "b/2.jsonl", "c/d/e.txt"]]
    assert store.glob(f"{root}/b/*.jsonl") == [f"{root}/b/1.jsonl", f"{root}/b/2.jsonl"]
    assert store.is_dir(f"{root}/b") and store.exists(f"{root}/a.csv") and not store.exists(f"{root}/zz")
    before = store.info(f"{root}/a.csv")
    assert before.fingerprint.startswith("etag:") and before.mtime_ns and before.size == 5
    store.write_atomic(f"{root}/a.csv", b"A.CSV")  # same size, same second: the ETag still changes
    after = store.info(f"{root}/a.csv")
    assert after.size == before.size and after.fingerprint != before.fingerprint
    assert store.info(f"{root}/missing") is None
    store.remove(f"{root}/a.csv")
    assert not store.exists(f"{root}/a.csv")


def test_s3_parquet_row_group_and_gzip_stream(s3) -> None:
    store, root, _ = s3
    table = pa.table({"id": list(range(3000)), "text": [f"row {i}" for i in range(3000)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=1000)
    store.write_atomic(f"{root}/in.parquet", buf.getvalue())
    with store.open_read(f"{root}/in.parquet") as f:
        pf = pq.ParquetFile(f)
        assert pf.num_row_groups == 3
        assert pf.read_row_group(1).column("id").to_pylist() == list(range(1000, 2000))
    lines = [f'{{"id": {i}, "text": "line {i}"}}\n' for i in range(5000)]
    store.write_atomic(f"{root}/in.jsonl.gz", gzip.compress("".join(lines).encode()))
    with store.open_read(f"{root}/in.jsonl.gz") as raw:
        text = io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8")
        assert list(text) == lines


def test_s3_lock_conditional_put_and_stale_takeover(s3) -> None:
    store, root, _ = s3
    path = f"{root}/.lock"
    body = b'{"run_id": "probe"}'
    created = store.put_if_absent(path, body)
    assert created == store.info(path).fingerprint  # the PUT's own ETag
    assert store.put_if_absent(path, body) is None  # If-None-Match: * honoured by the server
    assert store.put_if_match(path, b"{}", "etag:0000") is None  # If-Match: a stale ETag loses
    assert store.put_if_match(path, b"{}", created) == store.info(path).fingerprint
    store.remove(path)

    first = store.lock(path, ttl=60)
    with pytest.raises(OutputConflict, match="in use by another run") as exc:
        store.lock(path)
    assert exc.value.exit_code == ExitCode.OUTPUT_CONFLICT
    first.refresh()
    assert not first.lost
    # The lease goes stale (its heartbeat is an hour old): a new run takes it over.
    lease = json.loads(store.read_bytes(path))
    store.write_atomic(path, json.dumps(dict(lease, host="elsewhere", heartbeat=time.time() - 3600)).encode())
    second = store.lock(path, ttl=60)
    first.refresh()  # the old holder's conditional refresh fails: it learns it lost the lease
    assert first.lost
    first.release()  # must not delete the new holder's lease
    assert store.lock_holder(path) is not None
    second.release()
    assert not store.exists(path) and store.lock_holder(path) is None


def test_s3_takeover_aborts_only_the_dead_writers_uploads(s3) -> None:
    """A part of a job array taking over its own stale lease must not abort a live sibling
    part's shard upload under the same OUTPUT (found by tests/test_crash_random.py)."""
    store, root, server = s3
    client = server.client()
    layout = Layout(root, shard_index=0, num_shards=2)
    sibling = Layout(root, shard_index=1, num_shards=2)
    pending = {}
    for owner in (layout, sibling):  # one shard of each part half-way up (12 MiB: a part is sent)
        pending[owner] = store.create(f"{root}/{owner.shard_name(3)}.parquet")
        pending[owner].stream.write(b"x" * (12 * 2**20))
        pending[owner].stream.flush()
    assert len(uploads(client, server.bucket)) == 2
    dead = store.lock(layout.lock_path, ttl=60, owns=layout.owns)
    lease = json.loads(store.read_bytes(layout.lock_path))
    stale = dict(lease, host="elsewhere", heartbeat=time.time() - 3600)
    store.write_atomic(layout.lock_path, json.dumps(stale).encode())
    taker = store.lock(layout.lock_path, ttl=60, owns=layout.owns)
    left = [u["Key"].rsplit("/", 1)[-1] for u in uploads(client, server.bucket)]
    assert left == [f"{sibling.shard_name(3)}.parquet"]  # the dead part's upload went, the live one stays
    pending[sibling].commit()  # and the live part's shard still commits whole
    assert store.info(f"{root}/{sibling.shard_name(3)}.parquet").size == 12 * 2**20
    dead.refresh()
    taker.release()


def test_s3_heartbeat_refreshes_the_lease(s3) -> None:
    store, root, _ = s3
    path = f"{root}/.lock"
    lock = store.lock(path, ttl=0.4)  # beats every 0.1 s
    first = json.loads(store.read_bytes(path))["heartbeat"]
    deadline = time.time() + 5
    while json.loads(store.read_bytes(path))["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.05)
    assert json.loads(store.read_bytes(path))["heartbeat"] > first
    with pytest.raises(OutputConflict):
        store.lock(path)  # alive: not stale, although the ttl is short
    lock.release()
    assert not store.exists(path)


def test_s3_missing_bucket_is_one_input_error_line(s3) -> None:
    store, _, _ = s3
    with pytest.raises(InputError) as exc:
        store.write_atomic("s3://no-such-bucket-here/out/manifest.json", b"{}")
    assert str(exc.value) == "bucket not found: s3://no-such-bucket-here"
    assert exc.value.exit_code == ExitCode.INPUT_ERROR
    with pytest.raises(InputError, match="bucket not found"):
        store.create("s3://no-such-bucket-here/out/shard.parquet").commit()


def test_s3_wrong_credentials_are_one_line_without_the_secret(s3, monkeypatch) -> None:
    import moto.settings

    _, root, _ = s3
    bad = parse_storage_options([f"key={KEY_ID}", f"secret={SECRET}"])
    store = storage_for(root, bad)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks keys now
    for attempt in (
        lambda: store.write_atomic(f"{root}/x", b"1"),
        lambda: store.read_bytes(f"{root}/x"),
        lambda: store.lock(f"{root}/.lock"),
    ):
        with pytest.raises(InputError) as exc:
            attempt()
        msg = str(exc.value)
        assert msg.startswith("access denied to s3://") and "\n" not in msg
        assert SECRET not in msg and KEY_ID not in msg
        assert exc.value.exit_code == ExitCode.INPUT_ERROR


def test_s3_server_gone_mid_upload_is_exit_1(s3_server) -> None:  # noqa: F811
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store = storage_for(
        "s3://", {"endpoint_url": f"http://{host}:{port}", "config_kwargs": {"retries": {"max_attempts": 1}}}
    )
    import boto3

    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="gone")
    pending = store.create("s3://gone/shard.parquet")
    pending.stream.write(b"x" * (9 * 2**20))
    pending.stream.flush()
    server.stop()
    with pytest.raises(MinilmError) as exc:
        pending.commit()
    assert exc.value.exit_code == ExitCode.RUNTIME_FAILURE and "\n" not in str(exc.value)
    assert "testing" not in str(exc.value)
    pending.discard()


HOLD = """
import sys, time
from minilm_cli.errors import OutputConflict
from minilm_cli.storage import storage_for
try:
    lock = storage_for(sys.argv[1]).lock(sys.argv[1])
except OutputConflict as exc:
    print("refused:", exc, flush=True)
    sys.exit(3)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def _hold(path: str, seconds: float):
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, path, str(seconds)], stdout=subprocess.PIPE, text=True, env=env
    )


def test_s3_lease_of_a_killed_run_does_not_block_resume(s3) -> None:
    import signal

    store, root, _ = s3
    path = f"{root}/.lock"
    holder = _hold(path, 60)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputConflict, match=f"pid {holder.pid} on"):
        store.lock(path)  # a live run in another process is refused
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert store.exists(path)  # kill -9 left its lease behind...
    lock = store.lock(path)  # ...and it is taken over at once (same host, dead pid)
    lock.release()


def test_s3_two_processes_racing_one_wins(s3) -> None:
    store, root, _ = s3
    path = f"{root}/.lock"
    racers = [_hold(path, 1.5) for _ in range(2)]
    outs = [r.communicate(timeout=60)[0] for r in racers]
    assert sorted(r.returncode for r in racers) == [0, 3], outs
    assert not store.exists(path)


def test_storage_survives_fork_and_pickle(s3) -> None:
    import multiprocessing
    import pickle

    store, root, _ = s3
    store.write_atomic(f"{root}/f.txt", b"forked")
    again = pickle.loads(pickle.dumps(store))
    assert again.read_bytes(f"{root}/f.txt") == b"forked"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(store.read_bytes, (f"{root}/f.txt",)) == b"forked"


class SlowStream(io.RawIOBase):
    """A store with ``latency`` seconds per request."""

    def __init__(self, data: bytes, latency: float) -> None:
        self.data, self.latency, self.at = data, latency, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        time.sleep(self.latency)
        n = min(len(buffer), len(self.data) - self.at)
        buffer[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n


def test_prefetch_overlaps_request_latency_with_work() -> None:
    from minilm_cli.storage import prefetching

    data = bytes(range(256)) * 64  # 16 blocks of 1 KiB
    start = time.monotonic()
    with prefetching(SlowStream(data, 0.05), block_size=1024, depth=4) as f:
        got = b""
        while block := f.read(1024):
            time.sleep(0.05)  # the model's work on a block
            got += block
    elapsed = time.monotonic() - start
    assert got == data
    assert elapsed < 16 * 0.1 * 0.8, elapsed  # serial would take 16 x (50 + 50) ms

    class Broken(SlowStream):
        def readinto(self, buffer) -> int:
            if self.at:
                raise ConnectionError("store went away")
            return super().readinto(buffer)

    with pytest.raises(ConnectionError):
        with prefetching(Broken(data, 0), block_size=1024) as f:
            while f.read(1024):
                pass


def test_s3_open_sequential_and_arrow_dataset(s3) -> None:
    import pyarrow.dataset as ds

    from minilm_cli.storage import arrow_filesystem, open_sequential

    store, root, _ = s3
    lines = [f"line {i}\n" for i in range(20000)]
    store.write_atomic(f"{root}/in.txt.gz", gzip.compress("".join(lines).encode()))
    with open_sequential(f"{root}/in.txt.gz") as raw:
        assert list(io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8")) == lines
    for i in range(2):
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": [f"{i}-{j}" for j in range(5)]}), buf)
        store.write_atomic(f"{root}/data/shard-{i:05d}.parquet", buf.getvalue())
    fs, paths = arrow_filesystem(store.glob(f"{root}/data/*.parquet"))
    table = ds.dataset(paths, filesystem=fs, format="parquet").to_table()
    assert table.column("id").to_pylist()[:6] == ["0-0", "0-1", "0-2", "0-3", "0-4", "1-0"]


def test_s3_writers_stream_parquet_and_npy_into_pending_files(s3) -> None:
    import numpy as np

    store, root, _ = s3
    pending = store.create(f"{root}/data/shard-00000.parquet")
    writer = pq.ParquetWriter(pending.stream, pa.schema([("id", pa.int64())]))
    for i in range(3):
        writer.write_table(pa.table({"id": list(range(i * 10, i * 10 + 10))}))
    writer.close()
    assert not store.exists(pending.path)
    pending.commit()
    with store.open_read(pending.path) as f:
        assert pq.read_table(f).column("id").to_pylist() == list(range(30))
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    pending = store.create(f"{root}/embeddings/shard-00000.npy")
    np.save(pending.stream, vectors)
    pending.commit()
    with store.open_read(pending.path) as f:
        assert np.array_equal(np.load(f), vectors)
    assert store.read_range(pending.path, 0, 6) == b"\x93NUMPY"
