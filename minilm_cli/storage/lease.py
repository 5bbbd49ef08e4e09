"""One writer per OUTPUT on a store: a lease object (conditional put, heartbeat, stale takeover)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import OutputConflict, OutputInUse
from .secrets import redact_url

if TYPE_CHECKING:
    from .remote import FsspecStorage

LEASE_TTL_S = 60.0


class LeaseLock:
    """A lease object: conditional create, heartbeat thread, stale takeover. See the module
    docstring for which store gets which guarantee."""

    def __init__(
        self,
        storage: FsspecStorage,
        path: str,
        ttl: float = LEASE_TTL_S,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.storage = storage
        self.owns = owns  # the file names this lock's writer owns (a takeover aborts only theirs)
        self.path = path
        self.ttl = ttl
        self.run_id = uuid.uuid4().hex
        self.lost = False
        self.etag: str | None = None
        self._stop = threading.Event()
        self._beating = threading.Lock()  # one conditional refresh at a time (thread or caller)
        self._thread: threading.Thread | None = None
        self._acquire()
        self._thread = threading.Thread(target=self._beat, name="minilm-lease", daemon=True)
        self._thread.start()

    def _body(self) -> bytes:
        doc = {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
            "ttl": self.ttl,
        }
        return json.dumps(doc, sort_keys=True).encode()

    def _acquire(self) -> None:
        st = self.storage
        for _ in range(3):
            created = st.put_if_absent(self.path, self._body())
            if created:
                self.etag = created
                if st.native_conditional or self._still_ours():
                    return
                break
            lease, etag = st.read_lease(self.path)
            if lease is None:
                continue  # released between our put and our read: try again
            if not lease_is_stale(lease):
                raise OutputInUse(
                    f"OUTPUT {redact_url(_parent(self.path))} is in use by another run ({describe(lease)})"
                )
            replaced = st.put_if_match(self.path, self._body(), etag)
            if replaced:
                self.etag = replaced
                if st.native_conditional or self._still_ours():
                    # a dead run's unfinished multipart uploads under OUTPUT are ours to abort
                    st.abort_uploads(_parent(self.path), self.owns)
                    return
                break
        raise OutputConflict(f"OUTPUT {redact_url(_parent(self.path))} is being taken by another run")

    def _still_ours(self) -> bool:
        lease, _ = self.storage.read_lease(self.path)
        return bool(lease) and lease.get("run_id") == self.run_id

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4) and not self.lost:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a missed beat is retried; the ttl allows several
                continue

    def refresh(self) -> None:
        """Beat now (the thread does every ttl / 4; a caller may before something long).
        Sets ``lost`` when another run has taken the lease over."""
        with self._beating:
            if self.lost or self._stop.is_set():
                return
            fingerprint = self.storage.put_if_match(self.path, self._body(), self.etag)
            if fingerprint:
                self.etag = fingerprint
            else:
                self.lost = True  # taken over after we stalled past the ttl

    def release(self, remove: bool = True) -> None:
        """Stop the heartbeat and delete the lease if it is still ours. A lease left behind
        would look held until it went stale, so it is removed whatever ``remove`` says."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            if not self.lost and self._still_ours():
                self.storage.remove(self.path)


def lease_is_stale(lease: dict[str, Any], now: float | None = None) -> bool:
    now = time.time() if now is None else now
    try:
        beat, ttl = float(lease["heartbeat"]), float(lease.get("ttl", LEASE_TTL_S))
    except (KeyError, TypeError, ValueError):
        return True  # not a lease we understand (a torn write cannot happen; a foreign file can)
    if now - beat > ttl:
        return True
    if lease.get("host") == socket.gethostname():
        pid = lease.get("pid")
        if isinstance(pid, int) and pid > 0 and pid != os.getpid():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True  # its holder died on this machine: no need to wait out the ttl
            except PermissionError:
                return False
    return False


def describe(lease: dict[str, Any]) -> str:
    return f"pid {lease.get('pid', '?')} on {lease.get('host', '?')}"


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path
