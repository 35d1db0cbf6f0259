"""download_image against a real HTTP server on 127.0.0.1 (no mocked client)."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from email.utils import formatdate

import pytest
from helpers import solid_jpeg
from paircurate.crawl.client import (
    FetchResult,
    download_image,
    make_pool,
    parse_retry_after,
)
from paircurate.schemas.config import DownloadConfig
from paircurate.schemas.outcomes import Reason, RejectError

from paircurate.testing.loopback import FAULT_IMAGE, LoopbackServer

# Small timeouts keep the file fast; tests that exercise one knob override it.
FAST = DownloadConfig(
    threads=4,
    connect_timeout=1.0,
    read_timeout=2.0,
    deadline=5.0,
    retries=0,
    backoff_base=0.02,
    backoff_max=0.5,
    max_bytes=1_000_000,
    max_redirects=3,
    user_agent="paircurate-test/1.0",
    # Every server here is on 127.0.0.1, which the address guard refuses by default.
    allow_private_network=True,
)


def cfg(**overrides) -> DownloadConfig:
    return dataclasses.replace(FAST, **overrides)


@pytest.fixture
def pool():
    p = make_pool(FAST)
    yield p
    p.clear()


def reject(url: str, config: DownloadConfig, pool) -> tuple[RejectError, float]:
    started = time.monotonic()
    with pytest.raises(RejectError) as info:
        download_image(url, config, pool)
    return info.value, time.monotonic() - started


# -- success -----------------------------------------------------------------


def test_valid_image_is_byte_exact(loopback_server, pool):
    body = solid_jpeg()
    loopback_server.add("/img/a.jpg", body)
    result = download_image(loopback_server.url("/img/a.jpg"), FAST, pool)
    assert isinstance(result, FetchResult)
    assert result.data == body
    assert result.status == 200
    assert result.content_type == "image/jpeg"
    assert result.final_url == loopback_server.url("/img/a.jpg")
    assert result.attempts == 1
    assert 0 <= result.seconds < 1


def test_octet_stream_and_missing_content_type_are_accepted(loopback_server, pool):
    loopback_server.add("/bin", FAULT_IMAGE, "application/octet-stream")
    loopback_server.add("/none", FAULT_IMAGE, None)
    assert download_image(loopback_server.url("/bin"), FAST, pool).data == FAULT_IMAGE
    result = download_image(loopback_server.url("/none"), FAST, pool)
    assert result.data == FAULT_IMAGE and result.content_type is None


def test_request_headers_reach_the_server(loopback_server, pool):
    loopback_server.add("/h.png", FAULT_IMAGE, "image/png")
    download_image(loopback_server.url("/h.png"), cfg(user_agent="curator-x/9"), pool)
    (request,) = loopback_server.requests("/h.png")
    assert request.headers["User-Agent"] == "curator-x/9"
    assert request.headers["Accept"] == "image/*"


def test_keep_alive_reuses_one_connection(loopback_server, pool):
    loopback_server.add("/k.png", FAULT_IMAGE, "image/png")
    for _ in range(5):
        download_image(loopback_server.url("/k.png"), FAST, pool)
    assert loopback_server.connections == 1


# -- HTTP status reasons -----------------------------------------------------------


def test_http_404(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/404"), cfg(retries=2), pool)
    assert err.reason is Reason.HTTP_404
    assert "404" in err.detail
    assert loopback_server.hits("/fault/404") == 1  # 4xx is never retried


def test_http_4xx(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/status/403"), cfg(retries=2), pool)
    assert err.reason is Reason.HTTP_4XX
    assert "403" in err.detail
    assert loopback_server.hits("/fault/status/403") == 1


def test_http_5xx_after_retries(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/500"), cfg(retries=2), pool)
    assert err.reason is Reason.HTTP_5XX
    assert "500" in err.detail
    assert loopback_server.hits("/fault/500") == 3


def test_http_429_when_retry_after_exceeds_deadline(loopback_server, pool):
    err, elapsed = reject(loopback_server.url("/fault/429?retry_after=30&id=far"), cfg(retries=3, deadline=2.0), pool)
    assert err.reason is Reason.HTTP_429
    assert "Retry-After" in err.detail
    assert loopback_server.hits("/fault/429") == 1  # gave up rather than come back early
    assert elapsed < 0.5


def test_http_429_without_retries(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/429?id=none"), cfg(retries=0), pool)
    assert err.reason is Reason.HTTP_429


# -- retries -------------------------------------------------------------------


def test_flaky_succeeds_on_third_attempt(loopback_server, pool):
    result = download_image(loopback_server.url("/fault/flaky/2/a"), cfg(retries=2), pool)
    assert result.data == FAULT_IMAGE
    assert result.attempts == 3
    assert loopback_server.hits("/fault/flaky/2/a") == 3


def test_flaky_fails_when_retries_run_out(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/flaky/2/b"), cfg(retries=1), pool)
    assert err.reason is Reason.HTTP_5XX
    assert loopback_server.hits("/fault/flaky/2/b") == 2


def test_429_retry_after_seconds_is_honoured(loopback_server, pool):
    started = time.monotonic()
    result = download_image(
        loopback_server.url("/fault/429?retry_after=1&id=s"), cfg(retries=1, backoff_max=5.0), pool
    )
    elapsed = time.monotonic() - started
    assert result.data == FAULT_IMAGE
    assert result.attempts == 2
    assert elapsed >= 1.0
    assert elapsed < 2.0


def test_503_retry_after_is_not_cut_short_by_backoff_max(loopback_server, pool):
    # backoff_max is for our own backoff; a server's Retry-After is honoured in full.
    started = time.monotonic()
    result = download_image(
        loopback_server.url("/fault/429?status=503&retry_after=1&id=c"), cfg(retries=1, backoff_max=0.3), pool
    )
    assert result.attempts == 2
    assert 1.0 <= time.monotonic() - started < 2.0


def test_retry_after_longer_than_retry_after_max_gives_up(loopback_server, pool):
    # Retrying sooner than asked would only earn another 503: give up at once.
    err, elapsed = reject(
        loopback_server.url("/fault/429?status=503&retry_after=3&id=d"), cfg(retries=1, retry_after_max=0.5), pool
    )
    assert err.reason is Reason.HTTP_5XX
    assert "retry_after_max" in err.detail
    assert loopback_server.hits("/fault/429") == 1
    assert elapsed < 0.5


def test_parse_retry_after():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


# -- timeouts and the deadline -----------------------------------------------------


def test_read_timeout_on_slow_headers(loopback_server, pool):
    err, elapsed = reject(loopback_server.url("/fault/slow?seconds=3"), cfg(read_timeout=0.3), pool)
    assert err.reason is Reason.TIMEOUT
    assert 0.3 <= elapsed < 1.0


def test_slow_server_is_cut_off_at_the_deadline(loopback_server, pool):
    # read_timeout alone would allow 10 s per attempt; the deadline wins.
    err, elapsed = reject(
        loopback_server.url("/fault/slow?seconds=5"), cfg(read_timeout=10.0, deadline=1.0, retries=3), pool
    )
    assert err.reason is Reason.TIMEOUT
    assert "deadline" in err.detail
    assert 0.9 <= elapsed < 1.5


def test_drip_is_cut_off_at_the_deadline(loopback_server, pool):
    err, elapsed = reject(loopback_server.url("/fault/drip"), cfg(read_timeout=5.0, deadline=2.0, retries=2), pool)
    assert err.reason is Reason.TIMEOUT
    assert "deadline" in err.detail
    assert 1.9 <= elapsed < 3.0


def test_endless_is_cut_off_at_the_deadline(loopback_server, pool):
    # ~1.6 MB/s for 2 s stays under max_bytes, so only the deadline can stop it.
    err, elapsed = reject(loopback_server.url("/fault/endless"), cfg(deadline=2.0, max_bytes=50_000_000), pool)
    assert err.reason is Reason.TIMEOUT
    assert 1.9 <= elapsed < 3.0


def test_connect_timeout(pool):
    # A listener whose accept queue is full drops new SYNs, so connect() hangs:
    # a connect timeout without leaving 127.0.0.1.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(16):
            probe = socket.socket()
            probe.settimeout(0.2)
            fillers.append(probe)
            try:
                probe.connect(("127.0.0.1", port))
            except OSError:
                break
        else:
            # Linux caps a listener's accept queue, so the filler connections
            # above always end in a timeout well before 16 of them.
            raise AssertionError("the listener accepted 16 connections: its backlog never filled")
        err, elapsed = reject(f"http://127.0.0.1:{port}/x.jpg", cfg(connect_timeout=0.3), pool)
        assert err.reason is Reason.TIMEOUT
        assert elapsed < 1.0
    finally:
        for s in fillers:
            s.close()
        listener.close()


# -- connection failures ---------------------------------------------------------


def test_connection_refused(pool):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()  # bound once, now nobody listens there
    err, _ = reject(f"http://127.0.0.1:{port}/x.jpg", cfg(retries=1), pool)
    assert err.reason is Reason.CONNECTION_ERROR
    assert "NewConnectionError" in err.detail


def test_connection_reset(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/reset"), FAST, pool)
    assert err.reason is Reason.CONNECTION_ERROR
    assert "reset" in err.detail.lower()


def test_truncated(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/truncated"), FAST, pool)
    assert err.reason is Reason.TRUNCATED
    assert "1000" in err.detail and "99000" in err.detail


# -- content checks ------------------------------------------------------------------


def test_not_an_image(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/html"), FAST, pool)
    assert err.reason is Reason.NOT_AN_IMAGE
    assert "text/html" in err.detail


def test_too_large_by_content_length(loopback_server, pool):
    # 1 GB declared: reading it would take seconds, rejecting on headers is instant.
    err, elapsed = reject(loopback_server.url("/fault/large?bytes=1000000000"), cfg(max_bytes=100_000), pool)
    assert err.reason is Reason.TOO_LARGE
    assert "Content-Length 1000000000" in err.detail
    assert elapsed < 0.5


@pytest.mark.parametrize("framing", ["declare=0", "declare=0&chunked=0"])
def test_too_large_while_streaming(loopback_server, pool, framing):
    limit = 200_000
    err, elapsed = reject(loopback_server.url(f"/fault/large?bytes=1000000000&{framing}"), cfg(max_bytes=limit), pool)
    assert err.reason is Reason.TOO_LARGE
    stopped_at = int(err.detail.split("stopped after ")[1].split()[0])
    assert limit < stopped_at <= limit + 64 * 1024  # aborted within one read of the cap
    assert elapsed < 0.5


def test_endless_stops_at_max_bytes(loopback_server, pool):
    err, elapsed = reject(loopback_server.url("/fault/endless?chunk=65536&interval=0"), cfg(max_bytes=500_000), pool)
    assert err.reason is Reason.TOO_LARGE
    assert elapsed < 1.0


def test_small_unsized_body_is_read_whole(loopback_server, pool):
    result = download_image(loopback_server.url("/fault/large?bytes=150000&declare=0"), FAST, pool)
    assert len(result.data) == 150_000


def test_abandoned_connection_is_not_reused_dirty(loopback_server, pool):
    loopback_server.add("/after.jpg", b"\xff\xd8after")
    # Same host, same pool: a half-read body left on the socket would be
    # parsed as the next response.
    reject(loopback_server.url("/fault/large?bytes=5000000&declare=0"), cfg(max_bytes=100_000), pool)
    reject(loopback_server.url("/fault/large?bytes=5000000"), cfg(max_bytes=100_000), pool)
    for _ in range(3):
        assert download_image(loopback_server.url("/after.jpg"), FAST, pool).data == b"\xff\xd8after"


# -- redirects ---------------------------------------------------------------------


def test_redirect_chain_within_limit(loopback_server, pool):
    result = download_image(loopback_server.url("/fault/redirect-chain/3"), cfg(max_redirects=3), pool)
    assert result.data == FAULT_IMAGE
    assert result.final_url == loopback_server.url("/fault/redirect-chain/0")
    assert result.attempts == 1


def test_too_many_redirects(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/redirect-chain/4"), cfg(max_redirects=3), pool)
    assert err.reason is Reason.TOO_MANY_REDIRECTS


def test_redirect_loop(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/redirect-loop"), cfg(max_redirects=10), pool)
    assert err.reason is Reason.REDIRECT_LOOP
    assert loopback_server.hits("/fault/redirect-loop") == 1
    assert loopback_server.hits("/fault/redirect-loop/b") == 1


def test_redirect_to_other_scheme_is_invalid_url(loopback_server, pool):
    err, _ = reject(loopback_server.url("/fault/redirect?to=ftp://files.invalid/a.jpg"), FAST, pool)
    assert err.reason is Reason.INVALID_URL
    assert "ftp://files.invalid/a.jpg" in err.detail


def test_relative_redirect_to_static_route(loopback_server, pool):
    loopback_server.add("/moved.png", FAULT_IMAGE, "image/png")
    result = download_image(loopback_server.url("/fault/redirect?to=/moved.png&code=301"), FAST, pool)
    assert result.final_url == loopback_server.url("/moved.png")


def test_unsupported_scheme_is_invalid_url(pool):
    err, _ = reject("ftp://files.invalid/a.jpg", FAST, pool)
    assert err.reason is Reason.INVALID_URL


# -- the server itself ---------------------------------------------------------------


def test_stop_is_fast_with_responses_in_flight(pool):
    server = LoopbackServer().start()
    outcomes = []

    def fetch(path):
        try:
            download_image(server.url(path), cfg(deadline=30.0, read_timeout=10.0), pool)
        except RejectError as err:
            outcomes.append(err.reason)

    workers = [threading.Thread(target=fetch, args=(p,)) for p in ("/fault/drip", "/fault/endless?interval=0.05")]
    for w in workers:
        w.start()
    time.sleep(0.3)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0
    for w in workers:
        w.join(5)
    assert sorted(outcomes) == [Reason.TRUNCATED, Reason.TRUNCATED]
