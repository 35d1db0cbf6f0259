"""What the crawler may fetch, and how hard it may push one host. No Beam, no HTTP.

    limiter = HostLimiter(concurrency=4, rps=2.0)       # one per worker process
    with limiter.slot("images.example.com", deadline_at):
        ...                                             # one request to that host
    limiter.pause("images.example.com", 5.0, Reason.HTTP_429)   # Retry-After: 5

    blocked_address_reason("10.1.2.3")                  # 'private'
    blocked_address_reason("::ffff:127.0.0.1")          # 'loopback'
    blocked_address_reason("93.184.216.34")             # None: fine to connect

    opt_out_matches(["otherbot: noai", "noimageai"], ("noai", "noimageai"), "paircurate")
    # ['noimageai']

    robots = RobotsCache()
    rules = robots.get("https://example.com:443", deadline_at, load=fetch_and_parse)
    rules.can_fetch("paircurate", "https://example.com/cat.jpg")

Every wait here is bounded by the caller's ``deadline_at`` (a ``time.monotonic``
value); a wait that cannot fit raises ``RejectError`` right away instead of
sleeping past it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator
from urllib.robotparser import RobotFileParser

from paircurate.schemas.outcomes import Reason, RejectError

__all__ = [
    "HostBusyError",
    "HostLimiter",
    "RobotsCache",
    "blocked_address_reason",
    "opt_out_matches",
    "parse_robots_txt",
    "allow_all_robots",
    "robots_tag_directives",
]

# -- addresses -----------------------------------------------------------------

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def blocked_address_reason(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a crawler must not connect to ``address``, or None when it may.

    Covers loopback, private, link-local, multicast, reserved, unspecified and
    other not-globally-routable ranges (CGNAT, documentation, benchmarking),
    for IPv4 and IPv6, looking through IPv4-mapped, 6to4 and NAT64 addresses
    to the IPv4 address they reach. Accepts an IPv6 scope suffix (``fe80::1%eth0``).
    """
    if isinstance(address, str):
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    else:
        ip = address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            # The kernel sends ::ffff:a.b.c.d to a.b.c.d: judge that address alone.
            return blocked_address_reason(ip.ipv4_mapped)
        if ip in _NAT64:
            # A NAT64 gateway connects to the embedded IPv4 address on our
            # behalf; the prefix itself is "reserved" but carries real hosts.
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            why = blocked_address_reason(inner)
            return None if why is None else f"{why} (via NAT64)"
        if ip.sixtofour is not None:
            why = blocked_address_reason(ip.sixtofour)
            if why is not None:
                return f"{why} (via 6to4)"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    # Reserved before private: Python's "private" list also holds 240.0.0.0/4,
    # and which ranges it holds has changed between Python releases.
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:
        # 100.64.0.0/10 (carrier-grade NAT) is neither private nor global.
        return "not globally routable"
    return None


# -- X-Robots-Tag ------------------------------------------------------------------

# Directives whose own syntax is "name: value"; any other "word: ..." token is
# a user-agent prefix ("otherbot: noai").
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def robots_tag_directives(values: Iterable[str], user_agent: str) -> set[str]:
    """Lower-cased directive names in ``X-Robots-Tag`` header values that apply to ``user_agent``.

    A value is a comma-separated list; ``bot: a, b`` scopes ``a`` and ``b`` to
    ``bot`` until the next ``bot:`` prefix in the same value. Unscoped
    directives apply to everyone; scoped ones only when the prefix equals
    ``user_agent`` (case-insensitive).

        robots_tag_directives(["noindex", "otherbot: noai", "paircurate: noimageai"], "paircurate")
        # {'noindex', 'noimageai'}
    """
    agent = user_agent.strip().lower()
    found: set[str] = set()
    for value in values:
        scope: str | None = None
        for token in value.split(","):
            token = token.strip()
            if not token:
                continue
            name, colon, rest = token.partition(":")
            name = name.strip().lower()
            # A user agent is one word; a date fragment like "25 Jun 2030 15:00"
            # (unavailable_after values contain commas) is not.
            if colon and name not in _VALUED_DIRECTIVES and name and " " not in name:
                scope = name
                token = rest.strip()
                if not token:
                    continue
                name = token.partition(":")[0].strip().lower()
            if scope is None or scope == agent:
                found.add(name)
    return found


def opt_out_matches(values: Iterable[str], opt_out_tags: Iterable[str], user_agent: str) -> list[str]:
    """The ``opt_out_tags`` that ``X-Robots-Tag`` header ``values`` set for ``user_agent``, sorted."""
    wanted = {tag.strip().lower() for tag in opt_out_tags if tag.strip()}
    if not wanted:
        return []
    return sorted(robots_tag_directives(values, user_agent) & wanted)


# -- robots.txt ---------------------------------------------------------------------


def parse_robots_txt(body: bytes) -> RobotFileParser:
    """Rules from a robots.txt body (``urllib.robotparser``; undecodable bytes are replaced)."""
    rules = RobotFileParser()
    # utf-8-sig: a byte-order mark would otherwise glue itself to the first
    # "User-agent" line and make that group invisible.
    rules.parse(body.decode("utf-8-sig", errors="replace").splitlines())
    return rules


def allow_all_robots() -> RobotFileParser:
    """Rules for a host without a robots.txt (RFC 9309: 4xx means no restrictions)."""
    rules = RobotFileParser()
    rules.allow_all = True
    return rules


@dataclass
class _RobotsEntry:
    done: threading.Event = field(default_factory=threading.Event)
    rules: RobotFileParser | None = None
    error: RejectError | None = None
    expires_at: float = float("inf")


class RobotsCache:
    """robots.txt rules per origin, fetched once and shared by a worker's threads.

    ``get`` runs ``load`` in the first thread that asks for an origin; the
    others wait for that result (bounded by their own deadline) instead of
    fetching it again. A ``RejectError`` from ``load`` is cached too, for
    ``failure_ttl`` seconds, so a host whose robots.txt hangs costs one
    timeout per ``failure_ttl``, not one per URL; afterwards it is tried again.
    """

    def __init__(self, ttl: float = 24 * 3600.0, failure_ttl: float = 300.0, max_entries: int = 100_000) -> None:
        # RFC 9309 asks crawlers not to use a cached robots.txt for more than 24 hours.
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[str, _RobotsEntry] = {}

    def get(self, origin: str, deadline_at: float, load: Callable[[], RobotFileParser]) -> RobotFileParser:
        """Rules for ``origin`` (``scheme://host:port``); raises ``RejectError`` when they cannot be had in time."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(origin)
            if entry is not None and entry.done.is_set() and entry.expires_at <= now:
                del self._entries[origin]
                entry = None
            loader = entry is None
            if loader:
                self._evict()
                entry = self._entries[origin] = _RobotsEntry()
        if loader:
            self._load(origin, entry, load)
        elif not entry.done.wait(max(0.0, deadline_at - now)):
            raise RejectError(
                Reason.TIMEOUT,
                f"deadline exceeded waiting {time.monotonic() - now:.2f}s for {origin}/robots.txt, "
                "which another download is fetching",
            )
        if entry.error is not None:
            raise RejectError(entry.error.reason, entry.error.detail)
        assert entry.rules is not None
        return entry.rules

    def _load(self, origin: str, entry: _RobotsEntry, load: Callable[[], RobotFileParser]) -> None:
        try:
            entry.rules = load()
            ttl = self._ttl
        except RejectError as err:
            entry.error = err
            ttl = self._failure_ttl
        except BaseException as exc:
            # A bug, not an answer about this host: don't remember it.
            with self._lock:
                if self._entries.get(origin) is entry:
                    del self._entries[origin]
            entry.error = RejectError(Reason.INTERNAL_ERROR, f"loading {origin}/robots.txt: {type(exc).__name__}: {exc}")
            entry.done.set()
            raise
        entry.expires_at = time.monotonic() + ttl
        entry.done.set()

    def _evict(self) -> None:
        # Called with the lock held. Oldest-inserted finished entries go first;
        # ones still loading have waiters and stay.
        excess = len(self._entries) - self._max_entries + 1
        if excess <= 0:
            return
        for origin in [o for o, e in self._entries.items() if e.done.is_set()][:excess]:
            del self._entries[origin]


# -- per-host limits ---------------------------------------------------------------------




class HostBusyError(RejectError):
    """The host said it has more than it can take (HTTP 429 or 503): its window is halved.

    Other failures (timeouts, resets, 500s) say something about one URL as
    often as about the host, and a few slow URLs must not starve a host's
    healthy ones, so they leave the window as it is.
    """

# A latency within this factor of the host's best recent one is "flat": keep growing.
_FLAT_LATENCY_FACTOR = 2.0
# The best latency drifts up by this factor per request, so an old best does not hold growth back forever.
_BASELINE_DRIFT = 1.02
INITIAL_WINDOW = 4
LEARNED_HOSTS = 4096  # idle hosts whose learned window is remembered (about 100 bytes each)


class _HostState:
    __slots__ = ("in_flight", "window", "ssthresh", "best_latency", "last_decrease", "users", "next_at", "paused_until", "pause_reason")

    def __init__(self, window: float, ssthresh: float) -> None:
        self.in_flight = 0
        self.window = window  # requests this host may have in flight now
        self.ssthresh = ssthresh  # below it the window doubles per round trip, above it grows by one
        self.best_latency = float("inf")
        self.last_decrease = float("-inf")
        self.users = 0  # threads holding or waiting for a slot
        self.next_at = 0.0  # earliest start of the next request (rate limit)
        self.paused_until = 0.0  # Retry-After from the host, for every thread
        self.pause_reason = Reason.HTTP_429


class HostLimiter:
    """Per-host request limits shared by the threads of one worker process.

    At most ``concurrency`` requests to a host are in flight at once, and if
    ``rps > 0`` their starts are at least ``1 / rps`` seconds apart. A host
    that answered with ``Retry-After`` can be paused for every thread with
    ``pause``.

    With ``adaptive`` (the default) ``concurrency`` is a ceiling: each host
    starts with a window of ``INITIAL_WINDOW`` requests, which grows as TCP's
    congestion window does (by one per answer below a threshold, so it doubles
    every round trip, then by one per round trip) while the host answers and
    its latency stays within twice its best, and is halved at once, at most
    once per round trip, when the host says it is busy (429, 503: see
    ``HostBusyError``). State for idle hosts is dropped, so memory follows the
    number of hosts in flight, not the number ever seen; the windows they had
    learned are remembered for the ``LEARNED_HOSTS`` most recent hosts.
    """

    def __init__(self, concurrency: int, rps: float = 0.0, adaptive: bool = True) -> None:
        if concurrency < 1:
            raise ValueError(f"HostLimiter concurrency must be >= 1, got {concurrency}")
        if rps < 0:
            raise ValueError(f"HostLimiter rps must be >= 0 (0 = unlimited), got {rps}")
        self.concurrency = concurrency
        self.rps = rps
        self.adaptive = adaptive
        self._initial = float(min(INITIAL_WINDOW, concurrency) if adaptive else concurrency)
        self._interval = 1.0 / rps if rps > 0 else 0.0
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._hosts: dict[str, _HostState] = {}
        self._learned: OrderedDict[str, tuple[float, float, float]] = OrderedDict()
        self._sweep_above = 1024

    @contextlib.contextmanager
    def slot(self, host: str, deadline_at: float) -> Iterator[None]:
        """Hold one request slot for ``host``; raises ``RejectError`` if none is free before ``deadline_at``.

        How long the body of the ``with`` took, and whether it raised
        ``HostBusyError``, is what the adaptive window learns from.
        """
        started = time.monotonic()
        state = self._enter(host)
        acquired_at = None
        busy = False
        try:
            self._acquire(host, state, started, deadline_at)
            acquired_at = time.monotonic()
            # The rate wait happens while holding the slot: waiting first and
            # queueing for the slot afterwards would let starts bunch up again.
            wait = self._reserve(host, state, deadline_at)
            if wait > 0:
                time.sleep(wait)
                acquired_at = time.monotonic()
            yield
        except HostBusyError:
            busy = True
            raise
        finally:
            with self._lock:
                if acquired_at is not None:
                    state.in_flight -= 1
                    if self.adaptive:
                        self._learn(state, time.monotonic() - acquired_at, busy)
                    self._freed.notify_all()
                state.users -= 1
                self._forget_if_idle(host, state)

    def window(self, host: str) -> float:
        """The host's current window (``concurrency`` when not adaptive); for tests and monitoring."""
        with self._lock:
            state = self._hosts.get(host)
            if state is not None:
                return state.window
            learned = self._learned.get(host)
            return self._initial if learned is None else learned[0]

    def pause(self, host: str, seconds: float, reason: Reason = Reason.HTTP_429) -> None:
        """Start no request to ``host`` for ``seconds``, in any thread (the host sent ``Retry-After``)."""
        if seconds <= 0:
            return
        until = time.monotonic() + seconds
        with self._lock:
            state = self._hosts.get(host)
            if state is None:
                state = self._hosts[host] = self._new_state(host)
            if until > state.paused_until:
                state.paused_until = until
                state.pause_reason = reason

    def paused_for(self, host: str) -> float:
        """Seconds until ``host`` may be asked again after a ``pause`` (0 when not paused)."""
        with self._lock:
            state = self._hosts.get(host)
            return 0.0 if state is None else max(0.0, state.paused_until - time.monotonic())

    def tracked_hosts(self) -> int:
        """Hosts whose state is kept right now (for tests and monitoring)."""
        with self._lock:
            return len(self._hosts)

    def _new_state(self, host: str) -> _HostState:
        state = _HostState(self._initial, float(self.concurrency))
        learned = self._learned.pop(host, None)
        if learned is not None:
            state.window, state.ssthresh, state.best_latency = learned
        return state

    def _enter(self, host: str) -> _HostState:
        with self._lock:
            state = self._hosts.get(host)
            if state is None:
                if len(self._hosts) >= self._sweep_above:
                    self._sweep(time.monotonic())
                state = self._hosts[host] = self._new_state(host)
            state.users += 1
            return state

    def _acquire(self, host: str, state: _HostState, started: float, deadline_at: float) -> None:
        with self._lock:
            while state.in_flight >= max(1, int(state.window)):
                left = deadline_at - time.monotonic()
                if left <= 0 or not self._freed.wait(timeout=left) and time.monotonic() >= deadline_at:
                    raise RejectError(
                        Reason.TIMEOUT,
                        f"deadline exceeded after waiting {time.monotonic() - started:.2f}s for one of "
                        f"{int(state.window)} request slot(s) to {host} (per_domain_concurrency={self.concurrency})",
                    )
            state.in_flight += 1

    def _learn(self, state: _HostState, latency: float, busy: bool) -> None:
        """AIMD on the host's window from one finished request (called with the lock held)."""
        now = time.monotonic()
        if busy:
            # Halve once per round trip: the requests already in flight when
            # the host first complained will complain too.
            if now - state.last_decrease > max(state.best_latency, 0.01) or state.best_latency == float("inf"):
                state.ssthresh = max(1.0, state.window / 2)
                state.window = state.ssthresh
                state.last_decrease = now
            return
        state.best_latency = min(latency, state.best_latency * _BASELINE_DRIFT)
        if latency > _FLAT_LATENCY_FACTOR * state.best_latency + 0.005:
            return  # the host is slowing down: hold
        growth = 1.0 if state.window < state.ssthresh else 1.0 / state.window
        state.window = min(float(self.concurrency), state.window + growth)

    def _forget_if_idle(self, host: str, state: _HostState) -> None:
        if state.users == 0 and max(state.next_at, state.paused_until) <= time.monotonic() and self._hosts.get(host) is state:
            del self._hosts[host]
            if self.adaptive:
                self._remember(host, state)

    def _remember(self, host: str, state: _HostState) -> None:
        self._learned[host] = (state.window, state.ssthresh, state.best_latency)
        if len(self._learned) > LEARNED_HOSTS:
            self._learned.popitem(last=False)

    def _sweep(self, now: float) -> None:
        # Hosts left with a pending rate interval or pause are not dropped when
        # they go idle; collect them once the table has doubled since the last sweep.
        for host in [h for h, s in self._hosts.items() if s.users == 0 and max(s.next_at, s.paused_until) <= now]:
            state = self._hosts.pop(host)
            if self.adaptive:
                self._remember(host, state)
        self._sweep_above = max(1024, 2 * len(self._hosts))

    def _reserve(self, host: str, state: _HostState, deadline_at: float) -> float:
        """Claim the next start time for ``host``; returns how long to sleep until it."""
        with self._lock:
            now = time.monotonic()
            start = max(now, state.next_at, state.paused_until)
            if start > deadline_at:
                if state.paused_until > now and state.paused_until >= state.next_at:
                    raise RejectError(
                        state.pause_reason,
                        f"{host} asked for a pause (Retry-After) that ends in {start - now:.2f}s, "
                        f"past the deadline ({max(deadline_at - now, 0):.2f}s left)",
                    )
                raise RejectError(
                    Reason.TIMEOUT,
                    f"per_domain_rps={self.rps:g} for {host}: the next request may start in {start - now:.2f}s, "
                    f"past the deadline ({max(deadline_at - now, 0):.2f}s left)",
                )
            if self._interval:
                state.next_at = start + self._interval
            return start - now
