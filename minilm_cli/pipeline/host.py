"""Host workers: the tokenizing (and padding) of chunks on a few threads, handed back in order.

The tokenizer's encode releases the GIL while it works (it is Rust), so threads tokenize
chunks side by side on separate cores without pickling a text or a token: every thread sees
the same chunk objects. The reader thread still reads, checks and plans each chunk in input
order; only the pure, per-chunk step (texts -> token ids -> padded batches) fans out, and
results come back in the order the chunks went in, so chunk boundaries, batches, output
bytes and --resume are the same for any worker count. At most ``workers + 1`` chunks are
in the pool at once: memory stays a few chunks, as the queues between the threads keep it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
    if workers <= 0:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="minilm-tokenize")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)  # a running chunk finishes; nothing outlives the run
