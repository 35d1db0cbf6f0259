"""Which hosts are down: consecutive connection failures per host, shared by every download process of a worker.

    health = HostHealth(limit=8)                 # in the parent; children get it through their initargs
    health.failed("img.example.com", "timeout")  # no answer: refused, unresolvable, silent
    health.answered("img.example.com")           # any status line: the host is up, count back to 0
    health.unavailable("img.example.com")        # '' while fewer than 8 in a row, else why it is given up on

Once a host reaches the limit it stays given up on for the rest of the run
(retrying it later is not this module's business), and every further URL on
it is rejected without a connection attempt.

Why shared memory: a batch is split between processes by position, not by
host, so one dead host's URLs are spread over every child; counting per
process would let each child spend ``limit`` failed attempts on it. Routing
every host to one process would keep the count exact but put a single-host
list (a CDN, a benchmark) on one core. So the counts live in one table of
64-bit slots in shared memory (``multiprocessing.Array``, 1 MiB), keyed by a
64-bit hash of the host name, open addressing with linear probing; a host
that finds no slot (tens of thousands of hosts failing at once) is counted
in its own process instead, which is the per-process behaviour, not a wrong one.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import threading

__all__ = ["HostHealth"]

_EMPTY = 0
_TOMBSTONE = -1  # a freed slot: lookups go on past it, inserts may reuse it
_PROBES = 64


def _host_hash(host: str) -> int:
    value = int.from_bytes(hashlib.blake2b(host.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little", signed=True)
    return value if value not in (_EMPTY, _TOMBSTONE) else 1


class _LocalTable:
    """The part of ``multiprocessing.Array``'s interface used here, for one process."""

    def __init__(self, length: int) -> None:
        self._raw = (ctypes.c_int64 * length)()
        self._lock = threading.Lock()

    def get_lock(self) -> threading.Lock:
        return self._lock

    def get_obj(self):  # noqa: ANN201 - a ctypes array
        return self._raw


class HostHealth:
    """Consecutive failed attempts per host; ``limit`` of them in a row and the host is given up on (0: never)."""

    def __init__(self, limit: int, slots: int = 1 << 16, *, shared: bool = False) -> None:
        """``shared``: in shared memory, for child processes (passed to them at their start); else this process only."""
        self.limit = limit
        self.slots = slots
        # [key0, count0, key1, count1, ...]; the lock guards every read-modify-write.
        if shared:
            self._table = multiprocessing.get_context("forkserver").Array(ctypes.c_int64, 2 * slots, lock=True)
        else:
            # No semaphore, no resource-tracker process for a table no other process sees.
            self._table = _LocalTable(2 * slots)
        self._overflow: dict[str, int] = {}
        self._overflow_lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Only the shared table travels to a child process; overflow counts stay local.
        if isinstance(self._table, _LocalTable):
            raise TypeError("this HostHealth is local to its process: make it with shared=True to pass it to others")
        return {"limit": self.limit, "slots": self.slots, "table": self._table}

    def __setstate__(self, state: dict) -> None:
        self.limit = state["limit"]
        self.slots = state["slots"]
        self._table = state["table"]
        self._overflow = {}
        self._overflow_lock = threading.Lock()

    def failed(self, host: str, detail: str = "") -> None:
        """One attempt on ``host`` got no answer."""
        if self.limit <= 0:
            return
        with self._table.get_lock():
            slot = self._find(host, insert=True)
            if slot is not None:
                raw = self._table.get_obj()
                raw[2 * slot + 1] += 1
                return
        with self._overflow_lock:
            self._overflow[host] = self._overflow.get(host, 0) + 1

    def answered(self, host: str) -> None:
        """``host`` sent a response: its run of failures ends (unless it was already given up on)."""
        if self.limit <= 0:
            return
        # Nearly every answer comes from a host that never failed: it has no
        # slot, and finding that out needs no lock (see failures()). Taking the
        # cross-process lock on every response serialised all download threads.
        if self._find(host, insert=False) is None and not self._overflow:
            return
        with self._table.get_lock():
            slot = self._find(host, insert=False)
            if slot is not None:
                raw = self._table.get_obj()
                if raw[2 * slot + 1] < self.limit:
                    raw[2 * slot] = _TOMBSTONE
                    raw[2 * slot + 1] = 0
        if self._overflow:
            with self._overflow_lock:
                if self._overflow.get(host, 0) < self.limit:
                    self._overflow.pop(host, None)

    def failures(self, host: str) -> int:
        """Consecutive failures counted for ``host`` so far."""
        # Read without the lock: slots are aligned 64-bit words, which x86-64
        # and ARM64 load whole, so a racing writer can only make this read miss
        # the latest failure (the host is given up on one attempt later), never
        # see a torn value. Writers still serialise on the lock.
        slot = self._find(host, insert=False)
        count = self._table.get_obj()[2 * slot + 1] if slot is not None else 0
        if self._overflow:
            with self._overflow_lock:
                count = max(count, self._overflow.get(host, 0))
        return count

    def unavailable(self, host: str) -> str:
        """Why ``host`` is given up on, or '' while it is not."""
        if self.limit <= 0:
            return ""
        count = self.failures(host)
        if count < self.limit:
            return ""
        return (
            f"{host} gave no answer to {count} attempts in a row (host_failure_limit {self.limit}); "
            "its remaining URLs are not tried in this run"
        )

    def _find(self, host: str, *, insert: bool) -> int | None:
        """The slot holding ``host`` (claimed for it with ``insert``), or None. Call with the lock held to insert."""
        raw = self._table.get_obj()
        key = _host_hash(host)
        start = (key & 0x7FFFFFFFFFFFFFFF) % self.slots
        free = None
        for probe in range(min(_PROBES, self.slots)):
            slot = (start + probe) % self.slots
            stored = raw[2 * slot]
            if stored == key:
                return slot
            if stored == _TOMBSTONE and free is None:
                free = slot
            if stored == _EMPTY:
                if free is None:
                    free = slot
                break
        if not insert or free is None:
            return None
        raw[2 * free] = key
        raw[2 * free + 1] = 0
        return free
