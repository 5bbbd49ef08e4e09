"""The default CPU thread count: the cores other processes leave free (no --threads given).

Why: on a shared machine one busy core makes torch's thread team wait at every barrier for the
thread that core's scheduler holds back; two threads then ran 3-4x slower than one (issue 22).
Timing real batches at each count finds that out only by running slow batches (one cost as much
as four fast ones). So the tuner looks first and measures small: ``CoreWatch`` reads, from
/proc/stat, how much of our cores other processes keep busy (a niced process yields to us and
does not count); when they take some, a check of about a third of a second times a fixed feed-
forward block of the model's shape at the current count and at its neighbour, alternating, and
the faster count stays (more threads must earn their keep, see _faster). The check runs before
the first batch (when others were busy during the model's load) and, in bf16 and fp16, again
whenever the watch sees a core taken or freed (at most every 10-60 s while the choice stands).
Where /proc/stat cannot speak for our cores (another OS; a cgroup quota below the cores we may
run on) the check runs at the start when the load average is high, and every 10-60 s. fp32 and
int8 keep the count they start with: their bytes may depend on it and stay the same all run.
``--threads N`` is exact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CHECK_SLICE_S = 0.05  # wall seconds of one timed slice of the check
CHECK_ROUNDS = 3  # slices per count in one check, alternating: about 0.3 s in all
CHECK_EVERY_S = 10.0  # wall seconds after a check before the next; doubles while the choice stands
CHECK_EVERY_MAX_S = 60.0
SUSPECT = 0.15  # cores' worth of others' busy time that is worth a check
FREED = 0.7  # a core this free (others' time plus our threads below it) is worth a check
MOVED = 0.5  # a change this large in the others' cores checks again before the wait is over
WATCH_EVERY_S = 1.0  # wall seconds between readings of /proc/stat while batches run


class CoreWatch:
    """How many of the cores this process may use other processes keep busy, from /proc/stat:
    the cores' busy time (user, system, interrupts, steal; niced time only when we are niced
    too) less this process's own CPU time, per second of wall time since the last reading."""

    def __init__(self, cpus: set[int], stat: str = "/proc/stat") -> None:
        self.cpus, self.stat = {f"cpu{n}" for n in cpus}, stat
        self.tick = 1.0 / os.sysconf("SC_CLK_TCK")
        self.count_nice = os.getpriority(os.PRIO_PROCESS, 0) > 0
        self._last = self._read()

    @staticmethod
    def open(most: int) -> CoreWatch | None:
        """A watch over our cores, or None where /proc/stat cannot tell us about them."""
        try:
            cpus = os.sched_getaffinity(0)
            watch = CoreWatch(cpus) if len(cpus) == most else None  # else a quota: shared cores
        except (AttributeError, OSError, ValueError):
            return None
        return watch if watch is not None and watch._last is not None else None

    def _read(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy seconds of our cores, this process's CPU seconds)."""
        busy, seen = 0, 0
        try:
            with open(self.stat, encoding="ascii") as f:
                for line in f:
                    name, *fields = line.split()
                    if name in self.cpus:
                        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
                        busy += user + system + irq + softirq + steal + (nice if self.count_nice else 0)
                        seen += 1
        except (OSError, ValueError):
            return None
        if seen != len(self.cpus):
            return None
        return time.monotonic(), busy * self.tick, time.process_time()

    def others(self, least_s: float = 0.25) -> float | None:
        """Cores' worth of other processes' busy time since the last reading; None when that was
        less than ``least_s`` ago (too few clock ticks to tell) or /proc/stat went away."""
        now = self._read()
        if now is None or self._last is None or now[0] - self._last[0] < least_s:
            return None
        (wall0, busy0, ours0), (wall1, busy1, ours1) = self._last, now
        self._last = now
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (wall1 - wall0)


class ThreadTuner:
    """Sets torch's thread count before each batch, from what the others take of the cores
    and what a short check measures. ``adaptive=False``: chosen before the first batch, kept."""

    def __init__(
        self,
        most: int,
        adaptive: bool = True,
        watch: CoreWatch | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.most, self.adaptive, self.watch, self.dtype = most, adaptive, watch, dtype
        self.current = self.start = most
        self.why_start = ""  # why the first batch ran on fewer than every core
        self.changes: list[int] = []  # the counts chosen after the first, in order
        self._started = False
        self._next_check = 0.0  # monotonic time before which no check runs
        self._wait = CHECK_EVERY_S
        self._watched_at = time.monotonic()
        self._checked_at_others = 0.0  # what the others took at the last check

    @contextmanager
    def batch(self, padded_tokens: int = 0) -> Iterator[None]:
        """Around one batch on the CPU: its thread count set (checked first when due)."""
        if not self._started:
            self._begin()
        elif self.adaptive:
            self._follow()
        if torch.get_num_threads() != self.current:
            torch.set_num_threads(self.current)
        yield

    def _begin(self) -> None:
        """The first batch's count: every core, unless the others were busy while the model
        loaded and the check says fewer threads are faster."""
        self._started = True
        others = self.watch.others(least_s=0.1) if self.watch is not None else None
        if others is not None:
            suspect, why = others >= SUSPECT, f"other processes kept {others:.1f} of {self.most} cores busy"
        else:
            load = _load_average()
            suspect, why = load >= self.most - 0.5, f"load average {load:.1f}"
        if suspect and self.most > 1:
            self._checked_at_others = others if others is not None else 0.0
            self.start = self.current = self._faster(self.most, self.most - 1)
            self.why_start = f"{why}; measured faster"
        if suspect or self.watch is None:  # just checked, or blind: the next check waits
            self._next_check = time.monotonic() + self._wait

    def _follow(self) -> None:
        """Between batches: a check when the cores changed hands (or, blind, on a timer)."""
        now = time.monotonic()
        if self.watch is None:
            if now >= self._next_check and self.most > 1:
                self._settle(self._faster(self.current, self.current - 1 if self.current > 1 else 2))
            return
        if now - self._watched_at < WATCH_EVERY_S:
            return
        self._watched_at = now
        others = self.watch.others()
        if others is None:
            return
        moved = abs(others - self._checked_at_others) >= MOVED
        if now < self._next_check and not moved:
            return  # after a check, the next waits a while unless the others' load moved
        if others >= SUSPECT and self.current > 1:
            self._checked_at_others = others
            self._settle(self._faster(self.current, self.current - 1))
        elif self.most - self.current - others >= FREED:
            self._checked_at_others = others
            self._settle(self._faster(self.current, self.current + 1))

    def _settle(self, best: int) -> None:
        if best != self.current:
            self.current = best
            self.changes.append(best)
            self._wait = CHECK_EVERY_S
        else:  # the choice stands: check less often
            self._wait = min(self._wait * 2, CHECK_EVERY_MAX_S)
        self._next_check = time.monotonic() + self._wait

    def _faster(self, current: int, other: int) -> int:
        """The count that measures faster, alternating the two so a passing load falls on both.
        More threads must earn their keep: the larger count wins only with a third of its ideal
        gain (2 over 1: 1.33x; 16 over 15: 1.02x). A thread that shares its core with a busy
        process runs at half speed, and a statically split team then just keeps pace with one
        thread fewer (measured 0.9-1.0x, against 1.6-1.9x on free cores): that is a loss."""
        rates = {current: 0.0, other: 0.0}  # each count's best slice: noise only ever slows one
        for threads in (current, other) * CHECK_ROUNDS:
            rates[threads] = max(rates[threads], matmul_rate(threads, self.dtype))
        torch.set_num_threads(self.current)
        fewer, more = sorted((current, other))
        needed = 1 + (more / fewer - 1) / 3
        return more if rates[more] > rates[fewer] * needed else fewer

    @property
    def tuned(self) -> bool:
        """The run did not (or not only) use every core: worth a word in the summary."""
        return bool(self.changes) or self.start != self.most

    def note(self) -> str:
        """For the summary line and the manifest: what the run ended on, and why."""
        if not self.tuned:
            return threads_phrase(self.current)
        why = [f"started at {self.start}: {self.why_start}"] if self.start != self.most else []
        if self.changes:
            why.append("then " + " -> ".join(str(n) for n in [self.start, *self.changes]))
            why[-1] += " as the cores changed hands"
        return f"{self.current} of {self.most} threads ({'; '.join(why)})"


def matmul_rate(threads: int, dtype: torch.dtype, seconds: float = CHECK_SLICE_S) -> float:
    """Feed-forward blocks per second (512 tokens: hidden 384 -> 1536, GELU, -> 384, the
    model's shapes) on ``threads`` threads, over about ``seconds``. Each op is a parallel region
    with a barrier, so a thread the scheduler holds back slows it as it slows the model. Best
    slices measured on 2 cores: two threads 1.8-2.0x one on free cores, 0.4-1.1x with one busy."""
    torch.set_num_threads(threads)
    x, up, down = _check_operands(dtype)
    done, started = 0, time.perf_counter()
    while True:
        torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(x, up)), down)
        done += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


_OPERANDS: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}


def _check_operands(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    if dtype not in _OPERANDS:  # one fixed set of shapes: one kernel each, kept
        g = torch.Generator().manual_seed(0)
        shapes = ((512, 384), (1536, 384), (384, 1536))
        _OPERANDS[dtype] = tuple(torch.randn(*shape, generator=g).to(dtype) for shape in shapes)
    return _OPERANDS[dtype]


def threads_phrase(n: int) -> str:
    return "1 thread" if n == 1 else f"{n} threads"


def _load_average() -> float:
    """The last minute's run-queue length: other processes' claim on the cores before we start."""
    try:
        return os.getloadavg()[0]
    except OSError:  # not on every platform
        return 0.0
