"""Crawler politeness and safety: per-host limits, Retry-After, opt-outs, robots.txt, the address guard.

Every request goes to a real LoopbackServer on 127.0.0.1 (one test also
listens on ::1). Addresses outside loopback are only ever classified, never
contacted: the guard's refusals happen before any socket is opened.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from urllib.parse import quote

import pytest
from paircurate.crawl import client
from paircurate.crawl.client import FetchContext, download_image, make_pool
from paircurate.crawl.politeness import (
    HostBusyError,
    HostLimiter,
    RobotsCache,
    blocked_address_reason,
    opt_out_matches,
    robots_tag_directives,
)
from paircurate.imaging.prepare import prepare_image
from paircurate.schemas.config import DownloadConfig, ImageConfig
from paircurate.schemas.outcomes import Reason, RejectError

from paircurate.testing.loopback import FAULT_IMAGE, LoopbackServer


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6_LOOPBACK = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6_LOOPBACK, reason="no IPv6 loopback (::1) on this machine")

BASE = DownloadConfig(
    threads=8,
    connect_timeout=1.0,
    read_timeout=1.0,
    deadline=2.0,
    retries=1,
    backoff_base=0.05,
    backoff_max=0.2,
    max_bytes=8 * 1024 * 1024,
    max_redirects=3,
    user_agent="paircurate-test/1.0",
    allow_private_network=True,  # the loopback server; guard tests turn it off
)


def cfg(**overrides) -> DownloadConfig:
    return dataclasses.replace(BASE, **overrides)


def outcome(url: str, config: DownloadConfig, ctx: FetchContext, *, image: bool = False):
    """(reason or 'ok', seconds, detail) for one URL; with ``image`` the bytes also go through prepare_image."""
    started = time.monotonic()
    try:
        result = download_image(url, config, ctx)
        if image:
            prepare_image(result.data, ImageConfig())
    except RejectError as err:
        return err.reason, time.monotonic() - started, err.detail
    return "ok", time.monotonic() - started, ""


def localhost_url(server: LoopbackServer, path: str) -> str:
    # Same server, another host name: its own per-host limits and robots.txt origin.
    return f"http://localhost:{server.port}{path}"


# -- the fault matrix ------------------------------------------------------------------


def test_fault_matrix_in_one_thread_pool(loopback_server):
    s = loopback_server
    s.add("/robots.txt", b"User-agent: paircurate\nDisallow: /private/\n\nUser-agent: *\nDisallow:\n", "text/plain")
    s.add("/private/a.png", FAULT_IMAGE, "image/png")
    config = cfg(respect_robots_txt=True)
    guarded_config = cfg(allow_private_network=False)
    faults = {
        "slow drip": (s.url("/fault/drip?interval=0.2"), Reason.TIMEOUT),
        "slow headers": (s.url("/fault/slow?seconds=5"), Reason.TIMEOUT),
        "reset mid-body": (s.url("/fault/reset"), Reason.CONNECTION_ERROR),
        "500": (s.url("/fault/500"), Reason.HTTP_5XX),
        "404": (s.url("/fault/404"), Reason.HTTP_404),
        # Another host name, so its Retry-After pause does not hold up the healthy URLs.
        "429 Retry-After 30": (localhost_url(s, "/fault/429?retry_after=30&id=m"), Reason.HTTP_429),
        "truncated body": (s.url("/fault/truncated"), Reason.TRUNCATED),
        "HTML as image": (s.url("/fault/html"), Reason.NOT_AN_IMAGE),
        "X-Robots-Tag noai": (s.url("/fault/noai"), Reason.OPTED_OUT),
        "robots.txt disallow": (s.url("/private/a.png"), Reason.OPTED_OUT),
        "redirect loop": (s.url("/fault/redirect-loop"), Reason.REDIRECT_LOOP),
        "too many redirects": (s.url("/fault/redirect-chain/9"), Reason.TOO_MANY_REDIRECTS),
        "redirect to ftp": (s.url("/fault/redirect?to=ftp://files.invalid/a.jpg"), Reason.INVALID_URL),
        "endless body": (s.url("/fault/endless?chunk=65536&interval=0"), Reason.TOO_LARGE),
        "bomb": (s.url("/fault/bomb"), Reason.DECOMPRESSION_BOMB),
        "private address": (localhost_url(s, "/same/guarded.png"), Reason.BLOCKED_ADDRESS),
    }
    healthy = [s.url(f"/same/{i}.png") for i in range(24)]
    healthy.append(s.url("/fault/noai?tag=" + quote("otherbot: noai")))  # another crawler's opt-out

    ctx, guarded = make_pool(config), make_pool(guarded_config)
    with ThreadPoolExecutor(max_workers=config.threads) as pool:
        futures = {}
        for name, (url, _) in faults.items():
            if name == "private address":
                futures[name] = pool.submit(outcome, url, guarded_config, guarded)
            else:
                futures[name] = pool.submit(outcome, url, config, ctx, image=(name == "bomb"))
        healthy_futures = [pool.submit(outcome, url, config, ctx, image=True) for url in healthy]
        results = {name: f.result() for name, f in futures.items()}
        healthy_results = [f.result() for f in healthy_futures]

    for name, (_, expected) in faults.items():
        reason, seconds, detail = results[name]
        assert reason is expected, f"{name}: {reason} ({detail})"
        assert seconds <= config.deadline + 1.0, f"{name} took {seconds:.2f}s"
    assert results["robots.txt disallow"][2].startswith("robots.txt")
    assert s.hits("/private/a.png") == 0
    assert [r[0] for r in healthy_results] == ["ok"] * len(healthy)
    assert s.hits("/robots.txt") == 2  # once per origin (127.0.0.1 and localhost), not once per URL
    ctx.clear()
    guarded.clear()


# -- per-host limits -------------------------------------------------------------------


def test_per_domain_concurrency_is_bounded_per_host(loopback_server):
    s = loopback_server
    config = cfg(per_domain_concurrency=2, deadline=10.0, read_timeout=5.0)
    ctx = make_pool(config)
    urls = [s.url(f"/fault/slow?seconds=0.2&i={i}") for i in range(8)]
    urls += [localhost_url(s, f"/fault/slow?seconds=0.2&i={i}") for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda u: outcome(u, config, ctx), urls))
    assert [r[0] for r in results] == ["ok"] * len(urls)
    assert s.max_in_flight("127.0.0.1") == 2
    assert s.max_in_flight("localhost") == 2
    assert s.max_in_flight() > 2  # the limit is per host, not for the whole worker
    assert ctx.limiter.tracked_hosts() == 0  # idle hosts are forgotten


def test_per_domain_rps_is_bounded(loopback_server):
    s = loopback_server
    rps = 5.0
    config = cfg(per_domain_rps=rps, deadline=5.0)
    ctx = make_pool(config)
    urls = [s.url(f"/same/r{i}.png") for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda u: outcome(u, config, ctx), urls))
    assert [r[0] for r in results] == ["ok"] * len(urls)
    arrivals = sorted(r.at for r in s.requests() if r.path.startswith("/same/"))
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= 0.8 / rps, gaps
    assert arrivals[-1] - arrivals[0] >= (len(urls) - 1) / rps * 0.95


def test_waiting_for_a_slot_counts_against_the_deadline(loopback_server):
    s = loopback_server
    config = cfg(per_domain_concurrency=1, deadline=5.0, read_timeout=5.0)
    ctx = make_pool(config)
    hog = threading.Thread(target=outcome, args=(s.url("/fault/slow?seconds=1.5"), config, ctx))
    hog.start()
    while s.hits("/fault/slow") == 0:
        time.sleep(0.01)
    reason, seconds, detail = outcome(s.url("/same/late.png"), cfg(per_domain_concurrency=1, deadline=0.5), ctx)
    hog.join()
    assert reason is Reason.TIMEOUT
    assert "per_domain_concurrency=1" in detail
    assert 0.45 <= seconds < 1.0
    assert s.hits("/same/late.png") == 0


def test_rate_wait_that_cannot_fit_gives_up_at_once(loopback_server):
    s = loopback_server
    config = cfg(per_domain_rps=0.5, deadline=1.0)  # one request per 2 s
    ctx = make_pool(config)
    assert outcome(s.url("/same/first.png"), config, ctx)[0] == "ok"
    reason, seconds, detail = outcome(s.url("/same/second.png"), config, ctx)
    assert reason is Reason.TIMEOUT
    assert "per_domain_rps" in detail
    assert seconds < 0.2


def test_host_limiter_forgets_idle_hosts_and_checks_arguments():
    limiter = HostLimiter(concurrency=2)
    for i in range(100):
        with limiter.slot(f"host{i}.test", time.monotonic() + 1):
            pass
    assert limiter.tracked_hosts() == 0
    with pytest.raises(ValueError):
        HostLimiter(concurrency=0)


# -- Retry-After ----------------------------------------------------------------------------


def test_retry_after_pauses_the_host_for_other_threads(loopback_server):
    s = loopback_server
    config = cfg(deadline=5.0)
    ctx = make_pool(config)
    first = {}
    asker = threading.Thread(
        target=lambda: first.update(r=outcome(s.url("/fault/429?retry_after=1&id=p"), config, ctx))
    )
    asker.start()
    give_up_at = time.monotonic() + 2
    while ctx.limiter.paused_for("127.0.0.1") == 0 and time.monotonic() < give_up_at:
        time.sleep(0.005)
    short = outcome(s.url("/same/p2.png"), cfg(deadline=0.3), ctx)
    polite = outcome(s.url("/same/p1.png"), config, ctx)
    asker.join()
    assert first["r"][0] == "ok" and first["r"][1] >= 1.0
    assert polite[0] == "ok" and polite[1] >= 0.7  # waited for the pause the host asked for
    assert short[0] is Reason.HTTP_429 and "Retry-After" in short[2] and short[1] < 0.2
    assert s.hits("/same/p2.png") == 0


def test_retry_after_http_date_is_honoured(loopback_server):
    s = loopback_server
    when = quote(formatdate(time.time() + 2, usegmt=True))
    reason, seconds, _ = outcome(s.url(f"/fault/429?retry_after={when}&id=date"), cfg(deadline=5.0), make_pool(BASE))
    assert reason == "ok"
    assert 0.9 <= seconds < 3.5  # the date has one-second resolution


def test_retry_after_longer_than_retry_after_max(loopback_server):
    s = loopback_server
    reason, seconds, detail = outcome(
        s.url("/fault/429?retry_after=3&id=max"), cfg(deadline=10.0, retry_after_max=1.0), make_pool(BASE)
    )
    assert reason is Reason.HTTP_429
    assert "retry_after_max 1s" in detail
    assert seconds < 0.3


# -- opt-outs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["noai"], ["noai"]),
        (["noindex, NoImageAI"], ["noimageai"]),
        (["otherbot: noai"], []),
        (["paircurate: noai"], ["noai"]),
        (["PairCurate: noindex, noai"], ["noai"]),
        (["otherbot: noai, paircurate: noimageai"], ["noimageai"]),
        (["noindex", "nofollow"], []),
        (["unavailable_after: Friday, 25-Jun-2030 15:00:00 GMT"], []),
        (["otherbot: noindex", "noai"], ["noai"]),
    ],
)
def test_opt_out_matches(values, expected):
    assert opt_out_matches(values, ("noai", "noimageai"), "paircurate") == expected


def test_robots_tag_directives_scope():
    assert robots_tag_directives(["a, otherbot: b, c", "paircurate: d"], "paircurate") == {"a", "d"}
    assert opt_out_matches(["noai"], (), "paircurate") == []


def test_opt_out_is_decided_on_headers_before_the_body(loopback_server):
    s = loopback_server
    s.add("/big-noai.jpg", b"\xff" * 5_000_000, "image/jpeg", {"X-Robots-Tag": "googlebot: noindex", "x-robots-tag": "noimageai"})
    reason, seconds, detail = outcome(s.url("/big-noai.jpg"), cfg(max_bytes=1000), make_pool(BASE))
    # Content-Length alone would say too_large; the opt-out is checked first.
    assert reason is Reason.OPTED_OUT
    assert "noimageai" in detail
    assert seconds < 0.3


def test_custom_opt_out_tags(loopback_server):
    s = loopback_server
    ctx = make_pool(BASE)
    url = s.url("/fault/noai?tag=nomachinelearning")
    assert outcome(url, BASE, ctx)[0] == "ok"
    assert outcome(url, cfg(opt_out_tags=("nomachinelearning",)), ctx)[0] is Reason.OPTED_OUT
    assert outcome(s.url("/fault/noai"), cfg(opt_out_tags=()), ctx)[0] == "ok"


# -- robots.txt --------------------------------------------------------------------------------


def test_robots_txt_fetched_once_per_host_and_obeyed(loopback_server):
    s = loopback_server
    s.add("/robots.txt", b"User-agent: paircurate\nDisallow: /no/\n", "text/plain")
    s.add("/no/x.png", FAULT_IMAGE, "image/png")
    config = cfg(respect_robots_txt=True)
    ctx = make_pool(config)
    urls = [s.url(f"/same/{i}.png") for i in range(12)] + [s.url("/no/x.png")] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda u: outcome(u, config, ctx), urls))
    assert [r[0] for r in results[:12]] == ["ok"] * 12
    for reason, _, detail in results[12:]:
        assert reason is Reason.OPTED_OUT and detail.startswith("robots.txt") and "paircurate" in detail
    assert s.hits("/robots.txt") == 1
    assert s.hits("/no/x.png") == 0
    (request,) = s.requests("/robots.txt")
    assert request.headers["User-Agent"] == "paircurate-test/1.0"


def test_robots_txt_rules_for_another_agent_do_not_apply(loopback_server):
    s = loopback_server
    s.add("/robots.txt", b"User-agent: otherbot\nDisallow: /\n", "text/plain")
    assert outcome(s.url("/same/a.png"), cfg(respect_robots_txt=True), make_pool(BASE))[0] == "ok"


def test_robots_txt_404_means_allowed(loopback_server):
    s = loopback_server
    assert outcome(s.url("/same/a.png"), cfg(respect_robots_txt=True), make_pool(BASE))[0] == "ok"
    assert s.hits("/robots.txt") == 1


def test_robots_txt_server_error_means_not_crawled(loopback_server):
    s = loopback_server
    s.add("/robots.txt", b"down for maintenance\n", "text/plain", status=503)
    ctx = make_pool(BASE)
    config = cfg(respect_robots_txt=True, retries=0)
    for name in ("a", "b"):
        reason, _, detail = outcome(s.url(f"/same/{name}.png"), config, ctx)
        assert reason is Reason.HTTP_5XX
        assert "robots.txt" in detail and "503" in detail
    assert s.hits("/robots.txt") == 1  # the failure is cached too
    assert s.hits("/same/a.png") == 0


def test_robots_txt_not_requested_unless_asked(loopback_server):
    s = loopback_server
    s.add("/robots.txt", b"User-agent: *\nDisallow: /\n", "text/plain")
    assert outcome(s.url("/same/a.png"), BASE, make_pool(BASE))[0] == "ok"
    assert s.hits("/robots.txt") == 0


def test_robots_cache_waiters_share_one_load():
    cache = RobotsCache()
    calls = []
    gate = threading.Event()

    def load():
        calls.append(1)
        gate.wait(1)
        raise RejectError(Reason.TIMEOUT, "robots.txt hung")

    errors = []

    def ask():
        try:
            cache.get("http://h.test:80", time.monotonic() + 2, load)
        except RejectError as err:
            errors.append(err.reason)

    threads = [threading.Thread(target=ask) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert errors == [Reason.TIMEOUT] * 5


# -- the address guard ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not globally routable"),
        ("fec0::1", "site-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback (via 6to4)"),
        ("64:ff9b::a9fe:a9fe", "link-local (via NAT64)"),
    ],
)
def test_blocked_addresses(address, why):
    assert blocked_address_reason(address) == why


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass(address):
    assert blocked_address_reason(address) is None


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.0.0.1", "[::1]", "0x7f000001", "2130706433", "127.1", "017700000001", "[::ffff:127.0.0.1]", "0"],
)
def test_guard_refuses_loopback_in_any_spelling(loopback_server, host):
    s = loopback_server
    config = cfg(allow_private_network=False)
    reason, seconds, detail = outcome(f"http://{host}:{s.port}/same/x.png", config, make_pool(config))
    assert reason is Reason.BLOCKED_ADDRESS, detail
    assert "allow_private_network" in detail
    assert seconds < 0.5
    assert s.connections == 0


def test_guard_covers_https(loopback_server):
    # Refused before any TLS handshake, so no TLS server is needed.
    config = cfg(allow_private_network=False)
    reason, _, detail = outcome(f"https://localhost:{loopback_server.port}/x.png", config, make_pool(config))
    assert reason is Reason.BLOCKED_ADDRESS, detail
    assert loopback_server.connections == 0


def test_guard_off_allows_loopback_by_name(loopback_server):
    assert outcome(localhost_url(loopback_server, "/same/x.png"), BASE, make_pool(BASE))[0] == "ok"


@needs_ipv6
def test_guard_checks_every_redirect_hop(loopback_server, monkeypatch):
    v6 = LoopbackServer("::1").start()
    try:
        # Pretend 127.0.0.1 is a public address so the first hop is allowed;
        # ::1 stays what it is.
        real = client.blocked_address_reason
        monkeypatch.setattr(client, "blocked_address_reason", lambda a: None if a == "127.0.0.1" else real(a))
        config = cfg(allow_private_network=False)
        ctx = make_pool(config)
        url = loopback_server.url("/fault/redirect?to=" + quote(v6.url("/same/inner.png")))
        reason, _, detail = outcome(url, config, ctx)
        assert reason is Reason.BLOCKED_ADDRESS
        assert "::1 (loopback)" in detail and v6.url("/same/inner.png") in detail
        assert loopback_server.hits("/fault/redirect") == 1
        assert v6.connections == 0
        # The same chain with the guard off reaches the IPv6 server.
        assert outcome(url, BASE, make_pool(BASE))[0] == "ok"
        assert v6.hits("/same/inner.png") == 1
    finally:
        v6.stop()


@needs_ipv6
def test_guard_connects_to_the_address_it_checked(monkeypatch):
    # A rebinding resolver: the first answer passes the check, later ones
    # would not. Only one lookup may happen, and the socket must go to the
    # answer that was checked (::1 here, where nothing listens: refused).
    answers = iter(["::1", "127.0.0.1", "127.0.0.1"])
    lookups, connected = [], []
    real_getaddrinfo = socket.getaddrinfo

    def resolver(host, port, *args, **kwargs):
        if host == "rebind.test":
            lookups.append(host)
            address = next(answers)
            return real_getaddrinfo(address, port, *args, **kwargs)
        connected.append(host)
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    real = client.blocked_address_reason
    monkeypatch.setattr(client, "blocked_address_reason", lambda a: None if a == "::1" else real(a))
    probe = socket.socket(socket.AF_INET6)
    probe.bind(("::1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there now
    config = cfg(allow_private_network=False, retries=0)
    reason, _, detail = outcome(f"http://rebind.test:{port}/x.png", config, make_pool(config))
    assert reason is Reason.CONNECTION_ERROR, detail
    assert lookups == ["rebind.test"]
    assert connected == ["::1"]


def test_guarded_context_refuses_unguarded_config_mismatch(loopback_server):
    open_ctx = make_pool(BASE)
    with pytest.raises(ValueError, match="allow_private_network"):
        download_image(loopback_server.url("/same/x.png"), cfg(allow_private_network=False), open_ctx)
    # The other way round the context's guard wins: still refused.
    guarded = make_pool(cfg(allow_private_network=False))
    assert outcome(loopback_server.url("/same/x.png"), BASE, guarded)[0] is Reason.BLOCKED_ADDRESS


def test_download_image_needs_a_fetch_context(loopback_server):
    import urllib3

    with pytest.raises(TypeError, match="make_pool"):
        download_image(loopback_server.url("/same/x.png"), BASE, urllib3.PoolManager())


# -- adaptive per-host concurrency (AIMD) ---------------------------------------------------


def test_host_window_grows_while_answers_are_flat_and_halves_on_overload():
    limiter = HostLimiter(concurrency=32)
    assert limiter.window("h.test") == 4  # starts low
    for _ in range(40):
        with limiter.slot("h.test", time.monotonic() + 1):
            pass
    assert limiter.window("h.test") == 32  # grew to the ceiling, never past it
    with pytest.raises(RejectError):
        with limiter.slot("h.test", time.monotonic() + 1):
            raise HostBusyError(Reason.HTTP_5XX, "HTTP 503")
    assert limiter.window("h.test") == 16
    with pytest.raises(RejectError):  # a 500 or a timeout may be one URL's fault, not the host's load
        with limiter.slot("h.test", time.monotonic() + 1):
            raise RejectError(Reason.HTTP_5XX, "HTTP 500")
    assert limiter.window("h.test") > 16
    fixed = HostLimiter(concurrency=32, adaptive=False)
    assert fixed.window("h.test") == 32


def test_adaptive_concurrency_finds_a_busy_hosts_capacity(loopback_server):
    """A host with room for 4 requests at once: the adaptive crawler gets far fewer 503s than a fixed one."""
    s = loopback_server
    urls = [s.url(f"/fault/busy?capacity=4&delay=0.03&i={i}") for i in range(240)]

    def crawl(adaptive: bool) -> tuple[int, int, float]:
        before_503 = s.count("busy", "503")
        config = cfg(per_domain_concurrency=32, adaptive_concurrency=adaptive, retries=4, deadline=20.0, backoff_base=0.05)
        ctx = make_pool(config)
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda u: outcome(u, config, ctx)[0], urls))
        return results.count("ok"), s.count("busy", "503") - before_503, ctx.limiter.window("127.0.0.1")

    adaptive_ok, adaptive_503, window = crawl(adaptive=True)
    fixed_ok, fixed_503, fixed_window = crawl(adaptive=False)
    assert adaptive_ok == len(urls)  # every URL made it, within its retries
    assert window <= 16  # settled near the host's capacity, far below the ceiling of 32
    assert fixed_window == 32
    assert adaptive_503 < fixed_503 / 2, (adaptive_503, fixed_503)
    assert adaptive_ok >= fixed_ok
