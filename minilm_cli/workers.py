"""Several devices on one machine: one worker process per device, one progress bar, one manifest.

``--device cuda:0,cuda:1`` (or ``cuda:all``) runs the static sharding of sharding.py with one
shard index per device, each in its own process, then merges the manifest parts. CPU workers
(``--device cpu,cpu``) stand in for devices in the tests.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from dataclasses import replace
from typing import Any

from tqdm import tqdm

from .config import EmbedConfig
from .devices import usable_cpus
from .errors import ExitCode, InputError, Interrupted, MinilmError, OutputConflict
from .output import Manifest, manifest_name, merge_manifests
from .storage import redact, redact_url, storage_for, storage_options


def parse_devices(spec: str) -> list[str] | None:
    """The devices of a multi-device --device, or None for a single device."""
    if spec.endswith(":all"):
        import torch

        kind = spec[: -len(":all")]
        if kind != "cuda" or not torch.cuda.is_available():
            raise InputError(f"--device {spec}: no CUDA devices visible here")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if "," in spec:
        return [d.strip() for d in spec.split(",") if d.strip()]
    return None


def run_on_devices(cfg: EmbedConfig, devices: list[str]) -> dict[str, Any]:
    """Run one worker per device over a static sharding of the inputs; merge their manifests."""
    if cfg.num_shards != 1:
        raise InputError(
            "several devices and --num-shards cannot be combined; give one device per array task"
        )
    if cfg.to_stdout:
        raise InputError("several devices need a directory OUTPUT, not -o -")
    merged = os.path.join(cfg.output, "manifest.json")
    storage = storage_for(cfg.output)
    if cfg.overwrite and storage.exists(merged):
        storage.remove(merged)  # the workers replace their parts; the merged list would be stale
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    events: Any = ctx.Queue()
    threads = cfg.threads or max(1, usable_cpus() // len(devices))
    from .pipeline.host import spare_cores

    host = cfg.host_workers
    if host is None and any(not d.startswith("cpu") for d in devices):
        host = spare_cores(usable_cpus() // len(devices))  # each GPU's share of the cores
    procs = []
    since = time.time_ns() - 2_000_000_000 if cfg.overwrite else None  # older: the replaced run's
    for index, device in enumerate(devices):
        worker_cfg = replace(
            cfg,
            device=device,
            num_shards=len(devices),
            shard_index=index,
            quiet=True,
            threads=threads,
            host_workers=host,
        )
        if index and calibrates(cfg):  # worker 0 calibrates; the others take its ranges
            ranges = _first_ranges(procs[0], os.path.join(cfg.output, manifest_name(0, len(devices))), since)
            worker_cfg = replace(worker_cfg, ranges=ranges, calibration=None)
        proc = ctx.Process(
            target=_worker,
            args=(worker_cfg, events, storage_options()),  # --storage-option, for the spawned child
            name=f"minilm-{device}",
            daemon=False,
        )
        proc.start()
        procs.append(proc)
    failures = _watch(procs, events, cfg.quiet)
    if failures:
        code, message = failures[0]
        raise MinilmError(f"{len(failures)} of {len(devices)} device workers failed; first: {message}", code)
    path, problems = merge_manifests(cfg.output)
    if problems:
        raise OutputConflict("workers finished but their manifests do not merge: " + "; ".join(problems[:3]))
    return {"manifest": redact_url(path), "workers": len(devices)}


def calibrates(cfg: EmbedConfig) -> bool:
    """int8/uint8 without --ranges: the workers must not each calibrate on their own device
    (two devices may differ in the last bit, and the parts would not merge)."""
    return cfg.dtype in ("int8", "uint8") and not cfg.ranges


def _first_ranges(first: Any, path: str, since: int | None, poll: float = 0.2) -> str | None:
    """``path``, worker 0's manifest part, once it records this run's ranges (written after
    ``since`` under --overwrite); None if worker 0 ended first (it reports why)."""
    storage = storage_for(path)
    while first.is_alive():
        info = storage.info(path)
        fresh = info is not None and (since is None or info.mtime_ns is None or info.mtime_ns >= since)
        if fresh:
            try:
                if Manifest.load(path, storage).doc.get("settings", {}).get("ranges") is not None:
                    return path
            except MinilmError:
                pass  # being replaced: look again
        time.sleep(poll)
    return None


def _watch(procs: list, events: Any, quiet: bool) -> list[tuple[int, str]]:
    """Show one progress bar for all workers; forward SIGINT/SIGTERM; collect failures."""
    bar = tqdm(
        unit=" rows",
        desc=f"embedding on {len(procs)} devices",
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
    )
    failures: list[tuple[int, str]] = []
    done = 0

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.is_alive():
                p.terminate() if signum == signal.SIGTERM else _interrupt(p)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while done < len(procs):
            try:
                kind, value = events.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and events.empty():
                    break
                continue
            if kind == "rows":
                bar.update(value)
            elif kind == "done":
                done += 1
            elif kind == "error":
                failures.append(value)
                done += 1
        for p in procs:
            p.join()
        while True:  # a worker's last events may still be in flight after it exited
            try:
                kind, value = events.get(timeout=0.2)
            except queue.Empty:
                break
            if kind == "error":
                failures.append(value)
            elif kind == "rows":
                bar.update(value)
        if not failures:
            failures += [
                (ExitCode.RUNTIME_FAILURE, f"worker {p.name} exited with {p.exitcode}")
                for p in procs
                if p.exitcode
            ]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        bar.close()
    return failures


def _interrupt(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGINT)


def _worker(cfg: EmbedConfig, events: Any, options: dict[str, Any] | None = None) -> None:
    from .pipeline import run_job
    from .storage import configure_storage

    configure_storage(options)  # a spawned process starts without the parent's --storage-option

    # Out of the terminal's process group: Ctrl-C reaches the parent alone, which stops each
    # worker exactly once (a worker signalled twice would stop less cleanly).
    os.setpgrp()

    error: tuple[int, str] | None = None
    try:
        run_job(cfg, log=lambda message: None, on_rows=lambda n: events.put(("rows", n)))
        events.put(("done", None))
    except MinilmError as exc:
        error = (int(exc.exit_code), f"{cfg.device}: {exc}")
    except KeyboardInterrupt:
        error = (int(ExitCode.INTERRUPTED_SIGINT), f"{cfg.device}: interrupted")
    except Exception as exc:  # noqa: BLE001 - reported by the parent as one line
        error = (
            int(ExitCode.RUNTIME_FAILURE),
            f"{cfg.device}: {type(exc).__name__}: {redact(str(exc), options)}",
        )
    if error is not None:
        events.put(("error", error))
        events.close()
        events.join_thread()  # the parent must see why, not only an exit code
        sys.exit(error[0])
