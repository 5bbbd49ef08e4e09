"""The default thread count follows what measures faster (minilm_cli/model/threads.py)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from minilm_cli.model import Embedder
from minilm_cli.model import threads as tuning
from minilm_cli.model.threads import ThreadTuner


def _run(tuner: ThreadTuner, batches: int) -> list[int]:
    """The thread count each of ``batches`` batches ran with."""
    used = []
    for _ in range(batches):
        with tuner.batch():
            used.append(torch.get_num_threads())
    return used


class ScriptedWatch:
    """Stands in for CoreWatch: other processes' busy cores, one value per reading (the last
    repeats)."""

    def __init__(self, readings: list[float]) -> None:
        self.readings = readings

    def others(self, least_s: float = 0.25) -> float | None:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


@pytest.fixture
def rates(monkeypatch: pytest.MonkeyPatch) -> dict[int, float]:
    """What the check measures per thread count (matmuls/s): set by the test, counted here."""
    table: dict[int, float] = {2: 200.0, 1: 100.0}
    checks: list[int] = []

    def rate(threads: int, dtype: torch.dtype) -> float:
        checks.append(threads)
        return table[threads]

    monkeypatch.setattr(tuning, "matmul_rate", rate)
    monkeypatch.setattr(tuning, "WATCH_EVERY_S", 0.0)
    table["checks"] = checks  # type: ignore[assignment]
    return table


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tuning, "_load_average", lambda: 0.0)  # a quiet machine unless told
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_core_taken_before_the_first_batch_starts_it_lower(rates: dict) -> None:
    rates[2] = 30.0  # two threads 3x slower than one: a spinner holds a core
    tuner = ThreadTuner(2, watch=ScriptedWatch([1.0]))
    assert _run(tuner, 8) == [1] * 8
    assert (
        rates["checks"] == [2, 1] * tuning.CHECK_ROUNDS
    )  # one check, alternating; none while the core stays taken
    why = "started at 1: other processes kept 1.0 of 2 cores busy; measured faster"
    assert tuner.note() == f"1 of 2 threads ({why})"


def test_a_quiet_machine_is_never_checked(rates: dict) -> None:
    tuner = ThreadTuner(2, watch=ScriptedWatch([0.05]))
    assert _run(tuner, 10) == [2] * 10 and rates["checks"] == []
    assert not tuner.tuned and tuner.note() == "2 threads"


def test_busy_others_that_do_not_slow_two_threads_keep_them(rates: dict) -> None:
    tuner = ThreadTuner(2, watch=ScriptedWatch([0.5]))  # busy, yet two threads measure faster
    assert _run(tuner, 6) == [2] * 6 and rates["checks"] == [2, 1] * tuning.CHECK_ROUNDS  # then a pause
    assert not tuner.tuned


def test_a_core_taken_mid_run_is_given_up(rates: dict) -> None:
    watch = ScriptedWatch([0.0, 0.0, 0.0])
    tuner = ThreadTuner(2, watch=watch)
    assert _run(tuner, 3) == [2, 2, 2]
    watch.readings, rates[2] = [0.9], 20.0  # a neighbour takes a core
    assert _run(tuner, 3) == [1, 1, 1]
    assert tuner.changes == [1] and tuner.note() == "1 of 2 threads (then 2 -> 1 as the cores changed hands)"


def test_a_core_freed_mid_run_is_taken_back(rates: dict) -> None:
    rates[2] = 30.0
    watch = ScriptedWatch([1.0])
    tuner = ThreadTuner(2, watch=watch)
    assert _run(tuner, 3) == [1, 1, 1]
    watch.readings, rates[2] = [0.1], 200.0  # the neighbour left
    assert _run(tuner, 2) == [2, 2]
    assert tuner.note().startswith("2 of 2 threads (started at 1: ") and tuner.note().endswith(
        "; then 1 -> 2 as the cores changed hands)"
    )


def test_a_fixed_count_run_chooses_once(rates: dict) -> None:
    rates[2] = 30.0
    watch = ScriptedWatch([1.0])
    tuner = ThreadTuner(2, adaptive=False, watch=watch)
    assert _run(tuner, 2) == [1, 1]
    watch.readings, rates[2] = [0.0], 200.0
    assert _run(tuner, 4) == [1] * 4  # fp32/int8: the bytes stay one count's all run


def test_without_a_watch_a_high_load_average_is_checked(rates: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "_load_average", lambda: 3.2)
    rates[2] = 30.0
    tuner = ThreadTuner(2)
    assert _run(tuner, 3) == [1, 1, 1]
    assert "load average 3.2; measured faster" in tuner.note()


def test_the_check_measures_a_real_matmul() -> None:
    rate = tuning.matmul_rate(1, torch.float32, seconds=0.02)
    assert rate > 1.0  # a 256x384x1536 product runs in far less than a second on any CPU


def test_threads_given_are_exact(tiny_model_dir: str) -> None:
    fp32 = Embedder(model=tiny_model_dir, device="cpu", precision="fp32")
    assert fp32.tuner is not None and not fp32.tuner.adaptive  # bytes kept: one count all run
    embedder = Embedder(model=tiny_model_dir, device="cpu", precision="bf16", threads=1)
    assert embedder.tuner is None and embedder.threads_note() == "1 thread"
    embedder.embed(["a few words"] * 50)
    assert torch.get_num_threads() == 1


def _stat(path, busy: int, nice: int) -> None:
    cpu = "cpu{n} {busy} {nice} 0 1000 0 0 0 0 0 0\n"
    path.write_text(
        "cpu 0 0 0 0 0 0 0 0 0 0\n" + "".join(cpu.format(n=n, busy=busy, nice=nice) for n in (0, 1))
    )


def test_the_watch_counts_others_busy_time_but_not_niced_time(tmp_path) -> None:
    stat = tmp_path / "stat"
    _stat(stat, busy=100, nice=0)
    watch = tuning.CoreWatch({0, 1}, stat=str(stat))
    watch.count_nice = False
    time.sleep(0.5)
    ticks = int(0.5 / watch.tick)  # half a second of busy time on each of the two cores
    _stat(stat, busy=100 + ticks, nice=5 * ticks)
    others = watch.others()
    assert others is not None and 1.5 <= others <= 2.05  # two cores' worth, less our (idle) time
    assert watch.others() is None  # too soon after the last reading to tell


def test_the_watch_sees_a_real_spinning_process() -> None:
    import subprocess
    import sys

    watch = tuning.CoreWatch.open(len(os.sched_getaffinity(0)))
    if watch is None:
        pytest.skip("no /proc/stat for this process's cores")
    spin = "import time\nend = time.monotonic() + 0.8\nwhile time.monotonic() < end: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    others = watch.others()
    assert others is not None and others >= 0.5  # most of a core, over the spinner's life and start


def test_two_threads_that_only_keep_pace_with_one_lose(rates: dict) -> None:
    rates[2] = 110.0  # a thread sharing its core with a spinner: the team barely beats one thread
    tuner = ThreadTuner(2, watch=ScriptedWatch([0.6]))
    assert _run(tuner, 2) == [1, 1]
    rates[2], rates[1] = 150.0, 100.0  # 1.5x: a third of the ideal gain and more, so two win
    assert ThreadTuner(2, watch=ScriptedWatch([0.6]))._faster(2, 1) == 2


def test_the_manifest_records_the_count_the_run_chose(
    tmp_path, tiny_model_dir: str, rates: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import cli, manifest

    from minilm_cli.devices import usable_cpus

    if usable_cpus() < 2:
        pytest.skip("one core: no thread count to choose")
    rates[2] = 30.0  # a core taken: the check picks one thread fewer
    monkeypatch.setattr(tuning.CoreWatch, "open", staticmethod(lambda most: ScriptedWatch([1.0])))
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line number {i}\n" for i in range(40)))
    args = ["embed", str(src), "-o", str(tmp_path / "out"), "--model", tiny_model_dir]
    result = cli([*args, "--device", "cpu", "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    fewer = f"{usable_cpus() - 1} of {usable_cpus()} threads (started at {usable_cpus() - 1}: "
    assert manifest(tmp_path / "out")["runtime"]["threads"].startswith(fewer)  # not the start's guess
    assert fewer in result.output
