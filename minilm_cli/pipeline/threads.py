"""The three threads' plumbing: a background producer, a background consumer, and a
signal guard that turns SIGINT/SIGTERM into one clean stop.

Signals: the first SIGINT or SIGTERM raises ``Interrupted`` in the main thread, but only
while the main thread is in the hot loop (feeding the model and the writer). Once the run
is stopping, further signals are noted and ignored: a second Ctrl-C makes nothing unsafe,
because clean-up (discarding the open shard, closing the manifest) is never interrupted.
"""

from __future__ import annotations

import _thread
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import Interrupted

QUEUE_DEPTH = 2  # chunks in flight between two stages
_DONE = object()


class Producer(threading.Thread):
    """Runs a generator in the background; iterate to receive its items in order."""

    def __init__(self, items: Callable[[], Iterable], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.items = items
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        items = self.items()
        try:
            for item in items:
                if not _put(self.queue, item, self.stop):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # readers' files are closed in this thread, which opened them
        _put(self.queue, _DONE, self.stop)

    def __iter__(self) -> Iterator:
        while True:
            item = self.queue.get()
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def close(self) -> None:
        """Stop reading and wait for the thread (its generator is closed on the way out)."""
        self.stop.set()
        self.join()


class Consumer(threading.Thread):
    """Applies ``handle`` to every item put, in order, in the background; ``on_error`` hears
    of a failure at once (so the main thread need not finish a long model call first)."""

    def __init__(
        self,
        handle: Callable[[Any], None],
        name: str,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.handle = handle
        self.on_error = on_error
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            try:
                self.handle(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc
                if self.on_error is not None:
                    self.on_error(exc)
                return

    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self.is_alive():
                    raise self.error or RuntimeError("writer stopped") from None

    def close(self) -> None:
        """Hand over the last item and wait until everything put has been handled."""
        self.put(_DONE)
        self.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """Stop after the item in hand (never in the middle of one) and wait for that."""
        self.stop.set()
        self.join()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class SignalGuard:
    """SIGINT/SIGTERM while ``armed`` raise Interrupted once; otherwise they are recorded."""

    def __init__(self) -> None:
        self.armed = False
        self.received: list[int] = []
        self.pending: BaseException | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        self.armed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.armed = False
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def disarm(self) -> None:
        """From here on (clean-up), signals are only recorded."""
        self.armed = False

    def wake(self, exc: BaseException) -> None:
        """From another thread: make the main thread raise ``exc`` now, if it is in the hot loop."""
        if self.armed and self._previous:
            self.pending = exc
            _thread.interrupt_main(signal.SIGINT)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending is not None and self.armed:
            self.armed = False
            raise self.pending
        if self.pending is None:
            self.received.append(signum)
        if self.armed:
            self.armed = False
            raise Interrupted(signum)
