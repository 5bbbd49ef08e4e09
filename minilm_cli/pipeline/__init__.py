"""One embedding job, file to shards: source -> check -> chunk -> tokenize -> model -> sink.

Three stages overlap, joined by small bounded queues so memory stays flat however long
the input is:

  reader thread   read, check, chunk, tokenize, pad (and pin, on CUDA)   stages.py
  main thread     the model                                              engine.py
  writer thread   shards, rejects, the manifest after every shard        to_directory.py / to_stdout.py

run.py plans a run and drives the loop; threads.py holds the plumbing and the signal guard.
"""

from __future__ import annotations

from .engine import Engine, LocalEngine
from .result import JobResult
from .run import Plan, Run, plan_run, run_job
from .settings import build_embedder, check_config, run_settings
from .stages import Stages

__all__ = [
    "Engine",
    "JobResult",
    "LocalEngine",
    "Plan",
    "Run",
    "Stages",
    "build_embedder",
    "check_config",
    "plan_run",
    "run_job",
    "run_settings",
]
