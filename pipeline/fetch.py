"""Fetch one image URL over HTTP with bounded time, size and retries.

    cfg = DownloadConfig(deadline=10.0, retries=2)
    pool = make_pool(cfg)          # one per worker, shared by its threads
    try:
        result = download_image("http://127.0.0.1:8000/cat.jpg", cfg, pool)
        result.data, result.status, result.attempts   # b'\xff\xd8...', 200, 1
    except RejectError as err:
        err.reason, err.detail     # Reason.HTTP_404, 'HTTP 404 Not Found'

Every failure is a ``RejectError`` carrying one ``Reason`` code and a
human-readable ``detail``; callers turn it into a reject row. No Beam here.

Semantics worth knowing:

* ``cfg.deadline`` bounds the whole URL: every attempt, redirect hop, backoff
  sleep and body byte. Per-attempt connect/read timeouts are capped by what is
  left of it.
* ``attempts`` in the result counts tries of the request (1 + retries used);
  redirect hops are not attempts. The retry budget ``cfg.retries`` is shared by
  the whole redirect chain, and a retry repeats the current hop, not the chain.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import random
import socket
import time
from dataclasses import dataclass
from datetime import timezone
from urllib.parse import urldefrag, urljoin

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util import parse_url

from paircurate.config import DownloadConfig
from paircurate.filters.decision import Reason, RejectError

log = logging.getLogger(__name__)

__all__ = ["FetchResult", "download_image", "make_pool", "parse_retry_after", "REDIRECT_STATUSES"]

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


@dataclass(frozen=True)
class _Body:
    data: bytes
    status: int
    content_type: str | None


@dataclass(frozen=True)
class _Redirect:
    location: str
    status: int


def make_pool(cfg: DownloadConfig) -> urllib3.PoolManager:
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
    return urllib3.PoolManager(
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


def download_image(url: str, cfg: DownloadConfig, pool: urllib3.PoolManager) -> FetchResult:
    """Download ``url`` or raise ``RejectError`` with the reason it failed."""
    started = time.monotonic()
    deadline_at = started + cfg.deadline
    _check_scheme(url, url, redirected=False)

    current = url
    seen = {_loop_key(url)}
    redirects = 0
    failures = 0
    while True:
        try:
            outcome = _attempt(current, url, cfg, pool, deadline_at)
        except _RetryableError as err:
            failures += 1
            if failures > cfg.retries:
                raise RejectError(err.reason, f"{err.detail} (gave up after {failures} attempt(s))") from None
            left = deadline_at - time.monotonic()
            if err.retry_after is not None and err.retry_after >= left:
                # Coming back sooner than asked would only earn another 429.
                raise RejectError(
                    err.reason,
                    f"{err.detail} (gave up after {failures} attempt(s): Retry-After {err.retry_after:.2f}s "
                    f"does not fit the {cfg.deadline:g}s deadline, {max(left, 0):.2f}s left)",
                ) from None
            delay = _retry_delay(err, failures - 1, cfg)
            if delay >= left:
                raise RejectError(
                    err.reason,
                    f"{err.detail} (gave up after {failures} attempt(s): a retry in {delay:.2f}s "
                    f"would not fit the {cfg.deadline:g}s deadline, {max(left, 0):.2f}s left)",
                ) from None
            log.debug("retrying %s in %.2fs after %s", current, delay, err)
            time.sleep(delay)
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
        _check_scheme(target, current, redirected=True)
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
        current = target


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
    url: str, original: str, cfg: DownloadConfig, pool: urllib3.PoolManager, deadline_at: float
) -> _Body | _Redirect:
    """One request to ``url``: a body, a redirect to follow, or a RejectError."""
    where = "" if url == original else f" at {url}"
    left = deadline_at - time.monotonic()
    if left <= 0:
        raise RejectError(Reason.TIMEOUT, f"deadline of {cfg.deadline:g}s exceeded before requesting {url}")
    timeout = urllib3.Timeout(
        total=left,
        connect=min(cfg.connect_timeout, left),
        read=min(cfg.read_timeout, left),
    )
    headers = {"User-Agent": cfg.user_agent, "Accept": "image/*"}
    try:
        resp = pool.urlopen(
            "GET",
            url,
            headers=headers,
            timeout=timeout,
            retries=False,
            redirect=False,
            preload_content=False,
            decode_content=True,
        )
    except Exception as exc:  # noqa: BLE001 - classified, never swallowed
        raise _classify(exc, where, deadline_at, cfg) from exc

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
            raise _RetryableError(reason, f"{status_line}{extra}{where}", retry_after=retry_after)
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
        if content_type is not None and not _is_image_type(content_type):
            raise RejectError(Reason.NOT_AN_IMAGE, f"Content-Type {content_type!r}{where}")

        declared = _declared_length(resp)
        if declared is not None and declared > cfg.max_bytes:
            raise RejectError(
                Reason.TOO_LARGE, f"Content-Length {declared} > max_bytes {cfg.max_bytes}{where}"
            )

        data = _read_body(resp, cfg.max_bytes, deadline_at, cfg, declared, where)
        if declared is not None and resp.tell() < declared:
            raise RejectError(Reason.TRUNCATED, f"got {resp.tell()} of {declared} bytes (Content-Length){where}")
        clean = True
        return _Body(data=data, status=status, content_type=content_type)
    except RejectError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified, never swallowed
        raise _classify(exc, where, deadline_at, cfg) from exc
    finally:
        if not clean:
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
) -> bytes:
    """Read the body piecewise, stopping at ``limit`` bytes or the deadline."""
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
            return bytes(buf)
        buf += chunk
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


def _check_scheme(url: str, came_from: str, *, redirected: bool) -> None:
    try:
        parsed = parse_url(url)
    except LocationValueError as exc:
        raise RejectError(Reason.INVALID_URL, f"cannot parse {url!r}: {exc}") from exc
    scheme = (parsed.scheme or "").lower()
    if scheme not in _ALLOWED_SCHEMES or not parsed.host:
        if redirected:
            raise RejectError(Reason.INVALID_URL, f"redirect from {came_from} to unsupported URL {url!r}")
        raise RejectError(Reason.INVALID_URL, f"unsupported URL {url!r}: need http(s) with a host")


def _loop_key(url: str) -> str:
    # Fragments never reach the server, so they do not make a URL new.
    return urldefrag(url)[0]


def _retry_delay(err: _RetryableError, retry_index: int, cfg: DownloadConfig) -> float:
    if err.retry_after is not None:
        return min(err.retry_after, cfg.backoff_max)
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

