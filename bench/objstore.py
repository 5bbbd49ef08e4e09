"""End-to-end rows/s from local disk and from an S3 server, side by side, in one run.

    python bench/objstore.py [--rows 5000] [--latency-ms 50] [--device cpu] [--rounds 1]

The same JSONL rows (bench/data/mixed.jsonl.gz, repeated to --rows) are embedded with the
packaged all-MiniLM-L6-v2 (model loaded once, as in a long job), file to file:
  - local disk -> local disk,
  - S3 -> S3 through s3fs against a moto server on 127.0.0.1 (a child process, so its
    request handling does not share the benchmark's GIL),
  - the same, through a second port of that server that sleeps --latency-ms before every
    request (the same objects: both ports share moto's backend).
Parquet layout, default flags otherwise. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SERVER = r"""
import json, sys, threading, time
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

delay = float(sys.argv[1]) / 1000
app = DomainDispatcherApplication(create_backend_app)

def slow(environ, start_response):
    time.sleep(delay)
    return app(environ, start_response)

servers = [make_server("127.0.0.1", 0, a, threaded=True) for a in (app, slow)]
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print(json.dumps([s.server_address[1] for s in servers]), flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""


def start_server(latency_ms: float) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(latency_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug logs every request
        text=True,
    )
    plain, slow = json.loads(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{plain}", f"http://127.0.0.1:{slow}"


def run(cfg_kwargs: dict, embedder, rows: int) -> float:
    from minilm_cli.config import EmbedConfig
    from minilm_cli.pipeline import run_job

    cfg = EmbedConfig(**cfg_kwargs)
    t = time.perf_counter()
    result = run_job(cfg, embedder, log=lambda m: None)
    seconds = time.perf_counter() - t
    assert result.rows == rows, (result.rows, rows)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    args = parser.parse_args()

    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ.pop("AWS_PROFILE", None)
    from throughput import load_texts

    texts = load_texts(args.rows)
    data = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode()

    server, plain, slow = start_server(args.latency_ms)
    try:
        import boto3

        boto3.client("s3", endpoint_url=plain, region_name="us-east-1").create_bucket(Bucket="bench")
        boto3.client("s3", endpoint_url=plain, region_name="us-east-1").put_object(
            Bucket="bench", Key="in/corpus.jsonl", Body=data
        )
        from minilm_cli.config import EmbedConfig
        from minilm_cli.pipeline import build_embedder
        from minilm_cli.storage import configure_storage

        base = {"model": args.model, "device": args.device, "quiet": True, "overwrite": True}
        embedder = build_embedder(EmbedConfig(inputs=[], output="-", **base))
        embedder.embed(texts[:256])  # warm-up

        with tempfile.TemporaryDirectory() as tmp:
            local_in = Path(tmp) / "corpus.jsonl"
            local_in.write_bytes(data)
            cases = [
                ("local disk -> local disk", None, str(local_in), str(Path(tmp) / "out")),
                ("S3 (moto) -> S3", plain, "s3://bench/in/corpus.jsonl", "s3://bench/out-plain"),
                (
                    f"S3 +{args.latency_ms:g} ms/request -> S3",
                    slow,
                    "s3://bench/in/corpus.jsonl",
                    "s3://bench/out-slow",
                ),
            ]
            times: dict[str, list[float]] = {name: [] for name, *_ in cases}
            for _ in range(args.rounds):
                for name, endpoint, src, out in cases:  # alternate, so drift hits all alike
                    configure_storage({"endpoint_url": endpoint} if endpoint else None)
                    times[name].append(run({"inputs": [src], "output": out, **base}, embedder, args.rows))
    finally:
        server.stdin.close()
        server.wait(timeout=10)

    import statistics

    local = statistics.median(times[cases[0][0]])
    print(f"{args.rows} rows, model {embedder.source.name}, device {embedder.device}, rounds {args.rounds}")
    print(f"{'case':<34}{'seconds':>9}{'rows/s':>10}{'vs local':>10}")
    for name in times:
        s = statistics.median(times[name])
        print(f"{name:<34}{s:>9.2f}{args.rows / s:>10.0f}{local / s:>9.2f}x")


if __name__ == "__main__":
    main()
