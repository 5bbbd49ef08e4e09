"""Host workers: the tokenizing (and padding) of chunks on a few threads, handed back in order.

The tokenizer's encode releases the GIL while it works (it is Rust), so threads tokenize
chunks side by side on separate cores without pickling a text or a token: every thread sees
the same chunk objects. The reader thread still reads, checks and plans each chunk in input
order; only the pure, per-chunk step (texts -> token ids -> padded batches) fans out, and
results come back in the order the chunks went in, so chunk boundaries, batches, output
bytes and --resume are the same for any worker count. At most ``workers + 1`` chunks are
in the pool at once: memory stays a few chunks, as the queues between the threads keep it.
``ordered_chain`` is the same for a step with many results per item (--overflow split/mean:
a run of texts -> its pieces of windows), each handed on through a small queue as it comes.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from ..devices import usable_cpus

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")

# On a CPU the model and the tokenizer share the cores: one tokenizing thread beside the
# reader lets reading overlap tokenizing without taking a core from the model
# (docs/PERFORMANCE.md, "Host pipeline": on two cores 0..3 workers were within the noise).
CPU_DEFAULT = 1
# Beside a GPU the tokenizer's own pool spreads each chunk over every core; more threads
# than this only overlap the Python around it, and each holds a chunk in memory.
ACCELERATOR_MAX = 4


def host_workers(requested: int | None, device: torch.device) -> int:
    """Tokenizing threads for a run: as asked, else one on a CPU and, beside an accelerator,
    the spare cores (all but the model's feeding thread) up to ACCELERATOR_MAX. 0 tokenizes
    on the reader thread."""
    if requested is not None:
        return requested
    if device.type == "cpu":
        return CPU_DEFAULT
    return spare_cores(usable_cpus())


def spare_cores(cores: int) -> int:
    """Host workers beside an accelerator that has ``cores`` CPU cores to itself."""
    return max(1, min(ACCELERATOR_MAX, cores - 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads, results in input order, a bounded few at
    a time; ``workers`` 0 maps on the calling thread. A failure surfaces at its item's turn."""
    return ordered_chain(lambda item: iter((fn(item),)), items, workers)


def ordered_chain(
    fn: Callable[[T], Iterator[R]], items: Iterable[T], workers: int, depth: int = 2
) -> Iterator[R]:
    """Every result of ``fn(item)`` (an iterator) for each of ``items``, chained in input order,
    each item's iterator run on one of ``workers`` threads. At most ``workers + 1`` items are in
    flight, and each keeps at most ``depth`` results waiting: an item with many results (a
    10 MB text's windows) is handed on as it goes, never held whole. ``workers`` 0 runs on the
    calling thread. A failure surfaces at its item's turn."""
    if workers <= 0:
        for item in items:
            yield from fn(item)
        return
    stop = threading.Event()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="minilm-tokenize")
    pending: deque[queue.Queue] = deque()
    try:
        for item in items:
            results: queue.Queue = queue.Queue(depth)
            pool.submit(_produce, fn, item, results, stop)
            pending.append(results)
            if len(pending) > workers:  # the pool starts items in order: the oldest is running
                yield from _drain(pending.popleft())
        while pending:
            yield from _drain(pending.popleft())
    finally:
        stop.set()  # a producer blocked on a full queue gives up; queued items never start
        pool.shutdown(wait=True, cancel_futures=True)  # nothing outlives the run


_END = object()  # an item's last queue entry: (_END, None), or (_END, the exception it raised)


def _produce(fn: Callable[[T], Iterator[R]], item: T, results: queue.Queue, stop: threading.Event) -> None:
    try:
        for result in fn(item):
            if not _put(results, (result, None), stop):
                return
        _put(results, (_END, None), stop)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised at its turn
        _put(results, (_END, exc), stop)


def _put(results: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    """Put ``entry`` once there is room, unless the consumer has gone (then False)."""
    while not stop.is_set():
        try:
            results.put(entry, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _drain(results: queue.Queue) -> Iterator:
    while True:
        result, failure = results.get()
        if result is not _END:
            yield result
        elif failure is not None:
            raise failure
        else:
            return


def drain_timed(results: Iterator[tuple[R, float]], timers: dict[str, float], stage: str) -> Iterator[R]:
    """The results of an ordered pool, each one's seconds added to ``timers[stage]``; the pool
    is closed when the consumer stops (its threads end with the run)."""
    try:
        for result, seconds in results:
            timers[stage] += seconds
            yield result
    finally:
        results.close()  # type: ignore[attr-defined]
