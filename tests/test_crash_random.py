"""kill -9 at random moments, many times over, the way trusted data stores test crash safety.

One job (three parts, ``--num-shards 3``, started together as subprocesses) runs locally and
on the loopback S3 server. Each part has its own random lifetime after every (re)start, and
now and then the whole array is killed at once (a machine going down); every SIGKILL is
followed by a restart with ``--resume``. Lifetimes are uniform over 0..E, where E is how long
the same job took clean just before on this machine, so kills land at start-up, inside model
batches, during shard commits and manifest writes, and at the final join. After 30 kills the
parts run to the end; ``merge-manifests`` and ``verify`` must pass and every file must equal
the clean run's byte for byte (CPU fp32). A job that finishes before the 30th kill is checked
the same way and run again from an empty OUTPUT, so every kill lands in a live job.

The randomness is seeded: the seed is printed (``MINILM_CRASH_SEED=...``) and named in every
failure; ``MINILM_CRASH_SEED=<seed> pytest tests/test_crash_random.py`` replays the same
schedule (the moments it reaches depend on the machine's speed, as any crash test's do).
"""

from __future__ import annotations

import hashlib
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, cli, model_args, write_corpus

from minilm_cli.errors import MinilmError
from minilm_cli.output.manifest import Manifest
from minilm_cli.storage import storage_for

PARTS = 3
KILLS = 30
ROWS = 15_000
# 10 shards per part, 5 chunks per shard, several batches per chunk: many commits to land in.
PLAN = ["--shard-rows", "500", "--chunk-size", "100", "--batch-size", "32"]
FINISH_LIMIT_S = 300  # a part that has not ended by then is hung


def crash_seed() -> int:
    raw = os.environ.get("MINILM_CRASH_SEED")
    seed = int(raw) if raw else time.time_ns() % 2**32
    print(f"MINILM_CRASH_SEED={seed}")
    return seed


def part_manifest(index: int) -> str:
    return f"manifest-{index:05d}-of-{PARTS:05d}.json"


@dataclass
class Job:
    """The same embed command for every part, into an OUTPUT named by the round."""

    source: str
    model: str
    output_for: Callable[[str], str]
    env: dict[str, str]

    def args(self, out: str, index: int, resume: bool) -> list[str]:
        return [
            sys.executable,
            "-m",
            "minilm_cli.cli",
            "embed",
            self.source,
            "-o",
            out,
            "--num-shards",
            str(PARTS),
            "--shard-index",
            str(index),
            *PLAN,
            *model_args(self.model),
            "-q",
            *(["--resume"] if resume else []),
        ]


@dataclass
class Part:
    """One part's current process (a life), its log, and its own stream of lifetimes."""

    index: int
    lifetimes: random.Random
    log_dir: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    deadline: float = float("inf")
    lives: int = 0
    done: bool = False
    log: Path = field(default=Path())

    def start(self, job: Job, out: str, resume: bool, lifetime_s: float | None) -> None:
        self.lives += 1
        self.log = self.log_dir / f"part{self.index}-life{self.lives}.err"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                job.args(out, self.index, resume),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=job.env,
                cwd=REPO,
            )
        self.started = time.monotonic()
        self.deadline = self.started + lifetime_s if lifetime_s is not None else float("inf")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, seed: int) -> bool:
        """SIGKILL and reap (a reaped pid is what tells the next run's lease the holder died).
        False when the process had ended by itself just before: then it is no kill."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        if self.proc.returncode != -signal.SIGKILL:
            return not self.ended_by_itself(seed)
        self.proc = None
        return True

    def ended_by_itself(self, seed: int) -> bool:
        """True once the process has exited on its own, which must be a success."""
        if self.proc is None or self.proc.poll() is None:
            return False
        code = self.proc.returncode
        self.proc = None
        err = self.log.read_text(errors="replace").strip()
        assert code == 0, f"seed {seed}: part {self.index} life {self.lives} exited {code}: {err[-2000:]}"
        assert err == "", f"seed {seed}: part {self.index} said on stderr under -q: {err[-2000:]}"
        self.done = True
        return True


def run_clean(job: Job, out: str, log_dir: Path) -> float:
    """The job without kills, three parts together as the killed ones run; its wall time."""
    (log_dir / "clean-logs").mkdir()
    parts = [Part(i, random.Random(0), log_dir / "clean-logs") for i in range(PARTS)]
    began = time.monotonic()
    for part in parts:
        part.start(job, out, resume=False, lifetime_s=None)
    for part in parts:
        part.proc.wait(timeout=FINISH_LIMIT_S)
        assert part.ended_by_itself(seed=-1)
    took = time.monotonic() - began
    merged = cli(["merge-manifests", out])
    assert merged.exit_code == 0, merged.output
    return took


def where_it_died(out: str, index: int) -> str:
    """What the killed part had got to, read after its death: the exact state it left."""
    try:
        doc = Manifest.load(os.path.join(out, part_manifest(index))).doc
    except (MinilmError, OSError, ValueError):
        return "start-up (no manifest yet)"
    if doc.get("status") == "complete":
        return "after its compacted manifest"
    return f"{len(doc.get('shards', []))} shard(s) listed"


class Chaos:
    """The kill schedule: each part's lifetimes and the whole-array kills, all from the seed."""

    def __init__(self, job: Job, seed: int, clean_s: float, log_dir: Path) -> None:
        self.job, self.seed, self.clean_s = job, seed, clean_s
        self.parts = [Part(i, random.Random(f"{seed}/part{i}"), log_dir) for i in range(PARTS)]
        self.array_kills = random.Random(f"{seed}/all")
        self.kills: list[tuple[str, list[str]]] = []  # (whom, where each victim died)

    def lifetime(self, part: Part) -> float:
        return part.lifetimes.uniform(0, self.clean_s)

    def array_gap(self) -> float:
        # rarer than one part's death (about a kill in five), so that lives reach past start-up
        return self.array_kills.uniform(0, 3 * self.clean_s)

    def run_round(self, out: str) -> None:
        """One job into an empty OUTPUT: killed until the job ends or the kills run out."""
        for part in self.parts:
            part.done, part.proc = False, None
        next_array_kill = time.monotonic() + self.array_gap()
        while not all(p.done for p in self.parts):
            killing = len(self.kills) < KILLS
            for part in self.parts:
                if not part.done and part.proc is None:
                    part.start(
                        self.job, out, resume=True, lifetime_s=self.lifetime(part) if killing else None
                    )
            if not killing:
                self.finish(out)
                return
            now = time.monotonic()
            alive = [p for p in self.parts if not p.ended_by_itself(self.seed) and p.running()]
            if now >= next_array_kill:
                victims, whom = alive, "all"
                next_array_kill = now + self.array_gap()
            else:
                victims = [p for p in alive if now >= p.deadline]
                whom = ",".join(str(p.index) for p in victims)
            victims = [p for p in victims if p.kill(self.seed)]
            if victims:
                self.kills.append((whom, [where_it_died(out, p.index) for p in victims]))
            time.sleep(0.005)

    def finish(self, out: str) -> None:
        """No more kills: every part runs to its end, within the limit (else it hung)."""
        for part in self.parts:
            if part.proc is not None:
                part.deadline = float("inf")
        limit = time.monotonic() + FINISH_LIMIT_S
        while not all(p.done for p in self.parts):
            for part in self.parts:
                part.ended_by_itself(self.seed)
            assert time.monotonic() < limit, f"seed {self.seed}: a resumed part hung past {FINISH_LIMIT_S} s"
            time.sleep(0.02)

    def report(self) -> str:
        deaths = Counter(where for _, wheres in self.kills for where in wheres)
        lives = {p.index: p.lives for p in self.parts}
        whole = sum(1 for whom, _ in self.kills if whom == "all")
        return (
            f"seed {self.seed}: {len(self.kills)} kills ({whole} of the whole array), "
            f"clean run {self.clean_s:.1f} s, lives per part {lives}, deaths {dict(deaths)}"
        )


def stored_files(out: str) -> dict[str, str]:
    """Every file of OUTPUT but the manifests (run ids, times) and locks, with its sha256."""
    store = storage_for(out)
    files = {}
    for path in store.walk_files(out):
        rel = path[len(out) :].lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(("manifest", ".manifest")) and ".json" in name:
            continue
        files[rel] = hashlib.sha256(store.read_bytes(path)).hexdigest()
    return files


def rows(out: str) -> tuple[list, np.ndarray]:
    """ids and embeddings over the merged manifest's shards, in order."""
    store = storage_for(out)
    ids, blocks = [], []
    for shard in Manifest.load(os.path.join(out, "manifest.json")).doc["shards"]:
        with store.open_read(os.path.join(out, shard["files"]["data"]["path"])) as f:
            table = pq.read_table(f)
        column = table.column("embedding").combine_chunks()
        blocks.append(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size))
        ids += table.column("id").to_pylist()
    return ids, np.concatenate(blocks)


def assert_same_as_clean(out: str, clean: str, seed: int) -> None:
    merged = cli(["merge-manifests", out])
    assert merged.exit_code == 0, f"seed {seed}: {merged.output}"
    check = cli(["verify", out])
    assert check.exit_code == 0, f"seed {seed}: {check.output}"
    got_files, want_files = stored_files(out), stored_files(clean)
    differ = sorted(
        f"{name} ({'extra' if name not in want_files else 'missing' if name not in got_files else 'bytes'})"
        for name in set(got_files) | set(want_files)
        if got_files.get(name) != want_files.get(name)
    )
    assert not differ, f"seed {seed}: files differ from the clean run: {', '.join(differ[:10])}"
    got, want = (Manifest.load(os.path.join(o, "manifest.json")).doc for o in (out, clean))
    assert got["shards"] == want["shards"], f"seed {seed}"
    assert got["totals"]["rows"] == want["totals"]["rows"] == ROWS, f"seed {seed}"
    got_ids, got_vectors = rows(out)
    want_ids, want_vectors = rows(clean)
    assert got_ids == want_ids == list(range(ROWS)), f"seed {seed}"
    assert got_vectors.dtype == np.float32 and got_vectors.tobytes() == want_vectors.tobytes(), f"seed {seed}"


def crash_many_times(job: Job, log_dir: Path) -> None:
    seed = crash_seed()
    clean = job.output_for("clean")
    clean_s = run_clean(job, clean, log_dir)
    chaos = Chaos(job, seed, clean_s, log_dir)
    rounds = 0
    while len(chaos.kills) < KILLS:
        rounds += 1
        out = job.output_for(f"round{rounds}")
        chaos.run_round(out)
        assert_same_as_clean(out, clean, seed)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(chaos.report(), f"in {rounds} job(s); subprocess CPU {cpu.ru_utime + cpu.ru_stime:.0f} s so far")
    mid_run = sum(1 for _, wheres in chaos.kills for w in wheres if not w.startswith("start-up"))
    # Not a flaky coverage demand: a kill past start-up has p >= 1/3 each time, so 30 with none
    # means the schedule is broken (it would test only start-up).
    assert mid_run > 0, chaos.report()


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("MINILM_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("crash-in") / "corpus.txt", ROWS, seed=25)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_a_clean_run(tmp_path, tiny_model_dir, corpus):
    job = Job(str(corpus), tiny_model_dir, lambda name: str(tmp_path / name), subprocess_env())
    crash_many_times(job, tmp_path)


@pytest.mark.slow
def test_kill_9_at_random_moments_on_s3_then_resume_equals_a_clean_run(
    tmp_path, tiny_model_dir, corpus, s3_server
):
    bucket = s3_server.new_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="in/corpus.txt", Body=corpus.read_bytes())
    job = Job(
        f"s3://{bucket}/in/corpus.txt", tiny_model_dir, lambda name: f"s3://{bucket}/{name}", subprocess_env()
    )
    crash_many_times(job, tmp_path)
    # a killed part's unfinished multipart uploads are aborted by the run that takes over
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
