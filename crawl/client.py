"""Fetch one image URL over HTTP with bounded time, size and retries.

    cfg = DownloadConfig(deadline=10.0, retries=2)
    ctx = make_pool(cfg)           # a FetchContext: one per worker, shared by its threads
    try:
        result = download_image("https://images.example.com/cat.jpg", cfg, ctx)
        result.data, result.status, result.attempts   # b'\xff\xd8...', 200, 1
    except RejectError as err:
        err.reason, err.detail     # Reason.HTTP_404, 'HTTP 404 Not Found'

Every failure is a ``RejectError`` carrying one ``Reason`` code and a
human-readable ``detail``; callers turn it into a reject row. No Beam here.

Semantics worth knowing:

* ``cfg.deadline`` bounds the whole URL: the DNS lookup, connect, TLS
  handshake, status line, every header, redirect hop, retry, backoff sleep and
  body byte. Per-attempt connect/read timeouts are capped by what is left of
  it, and a watchdog thread shuts the request's socket down when the deadline
  passes, so a server that drips one byte per second (which restarts every
  per-read timeout) is cut off on time; lookups run on a helper thread that
  is abandoned at the deadline.
* After ``cfg.host_failure_limit`` consecutive connection failures or timeouts
  on one host (``HostHealth``, shared by every thread and process of a
  worker), its remaining URLs fail at once with ``host_unavailable``.
* ``attempts`` in the result counts tries of the request (1 + retries used);
  redirect hops are not attempts. The retry budget ``cfg.retries`` is shared by
  the whole redirect chain, and a retry repeats the current hop, not the chain.

Politeness and safety (``make_pool`` returns a ``FetchContext`` holding them,
shared by every thread of the worker process):

* Per host, at most ``per_domain_concurrency`` requests in flight and, with
  ``per_domain_rps > 0``, starts at least ``1 / per_domain_rps`` s apart. Waiting
  for a turn counts against the deadline; a wait that cannot fit gives ``timeout``.
* ``Retry-After`` on 429/503 (seconds or HTTP date) is waited for when it is at
  most ``retry_after_max`` and fits the deadline, and pauses that host for every
  thread; a longer one gives up (``http_429``/``http_5xx``) instead of coming
  back early. Other retryable failures back off exponentially with jitter.
* ``X-Robots-Tag`` directives in ``opt_out_tags`` (unscoped, or scoped to
  ``robots_user_agent``) give ``opted_out`` from the headers, before the body.
  With ``respect_robots_txt`` each origin's robots.txt is fetched once per
  worker (a 4xx means no rules; 5xx or no answer means nothing is fetched
  there, RFC 9309) and a disallowed URL gives ``opted_out``, detail "robots.txt ...".
* Unless ``allow_private_network``, every connection (first URL and every
  redirect hop) resolves the host once, refuses loopback, private, link-local,
  multicast, reserved and unspecified addresses (``blocked_address``) and
  connects to the very address it checked; TLS SNI and Host stay the hostname.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import heapq
import http.client
import ipaddress
import itertools
import logging
import os
import queue
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from urllib.parse import urldefrag, urljoin

import urllib3
from paircurate.crawl.health import HostHealth
from paircurate.crawl.politeness import (
    HostBusyError,
    HostLimiter,
    RobotsCache,
    allow_all_robots,
    blocked_address_reason,
    opt_out_matches,
    parse_robots_txt,
)
from paircurate.schemas.config import DownloadConfig
from paircurate.schemas.outcomes import Reason, RejectError
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    LocationParseError,
    LocationValueError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util import Url, parse_url
from urllib3.util.connection import create_connection

log = logging.getLogger(__name__)

__all__ = ["FetchContext", "FetchResult", "download_image", "host_key", "make_pool", "parse_retry_after", "REDIRECT_STATUSES"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_OCTET_STREAM_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
_ALLOWED_SCHEMES = ("http", "https")

# read1() returns whatever has arrived, up to this much; small enough that a
# size cap overshoots by little, large enough that fast bodies cost few calls.
_READ_CHUNK = 64 * 1024
# Error and redirect bodies up to this size are read and dropped so the
# keep-alive connection can be reused; bigger or unsized ones cost a reconnect
# instead of an unbounded read.
_DRAIN_LIMIT = 64 * 1024
# Socket timeouts fire a little early or late; within this of the deadline a
# timeout is the deadline's doing.
_DEADLINE_SLACK = 0.05
# RFC 9309 asks parsers to read at least 500 KiB of a robots.txt; beyond this
# much the rest is ignored rather than the file refused.
_ROBOTS_MAX_BYTES = 512 * 1024
# robots.txt answers that mean "this host has no rules" (RFC 9309 2.3.1.3 and
# 2.3.1.2: a 4xx, or more redirects than we follow), as opposed to "could not ask".
_ROBOTS_ABSENT = frozenset(
    {Reason.HTTP_404, Reason.HTTP_4XX, Reason.TOO_MANY_REDIRECTS, Reason.REDIRECT_LOOP, Reason.INVALID_URL}
)


@dataclass(frozen=True)
class FetchResult:
    """A downloaded body and how it was obtained."""

    data: bytes
    status: int
    content_type: str | None
    final_url: str
    seconds: float
    attempts: int


class _RetryableError(RejectError):
    """A failure worth another attempt; ``retry_after`` is the server's wish, in seconds."""

    def __init__(self, reason: Reason, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class _HostBusy(_RetryableError, HostBusyError):
    """429 or 503: retried like other failures, and the host's window shrinks."""


@dataclass(frozen=True)
class _Body:
    data: bytes
    status: int
    content_type: str | None


@dataclass(frozen=True)
class _Redirect:
    location: str
    status: int


@dataclass(frozen=True)
class _Purpose:
    """What a request is for: an image (checked as one) or a robots.txt (read leniently)."""

    accept: str
    image: bool  # Content-Type, X-Robots-Tag and robots.txt checks apply
    max_bytes: int | None = None  # None: cfg.max_bytes
    truncate: bool = False  # past max_bytes keep the prefix instead of rejecting


_IMAGE = _Purpose(accept="image/*", image=True)
_ROBOTS = _Purpose(accept="text/plain, */*;q=0.1", image=False, max_bytes=_ROBOTS_MAX_BYTES, truncate=True)


class FetchContext:
    """What the download threads of one worker process share: connections, per-host limits, robots.txt rules.

        ctx = make_pool(cfg)                 # in DoFn.setup, once per process
        download_image(url, cfg, ctx)        # from any number of threads
        ctx.clear()                          # in DoFn.teardown

    The per-host limits and the private-address guard follow the config the
    context was made with.
    """

    def __init__(self, cfg: DownloadConfig, health: HostHealth | None = None) -> None:
        self.allow_private_network = cfg.allow_private_network
        self.pool = _pool_manager(cfg)
        self.limiter = HostLimiter(cfg.per_domain_concurrency, cfg.per_domain_rps, adaptive=cfg.adaptive_concurrency)
        self.robots = RobotsCache()
        # Shared with the worker's other processes when they pass theirs in.
        self.health = health if health is not None else HostHealth(cfg.host_failure_limit)

    def clear(self) -> None:
        """Close pooled connections; limits and cached robots.txt rules stay."""
        self.pool.clear()


def make_pool(cfg: DownloadConfig, health: HostHealth | None = None) -> FetchContext:
    """The ``FetchContext`` for ``cfg.threads`` concurrent downloads (keep-alive pool, host limits, robots cache).

    ``health``: the worker's ``HostHealth`` when several processes share one; a new one otherwise.
    """
    return FetchContext(cfg, health)


def _pool_manager(cfg: DownloadConfig) -> urllib3.PoolManager:
    """A keep-alive connection pool for ``cfg.threads`` concurrent downloads.

    Retries and redirects are off: ``download_image`` does both itself so they
    count against one deadline and one reason code.
    """
    socket_options = [
        # Python's http.server (and some real servers) write headers and body
        # in separate segments; with Nagle + delayed ACK a keep-alive request
        # can stall ~40 ms. See shared/HINTS.md.
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    ]
    manager = urllib3.PoolManager(
        # One pool per host; a crawl touches many hosts, and an evicted pool
        # only costs a reconnect, so keep a few per thread.
        num_pools=max(10, 2 * cfg.threads),
        # Every thread may hit the same host (CDNs, loopback benchmarks).
        maxsize=cfg.threads,
        # Never make a thread wait for a pooled connection; surplus ones are
        # simply closed when returned.
        block=False,
        retries=False,
        timeout=urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout),
        socket_options=socket_options,
    )
    # Sockets are opened by our own connection classes: the deadline's lookup
    # and watch sit there, and so does the address check, which has to sit
    # where the socket is opened: a separate lookup before the request could
    # get a different answer (DNS rebinding), and redirect hops open their
    # connections here too.
    if cfg.allow_private_network:
        manager.pool_classes_by_scheme = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}
    else:
        manager.pool_classes_by_scheme = {"http": _GuardedHTTPConnectionPool, "https": _GuardedHTTPSConnectionPool}
    return manager


def download_image(url: str, cfg: DownloadConfig, ctx: FetchContext) -> FetchResult:
    """Download ``url`` or raise ``RejectError`` with the reason it failed.

    ``ctx`` is ``make_pool(cfg)``, shared by all download threads of the process.
    """
    if not isinstance(ctx, FetchContext):
        raise TypeError(f"download_image needs the FetchContext from make_pool(cfg), got {type(ctx).__name__}")
    if ctx.allow_private_network and not cfg.allow_private_network:
        # Connections are pooled per host and checked when opened, so the
        # guard cannot be switched on for one call on an unguarded context.
        raise ValueError(
            "cfg.allow_private_network is False but the FetchContext was made with it True; "
            "make the context with make_pool(cfg) from the same config"
        )
    started = time.monotonic()
    return _fetch(url, cfg, ctx, _IMAGE, started, started + cfg.deadline)


def _fetch(
    url: str, cfg: DownloadConfig, ctx: FetchContext, purpose: _Purpose, started: float, deadline_at: float
) -> FetchResult:
    """Follow redirects and retry ``url`` until a body, a final failure or ``deadline_at``."""
    # Each hop's URL is parsed once, here: urllib3's parser costs ~35 us per
    # call, and host key, robots origin and request target all come from it.
    parsed = _check_scheme(url, url, redirected=False)
    check_robots = purpose.image and cfg.respect_robots_txt

    current = url
    seen = {_loop_key(url)}
    redirects = 0
    failures = 0
    robots_done = not check_robots
    while True:
        host = _host_key_of(parsed)
        if not robots_done:
            _check_robots(current, parsed, cfg, ctx, deadline_at)
            robots_done = True
        try:
            with ctx.limiter.slot(host, deadline_at):
                outcome = _attempt(current, parsed, host, url, cfg, ctx, deadline_at, purpose)
        except _RetryableError as err:
            failures += 1
            if err.retry_after is not None:
                # The host asked every client for quiet, not just this URL:
                # hold back the other threads too, even if this one gives up.
                ctx.limiter.pause(host, min(err.retry_after, cfg.retry_after_max), err.reason)
            _wait_for_retry(err, failures, cfg, deadline_at, current)
            continue

        if isinstance(outcome, _Body):
            return FetchResult(
                data=outcome.data,
                status=outcome.status,
                content_type=outcome.content_type,
                final_url=current,
                seconds=time.monotonic() - started,
                attempts=failures + 1,
            )

        target = urljoin(current, outcome.location)
        target_parsed = _check_scheme(target, current, redirected=True)
        key = _loop_key(target)
        if key in seen:
            raise RejectError(
                Reason.REDIRECT_LOOP,
                f"HTTP {outcome.status} from {current} back to {target}, already visited after {redirects + 1} redirect(s)",
            )
        redirects += 1
        if redirects > cfg.max_redirects:
            raise RejectError(
                Reason.TOO_MANY_REDIRECTS,
                f"more than {cfg.max_redirects} redirect(s); hop {redirects} was HTTP {outcome.status} from {current} to {target}",
            )
        seen.add(key)
        current, parsed = target, target_parsed
        robots_done = not check_robots


def _wait_for_retry(err: _RetryableError, failures: int, cfg: DownloadConfig, deadline_at: float, current: str) -> None:
    """Sleep before the next attempt, or raise the final ``RejectError`` when there is none."""
    if failures > cfg.retries:
        raise RejectError(err.reason, f"{err.detail} (gave up after {failures} attempt(s))")
    left = deadline_at - time.monotonic()
    if err.retry_after is not None:
        # Coming back sooner than asked would only earn another 429, and be rude.
        if err.retry_after > cfg.retry_after_max:
            raise RejectError(
                err.reason,
                f"{err.detail} (gave up after {failures} attempt(s): Retry-After {err.retry_after:.2f}s "
                f"is longer than retry_after_max {cfg.retry_after_max:g}s)",
            )
        if err.retry_after >= left:
            raise RejectError(
                err.reason,
                f"{err.detail} (gave up after {failures} attempt(s): Retry-After {err.retry_after:.2f}s "
                f"does not fit the {cfg.deadline:g}s deadline, {max(left, 0):.2f}s left)",
            )
    delay = _retry_delay(err, failures - 1, cfg, left)
    if delay >= left:
        raise RejectError(
            err.reason,
            f"{err.detail} (gave up after {failures} attempt(s): a retry in {delay:.2f}s "
            f"would not fit the {cfg.deadline:g}s deadline, {max(left, 0):.2f}s left)",
        )
    log.debug("retrying %s in %.2fs after %s", current, delay, err)
    time.sleep(delay)


def _check_robots(url: str, parsed: Url, cfg: DownloadConfig, ctx: FetchContext, deadline_at: float) -> None:
    """Raise ``opted_out`` if the origin's robots.txt disallows ``url`` (``parsed``) for ``cfg.robots_user_agent``."""
    scheme = (parsed.scheme or "http").lower()
    port = parsed.port or (443 if scheme == "https" else 80)
    origin = f"{scheme}://{_host_key_of(parsed)}:{port}"
    robots_url = f"{scheme}://{parsed.netloc}/robots.txt"

    def load():
        try:
            got = _fetch(robots_url, cfg, ctx, _ROBOTS, time.monotonic(), deadline_at)
        except RejectError as err:
            if err.reason in _ROBOTS_ABSENT:
                return allow_all_robots()
            if err.reason is Reason.BLOCKED_ADDRESS:
                raise  # the host itself is off limits; robots.txt has nothing to do with it
            # RFC 9309 2.3.1.4: an unreachable robots.txt means "assume
            # everything is disallowed"; the reason says what went wrong.
            raise RejectError(
                err.reason, f"robots.txt {robots_url} could not be read, so {origin} is not crawled: {err.detail}"
            ) from None
        return parse_robots_txt(got.data)

    rules = ctx.robots.get(origin, deadline_at, load)
    if not rules.can_fetch(cfg.robots_user_agent, url):
        raise RejectError(
            Reason.OPTED_OUT, f"robots.txt {robots_url} disallows {url} for user agent {cfg.robots_user_agent!r}"
        )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date).

    ``now`` is a Unix timestamp (defaults to the current time). Returns None
    for a missing or unparseable value; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # Fractions are not in the RFC, but mean the same thing to anyone who sends them.
        return seconds if seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    reference = time.time() if now is None else now
    return max(0.0, when.timestamp() - reference)


def _attempt(
    url: str, parsed: Url, host: str, original: str, cfg: DownloadConfig, ctx: FetchContext, deadline_at: float, purpose: _Purpose
) -> _Body | _Redirect:
    """One request to ``url``: a body, a redirect to follow, or a RejectError.

    The request runs under a watch: at ``deadline_at`` the watchdog shuts its
    socket down, whatever the thread is blocked in, and whatever that makes
    the request fail with is reported as the deadline it is.
    """
    where = "" if url == original else f" at {url}"
    left = deadline_at - time.monotonic()
    if left <= 0:
        raise RejectError(Reason.TIMEOUT, f"deadline of {cfg.deadline:g}s exceeded before requesting {url}")
    unavailable = ctx.health.unavailable(host)
    if unavailable:
        raise RejectError(Reason.HOST_UNAVAILABLE, f"{unavailable}{where}")
    watch = _WATCHDOG.watch(deadline_at)
    _CURRENT.watch = watch
    try:
        outcome = _attempt_watched(parsed, host, cfg, ctx, deadline_at, purpose, watch, where)
    except RejectError as err:
        if watch.fired:
            err = RejectError(Reason.TIMEOUT, f"deadline of {cfg.deadline:g}s exceeded {watch.phase}{where}")
        if err.reason in (Reason.CONNECTION_ERROR, Reason.TIMEOUT) and watch.phase == _BEFORE_ANSWER:
            # No answer at all (refused, unresolvable, silent): one more sign the host is down.
            ctx.health.failed(host, f"{err.reason.value}: {err.detail}")
        if watch.fired:
            raise err from None
        raise
    finally:
        _CURRENT.watch = None
        watch.finish()
    if watch.fired:
        # The socket was shut mid-body: what was read may look complete but is not.
        raise RejectError(Reason.TIMEOUT, f"deadline of {cfg.deadline:g}s exceeded {watch.phase}{where}")
    return outcome


def _attempt_watched(
    parsed: Url, host: str, cfg: DownloadConfig, ctx: FetchContext, deadline_at: float, purpose: _Purpose, watch: "_Watch", where: str
) -> _Body | _Redirect:
    left = deadline_at - time.monotonic()
    timeout = urllib3.Timeout(
        total=left,
        connect=min(cfg.connect_timeout, left),
        read=min(cfg.read_timeout, left),
    )
    headers = {"User-Agent": cfg.user_agent, "Accept": purpose.accept}
    try:
        # What PoolManager.urlopen does (no proxy, redirects off), minus its
        # second parse of the URL: the host's pool, then the request target.
        pool = ctx.pool.connection_from_host(parsed.host, port=parsed.port, scheme=parsed.scheme)
        resp = pool.urlopen(
            "GET",
            parsed.request_uri,
            headers=headers,
            timeout=timeout,
            retries=False,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=True,
        )
    except RejectError as err:
        # The address guard refused the connection (see _connect_checked).
        raise RejectError(err.reason, f"{err.detail}{where}") from None
    except Exception as exc:  # noqa: BLE001 - classified, never swallowed
        raise _classify(exc, where, deadline_at, cfg) from exc

    if watch.fired:
        # Cut while the headers were dripping in: http.client takes the EOF
        # for their end, so this "response" is whatever arrived until then.
        resp.close()
        resp.release_conn()
        raise _RetryableError(Reason.TIMEOUT, "cut off")
    # The server answered: the host is up, whatever the status says.
    ctx.health.answered(host)
    watch.phase = _READING_BODY
    # Whether the connection may go back to the pool for reuse: only if the
    # body was read to its end. Anything else closes it first.
    clean = False
    try:
        status = resp.status
        status_line = f"HTTP {status} {resp.reason or ''}".rstrip()
        if status in REDIRECT_STATUSES:
            location = resp.headers.get("Location")
            if not location:
                raise RejectError(Reason.INVALID_URL, f"{status_line} without a Location header{where}")
            clean = _drain(resp, deadline_at)
            return _Redirect(location=location, status=status)
        if status == 429 or status == 503:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            reason = Reason.HTTP_429 if status == 429 else Reason.HTTP_5XX
            extra = "" if retry_after is None else f", Retry-After {resp.headers.get('Retry-After')}"
            clean = _drain(resp, deadline_at)
            raise _HostBusy(reason, f"{status_line}{extra}{where}", retry_after=retry_after)
        if status >= 500:
            clean = _drain(resp, deadline_at)
            raise _RetryableError(Reason.HTTP_5XX, f"{status_line}{where}")
        if status == 404:
            clean = _drain(resp, deadline_at)
            raise RejectError(Reason.HTTP_404, f"{status_line}{where}")
        if status >= 400:
            clean = _drain(resp, deadline_at)
            raise RejectError(Reason.HTTP_4XX, f"{status_line}{where}")
        if not 200 <= status < 300:
            # 1xx never reach us; 300/304/305 cannot be followed to an image.
            raise RejectError(Reason.INVALID_URL, f"{status_line} cannot be followed{where}")

        content_type = resp.headers.get("Content-Type") or None
        if purpose.image:
            robots_tags = resp.headers.getlist("X-Robots-Tag")
            opted_out = opt_out_matches(robots_tags, cfg.opt_out_tags, cfg.robots_user_agent)
            if opted_out:
                # Decided on headers alone, and not even drained for keep-alive:
                # no byte of an opted-out image is read.
                raise RejectError(
                    Reason.OPTED_OUT, f"X-Robots-Tag {'; '.join(robots_tags)!r} sets {', '.join(opted_out)}{where}"
                )
            if content_type is not None and not _is_image_type(content_type):
                raise RejectError(Reason.NOT_AN_IMAGE, f"Content-Type {content_type!r}{where}")

        limit = purpose.max_bytes or cfg.max_bytes
        declared = _declared_length(resp)
        if declared is not None and declared > limit and not purpose.truncate:
            raise RejectError(
                Reason.TOO_LARGE, f"Content-Length {declared} > max_bytes {limit}{where}"
            )

        data, complete = _read_body(resp, limit, deadline_at, cfg, declared, where, truncate=purpose.truncate)
        if complete and declared is not None and resp.tell() < declared:
            raise RejectError(Reason.TRUNCATED, f"got {resp.tell()} of {declared} bytes (Content-Length){where}")
        clean = complete
        return _Body(data=data, status=status, content_type=content_type)
    except RejectError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified, never swallowed
        raise _classify(exc, where, deadline_at, cfg) from exc
    finally:
        if not clean or watch.fired:
            # An unread or half-read body would be parsed as the next
            # response on this connection: close it before the pool sees it.
            resp.close()
        resp.release_conn()


def _read_body(
    resp: urllib3.BaseHTTPResponse,
    limit: int,
    deadline_at: float,
    cfg: DownloadConfig,
    declared: int | None,
    where: str,
    *,
    truncate: bool = False,
) -> tuple[bytes, bool]:
    """Read the body piecewise, stopping at ``limit`` bytes or the deadline.

    Returns the bytes and whether the body was read to its end; past ``limit``
    that is ``(first limit bytes, False)`` with ``truncate``, else ``too_large``.
    """
    buf = bytearray()

    def past_deadline() -> RejectError:
        of = f" of {declared}" if declared is not None else ""
        return RejectError(
            Reason.TIMEOUT,
            f"deadline of {cfg.deadline:g}s exceeded while reading the body: {len(buf)}{of} bytes received{where}",
        )

    while True:
        left = deadline_at - time.monotonic()
        if left <= 0:
            raise past_deadline()
        # A read that blocks must not outlive the deadline either: the socket
        # timeout set for the attempt was based on an earlier clock.
        _set_read_timeout(resp, min(cfg.read_timeout, left))
        try:
            chunk = resp.read1(_READ_CHUNK)
        except ReadTimeoutError:
            if time.monotonic() >= deadline_at - _DEADLINE_SLACK:
                raise past_deadline() from None
            raise
        if not chunk:
            return bytes(buf), True
        buf += chunk
        if len(buf) > limit and truncate:
            return bytes(buf[:limit]), False
        if len(buf) > limit:
            raise RejectError(
                Reason.TOO_LARGE,
                f"body passed max_bytes {limit}: stopped after {len(buf)} bytes, no Content-Length{where}"
                if declared is None
                else f"body passed max_bytes {limit} after {len(buf)} bytes{where}",
            )


def _drain(resp: urllib3.BaseHTTPResponse, deadline_at: float) -> bool:
    """Read a small, sized body to its end so the connection stays reusable.

    Returns True when the connection is clean; False means close it.
    """
    declared = _declared_length(resp)
    if declared is None or declared > _DRAIN_LIMIT:
        return False
    try:
        while time.monotonic() < deadline_at:
            _set_read_timeout(resp, max(0.001, deadline_at - time.monotonic()))
            if not resp.read1(_READ_CHUNK):
                return True
    except Exception:  # noqa: BLE001 - a broken error body only costs the connection
        return False
    return False


def _set_read_timeout(resp: urllib3.BaseHTTPResponse, seconds: float) -> None:
    conn = getattr(resp, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.settimeout(max(seconds, 0.001))
        except OSError:
            pass  # already closed: the next read reports it


def _declared_length(resp: urllib3.BaseHTTPResponse) -> int | None:
    # urllib3 has already parsed Content-Length (None when chunked, absent or
    # malformed); before any read it is the declared size.
    length = getattr(resp, "length_remaining", None)
    if length is None:
        return None
    return length + resp.tell()


def _is_image_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("image/") or media in _OCTET_STREAM_TYPES


def _check_scheme(url: str, came_from: str, *, redirected: bool) -> Url:
    """``url`` parsed, or ``invalid_url`` unless it is http(s) with a host."""
    try:
        parsed = parse_url(url)
    except LocationValueError as exc:
        raise RejectError(Reason.INVALID_URL, f"cannot parse {url!r}: {exc}") from exc
    scheme = (parsed.scheme or "").lower()
    if scheme not in _ALLOWED_SCHEMES or not parsed.host:
        if redirected:
            raise RejectError(Reason.INVALID_URL, f"redirect from {came_from} to unsupported URL {url!r}")
        raise RejectError(Reason.INVALID_URL, f"unsupported URL {url!r}: need http(s) with a host")
    return parsed


def _loop_key(url: str) -> str:
    # Fragments never reach the server, so they do not make a URL new.
    return urldefrag(url)[0]


def host_key(url: str) -> str:
    """The host a URL's per-host limits and failure count go by: lower case, no trailing dot, no brackets.

    Per-host limits must not be dodged by case or a trailing dot
    (``Example.COM.`` is ``example.com``). '' for a URL without a parsable host.
    """
    try:
        return _host_key_of(parse_url(url))
    except LocationValueError:
        return ""


def _host_key_of(parsed: Url) -> str:
    return (parsed.host or "").lower().strip("[]").rstrip(".")



def _retry_delay(err: _RetryableError, retry_index: int, cfg: DownloadConfig, left: float) -> float:
    if err.retry_after is not None:
        # Threads told "come back in 5 s" at the same moment would all come
        # back together; spread them a little, never earlier than asked.
        spread = min(0.1 * err.retry_after, 1.0, (left - err.retry_after) / 2)
        return err.retry_after + random.uniform(0, max(spread, 0.0))
    base = cfg.backoff_base * 2**retry_index
    # "Equal jitter": at least half the backoff, so a stampede of threads
    # retrying one host spreads out without retrying immediately.
    return min(cfg.backoff_max, base / 2 + random.uniform(0, base / 2))


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _classify(exc: Exception, where: str, deadline_at: float, cfg: DownloadConfig) -> RejectError:
    """Map a urllib3 / socket exception to a reason; retryable ones as such."""
    err = _classify_exception(exc, where)
    if err.reason is Reason.TIMEOUT and time.monotonic() >= deadline_at - _DEADLINE_SLACK:
        # The socket timeout was cut short to fit the deadline: say so, and
        # don't offer a retry there is no time for.
        return RejectError(Reason.TIMEOUT, f"deadline of {cfg.deadline:g}s exceeded: {err.detail}")
    return err


def _classify_exception(exc: Exception, where: str) -> RejectError:
    detail = f"{_describe(exc)}{where}"
    # NewConnectionError subclasses ConnectTimeoutError for old callers' sake,
    # but a refused connection or failed DNS lookup is not a timeout.
    if isinstance(exc, NewConnectionError):
        return _RetryableError(Reason.CONNECTION_ERROR, detail)
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, socket.timeout)):
        return _RetryableError(Reason.TIMEOUT, detail)
    if isinstance(exc, ProtocolError):
        cause = exc.args[1] if len(exc.args) > 1 else exc.__cause__
        if isinstance(cause, http.client.IncompleteRead):
            return RejectError(Reason.TRUNCATED, f"{_describe(cause)}{where}")
        if isinstance(cause, (socket.timeout, TimeoutError)):
            return _RetryableError(Reason.TIMEOUT, detail)
        return _RetryableError(Reason.CONNECTION_ERROR, detail)
    if isinstance(exc, LocationValueError):
        return RejectError(Reason.INVALID_URL, detail)
    if isinstance(exc, DecodeError):
        # The Content-Encoding did not decode (e.g. broken gzip); the bytes
        # are unusable, but a retry will not change a server's encoder.
        return RejectError(Reason.DECODE_ERROR, detail)
    if isinstance(exc, (HTTPError, OSError, http.client.HTTPException)):
        return _RetryableError(Reason.CONNECTION_ERROR, detail)
    return RejectError(Reason.INTERNAL_ERROR, detail)



# -- the deadline's clock ---------------------------------------------------------------

_BEFORE_ANSWER = "before the status line and headers arrived"
_READING_BODY = "while reading the body"


class _Watch:
    """One attempt's sockets, shut down by the watchdog when its deadline passes."""

    def __init__(self, deadline_at: float) -> None:
        self.deadline_at = deadline_at
        self.phase = _BEFORE_ANSWER
        self.fired = False
        self.finished = False
        self._lock = threading.Lock()
        # Duplicates of the sockets' descriptors: the watch owns them, so a
        # connection closed and its descriptor number reused by another
        # thread can never be shut down by mistake.
        self._socks: dict[int, socket.socket] = {}

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        try:
            fileno = sock.fileno()
            if fileno < 0:
                return
            with self._lock:
                if self.finished or fileno in self._socks:
                    return
                # fromfd dup()s the descriptor; works for TLS sockets too,
                # which cannot be dup()ed as SSLSocket objects.
                dup = socket.fromfd(fileno, sock.family, sock.type)
                self._socks[fileno] = dup
                if self.fired:
                    _shut(dup)
        except OSError:
            pass  # already closed: nothing left to cut

    def fire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.fired = True
            for dup in self._socks.values():
                # shutdown() acts on the connection, not the descriptor: a
                # thread blocked in recv() on the original wakes up at once.
                _shut(dup)

    def finish(self) -> None:
        with self._lock:
            self.finished = True
            socks, self._socks = list(self._socks.values()), {}
        for dup in socks:
            dup.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """One thread per process that fires each watch at its deadline.

    Per-read socket timeouts restart with every byte, so a server that drips
    its status line or headers would outlive any deadline built from them
    alone; closing the socket from another thread is the only way to stop a
    thread blocked inside http.client or ssl.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def watch(self, deadline_at: float) -> _Watch:
        watch = _Watch(deadline_at)
        with self._cond:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                # A forked child inherits the object but not the thread.
                self._heap = []
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="fetch-deadline", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (deadline_at, next(self._order), watch))
            if self._heap[0][2] is watch:
                self._cond.notify()
        return watch

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].finished):
                    _, _, watch = heapq.heappop(self._heap)
                    watch.fire()  # no-op for a finished one
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()
# The watch of the attempt running on this thread, for the connection classes below.
_CURRENT = threading.local()


def _current_watch() -> _Watch | None:
    return getattr(_CURRENT, "watch", None)


class _Resolver:
    """``getaddrinfo`` on a few daemon threads, so a caller can stop waiting at its deadline.

    A lookup cannot be interrupted; the caller abandons it instead, and the
    lookup ends on its own by the resolver's timeouts. Daemon threads, so a
    lookup still hanging never holds up the process's exit.
    """

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started_in = 0  # pid: a forked child starts its own threads

    def submit(self, host: str, port: int) -> concurrent.futures.Future:
        with self._lock:
            if self._started_in != os.getpid():
                self._queue = queue.SimpleQueue()
                for i in range(self._threads):
                    threading.Thread(target=self._serve, args=(self._queue,), name=f"fetch-dns-{i}", daemon=True).start()
                self._started_in = os.getpid()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, host, port))
        return future

    @staticmethod
    def _serve(jobs: queue.SimpleQueue) -> None:
        while True:
            future, host, port = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up before the lookup began
            try:
                future.set_result(socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller as the lookup's outcome
                future.set_exception(exc)


_RESOLVER = _Resolver(threads=16)


def _resolve(host: str, port: int) -> list:
    """``getaddrinfo`` that gives up at the current attempt's deadline (a ``socket.timeout``)."""
    watch = _current_watch()
    try:
        ipaddress.ip_address(host)
        numeric = True
    except ValueError:
        numeric = False
    if watch is None or numeric:  # numeric addresses need no lookup and no thread
        return socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    future = _RESOLVER.submit(host, port)
    try:
        return future.result(timeout=max(0.0, watch.deadline_at - time.monotonic()))
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise socket.timeout(f"DNS lookup of {host} did not finish before the deadline") from None


# -- opening connections: the private-address guard and the watch ---------------------


def _open_socket(conn: HTTPConnection, refuse_private: bool) -> socket.socket:
    """Resolve ``conn``'s host once (bounded by the deadline), connect, and put the socket under watch.

    Used in place of urllib3's ``_new_conn``. With ``refuse_private`` every
    refused address is dropped and the address checked is the address
    connected to; ``RejectError(blocked_address)`` when every address is
    refused. urllib3's own exceptions for everything else.
    """
    host = conn._dns_host  # noqa: SLF001 - urllib3's unbracketed, dot-stripped host
    try:
        infos = _resolve(host, conn.port)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    except socket.timeout as exc:
        raise ConnectTimeoutError(conn, str(exc)) from exc
    except UnicodeError:
        raise LocationParseError(f"{host!r}, label empty or too long") from None

    timeout = conn.timeout
    # The connect timeout bounds the whole connect, however many addresses
    # the name has, as a deadline-derived timeout must.
    budget_at = time.monotonic() + timeout if isinstance(timeout, (int, float)) else None
    refused: list[str] = []
    error: OSError | None = None
    for _family, _type, _proto, _name, sockaddr in infos:
        address = sockaddr[0]
        why = blocked_address_reason(address) if refuse_private else None
        if why is not None:
            refused.append(f"{address} ({why})")
            continue
        remaining = timeout if budget_at is None else budget_at - time.monotonic()
        if budget_at is not None and remaining <= 0:
            error = socket.timeout("connect timeout spent on earlier addresses")
            break
        try:
            # A numeric address: create_connection's own lookup cannot answer
            # differently from the one just checked.
            sock = create_connection(
                (address, sockaddr[1]),
                remaining,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except OSError as exc:
            error = exc
            continue
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        watch = _current_watch()
        if watch is not None:
            # Registered before TLS wraps it: the handshake is watched too
            # (the TLS socket keeps this descriptor).
            watch.add(sock)
        return sock

    if error is None:
        raise RejectError(
            Reason.BLOCKED_ADDRESS,
            f"refused to connect to {conn.host}: {', '.join(refused)} (allow_private_network is off)",
        )
    if isinstance(error, socket.timeout):
        raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. (connect timeout={timeout})") from error
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error


class _Watched:
    """What our HTTP and HTTPS connections add: the address guard on connect, the deadline watch on every request."""

    refuse_private = False

    def _new_conn(self) -> socket.socket:
        return _open_socket(self, self.refuse_private)

    def request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib3's signature, passed through
        # A kept-alive connection was opened under an earlier watch.
        watch = _current_watch()
        if watch is not None:
            watch.add(self.sock)
        return super().request(*args, **kwargs)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    # connect() wraps the socket in TLS with server_hostname = self.host, so
    # SNI and certificate checks still use the name, not the address.
    pass


class _GuardedHTTPConnection(_WatchedHTTPConnection):
    refuse_private = True


class _GuardedHTTPSConnection(_WatchedHTTPSConnection):
    refuse_private = True


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection
