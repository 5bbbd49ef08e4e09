"""The default CPU thread count, kept only while it measures fastest (no --threads given).

Why: on a shared machine one busy core makes torch's thread team wait at every barrier for
the thread that core's scheduler holds back; two threads then ran 3-4x slower than one (issue
22). So the tuner starts with every usable core and, while batches run, probes the other
candidates (one thread fewer, half): batches alternate between the counts, each batch timed
per padded token, and the count with the lowest time wins. Batches of a chunk are
length-sorted, so neighbours cost alike and alternating compares like with like. A core can
become busy (or free) mid-run, so the probe repeats, at first after PROBE_EVERY_S of model
time, then at doubling intervals while the choice stands. ``--threads N`` is exact: no tuner.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PROBE_BATCHES = 3  # batches per candidate in one probe (alternating), at most
CLEAR = 1.5  # a probe ends as soon as one count is this much slower per token than another
PROBE_EVERY_S = 10.0  # model seconds before the first re-probe; doubles while the choice stands
PROBE_EVERY_MAX_S = 60.0
MARGIN = 0.05  # a candidate must be this much faster per token to replace the current count
FAR_SLOWER = 2.0  # a count that lost by this much is probed again only after PROBE_EVERY_MAX_S


class ThreadTuner:
    """Sets torch's thread count before each batch; learns from each batch's time."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.load = _load_average()  # others' claim on the cores: start one thread lower
        self.current = self.start = most if self.load < most - 0.5 else max(1, most - 1)
        self.candidates = sorted({most, max(1, most - 1), max(1, most // 2)}, reverse=True)
        self.changes: list[int] = []  # the counts chosen after the first, in order
        self._plan: list[int] = []  # the first batch warms the kernels up: not a fair sample
        self._probe: dict[int, list[float]] = {n: [0.0, 0.0] for n in self.candidates}
        self._since_probe = 0.0
        self._interval = 0.0  # probe right after the first batch

    def _probe_plan(self) -> list[int]:
        return self.candidates * PROBE_BATCHES if len(self.candidates) > 1 else []

    @contextmanager
    def batch(self, padded_tokens: int) -> Iterator[None]:
        """Around one batch on the CPU: its thread count set, its time per token recorded."""
        threads = self._plan[0] if self._plan else self.current
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        if self._plan:
            self._plan.pop(0)
            spent = self._probe[threads]
            spent[0], spent[1] = spent[0] + seconds, spent[1] + padded_tokens
            if not self._plan or self._clear():
                self._plan = []
                self._decide()
        else:
            self._since_probe += seconds
            if self._since_probe >= self._interval:
                self._plan, self._since_probe = self._probe_plan(), 0.0

    def _clear(self) -> bool:
        """Every count sampled once and one far slower than another: more batches would only cost."""
        per_token = [s / t for s, t in self._probe.values() if t]
        return len(per_token) == len(self.candidates) and max(per_token) > CLEAR * min(per_token)

    def _decide(self) -> None:
        per_token = {n: s / max(t, 1) for n, (s, t) in self._probe.items() if t}
        best = min(per_token, key=per_token.get)
        if best != self.current and per_token[best] < per_token[self.current] * (1 - MARGIN):
            self.current = best
            self.changes.append(best)
            self._interval = PROBE_EVERY_S
        else:
            self._interval = min(max(self._interval * 2, PROBE_EVERY_S), PROBE_EVERY_MAX_S)
        if max(per_token.values()) > FAR_SLOWER * per_token[best]:  # probing the loser costs much
            self._interval = PROBE_EVERY_MAX_S
        self._probe = {n: [0.0, 0.0] for n in self.candidates}

    @property
    def tuned(self) -> bool:
        """The run did not (or not only) use every core: worth a word in the summary."""
        return bool(self.changes) or self.start != self.most

    def note(self) -> str:
        """For the summary line and the manifest: what the run ended on, and why."""
        if not self.tuned:
            return f"{self.current} threads"
        why = [f"started at {self.start}: load average {self.load:.1f}"] if self.start != self.most else []
        if self.changes:
            why.append("tuned " + " -> ".join(str(n) for n in [self.start, *self.changes]))
        return f"{self.current} of {self.most} threads ({'; '.join(why)}; measured faster per token)"


def _load_average() -> float:
    """The last minute's run-queue length: other processes' claim on the cores before we start."""
    try:
        return os.getloadavg()[0]
    except OSError:  # not on every platform
        return 0.0
