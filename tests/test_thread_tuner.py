"""The default thread count follows what measures faster (minilm_cli/model/threads.py)."""

from __future__ import annotations

import time

import pytest
import torch

from minilm_cli.model import Embedder
from minilm_cli.model import threads as tuning
from minilm_cli.model.threads import ThreadTuner


def _run(tuner: ThreadTuner, batches: int, seconds_per_token: dict[int, float]) -> list[int]:
    """Batches of 100 padded tokens whose time depends on the thread count they ran with."""
    used = []
    for _ in range(batches):
        with tuner.batch(100):
            used.append(torch.get_num_threads())
            time.sleep(100 * seconds_per_token[torch.get_num_threads()])
    return used


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tuning, "_load_average", lambda: 0.0)  # a quiet machine unless told
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_losing_thread_count_is_dropped_and_said() -> None:
    tuner = ThreadTuner(2)
    used = _run(tuner, 12, {2: 4e-4, 1: 1e-4})  # two threads 4x slower: a busy core
    assert used[:3] == [2, 2, 1]  # a warm-up batch, then the probe alternates
    assert tuner.current == 1 and used[-1] == 1
    assert tuner.note() == "1 of 2 threads (tuned 2 -> 1; measured faster per token)"


def test_a_loaded_machine_starts_one_thread_lower_and_still_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "_load_average", lambda: 3.2)
    tuner = ThreadTuner(2)
    used = _run(tuner, 8, {2: 1e-4, 1: 3e-4})  # yet two threads measure faster: they win
    assert used[0] == 1 and tuner.current == 2
    why = "started at 1: load average 3.2; tuned 1 -> 2; measured faster per token"
    assert tuner.note() == f"2 of 2 threads ({why})"


def test_a_winning_thread_count_stays() -> None:
    tuner = ThreadTuner(2)
    used = _run(tuner, 12, {2: 1e-4, 1: 3e-4})
    assert tuner.current == 2 and not tuner.changes and used[-4:] == [2, 2, 2, 2]
    assert tuner.note() == "2 threads"


def test_it_probes_again_when_a_core_becomes_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "PROBE_EVERY_S", 0.05)
    monkeypatch.setattr(tuning, "PROBE_EVERY_MAX_S", 0.2)
    tuner = ThreadTuner(2)
    _run(tuner, 10, {2: 1e-4, 1: 3e-4})
    assert tuner.current == 2
    _run(tuner, 30, {2: 6e-4, 1: 1e-4})  # mid-run, a neighbour takes a core
    assert tuner.current == 1 and tuner.changes == [1]


def test_threads_given_are_exact(tiny_model_dir: str) -> None:
    assert Embedder(model=tiny_model_dir, device="cpu", precision="fp32").tuner is None  # bytes kept
    embedder = Embedder(model=tiny_model_dir, device="cpu", precision="bf16", threads=1)
    assert embedder.tuner is None and embedder.threads_note() == "1 threads"
    embedder.embed(["a few words"] * 50)
    assert torch.get_num_threads() == 1
