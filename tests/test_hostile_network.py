"""A hostile web against the crawler: drips that restart every read timeout, dead hosts, host keys.

Every server here is on 127.0.0.1 and started by the test; no client library is mocked.
Time bounds are generous (the machine is shared): each one fails only when the
mechanism under test is missing, by a wide margin.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import socket
import threading
import time

import pytest
from paircurate.crawl.client import download_image, host_key, make_pool
from paircurate.crawl.health import HostHealth
from paircurate.crawl.workers import FetchWorkers, _host_of
from paircurate.schemas import records as R
from paircurate.schemas.config import DownloadConfig, ImageConfig
from paircurate.schemas.outcomes import Reason, RejectError

from paircurate.testing.loopback import FAULT_IMAGE

FAST = DownloadConfig(
    threads=4,
    connect_timeout=1.0,
    read_timeout=5.0,  # longer than every deadline below: only the deadline can end these requests
    deadline=2.0,
    retries=2,
    backoff_base=0.02,
    backoff_max=0.2,
    allow_private_network=True,
)
MARGIN = 1.5  # seconds past the deadline a give-up may take on a loaded machine


def cfg(**overrides) -> DownloadConfig:
    return dataclasses.replace(FAST, **overrides)


def give_up(url: str, config: DownloadConfig) -> tuple[RejectError, float]:
    ctx = make_pool(config)
    started = time.monotonic()
    try:
        with pytest.raises(RejectError) as info:
            download_image(url, config, ctx)
    finally:
        ctx.clear()
    return info.value, time.monotonic() - started


# -- the deadline covers the status line, the headers and the body -------------------


@pytest.mark.parametrize("route", ["drip-status", "drip-headers", "drip"])
def test_a_drip_anywhere_ends_at_the_deadline(loopback_server, route):
    # One byte every 0.2 s restarts the 5 s read timeout forever; before the
    # watchdog, drip-status and drip-headers ran until the server gave up.
    err, elapsed = give_up(loopback_server.url(f"/fault/{route}?interval=0.2"), cfg(deadline=2.0))
    assert err.reason is Reason.TIMEOUT
    assert "deadline of 2s exceeded" in err.detail
    assert 1.9 <= elapsed <= 2.0 + MARGIN


def test_the_deadline_phase_is_named(loopback_server):
    err, _ = give_up(loopback_server.url("/fault/drip-headers?interval=0.2"), cfg(deadline=1.0))
    assert "before the status line and headers arrived" in err.detail
    err, _ = give_up(loopback_server.url("/fault/drip?interval=0.2"), cfg(deadline=1.0))
    assert "while reading the body" in err.detail or "reading the body" in err.detail


def test_a_dripped_status_line_is_not_retried_past_the_deadline(loopback_server):
    err, elapsed = give_up(loopback_server.url("/fault/drip-status?interval=0.3"), cfg(deadline=1.5, retries=5))
    assert err.reason is Reason.TIMEOUT
    assert elapsed <= 1.5 + MARGIN
    assert loopback_server.hits("/fault/drip-status") == 1


def test_a_dripped_tls_handshake_ends_at_the_deadline():
    # A TLS record header, then a record body one byte at a time: the
    # handshake never completes and never goes quiet for a whole timeout.
    # (CPython already bounds a whole handshake by the socket timeout, which
    # is capped by the deadline; the watchdog is the second line here.)
    host = SilentHost(drip=b"\x16\x03\x03\x40\x00" + b"\x02" * 200)
    try:
        err, elapsed = give_up(f"https://127.0.0.1:{host.port}/x.jpg", cfg(deadline=2.0, connect_timeout=1.0))
    finally:
        host.close()
    assert err.reason is Reason.TIMEOUT
    assert "deadline of 2s exceeded" in err.detail
    assert 1.9 <= elapsed <= 2.0 + MARGIN


def test_a_dns_lookup_that_never_ends_is_abandoned_at_the_deadline(loopback_server, monkeypatch):
    # A resolver with no threads never answers: the stand-in for a DNS server
    # that does not reply. Name lookups go through it; the deadline must still hold.
    import paircurate.crawl.client as client

    monkeypatch.setattr(client, "_RESOLVER", client._Resolver(threads=0))
    err, elapsed = give_up(f"http://localhost:{loopback_server.port}/x.jpg", cfg(deadline=1.0, connect_timeout=5.0))
    assert err.reason is Reason.TIMEOUT
    assert "deadline" in err.detail  # the lookup's own timeout or the watchdog, whichever came first
    assert 0.9 <= elapsed <= 1.0 + MARGIN
    assert loopback_server.hits("/x.jpg") == 0


def test_a_finished_watch_never_cuts_the_next_request_on_its_connection(loopback_server):
    # Request 1's deadline passes while request 2, on the same kept-alive
    # connection, waits for its slow headers: only request 2's own deadline counts.
    loopback_server.add("/a.png", FAULT_IMAGE, "image/png")
    ctx = make_pool(cfg())
    try:
        first_started = time.monotonic()
        assert download_image(loopback_server.url("/a.png"), cfg(deadline=2.0), ctx).data == FAULT_IMAGE
        second = download_image(loopback_server.url("/fault/slow?seconds=3"), cfg(deadline=20.0, read_timeout=10.0), ctx)
        assert time.monotonic() - first_started > 2.0  # request 1's deadline passed during request 2
    finally:
        ctx.clear()
    assert second.data == FAULT_IMAGE
    assert loopback_server.connections == 1


# -- a dead host costs seconds --------------------------------------------------------


class SilentHost:
    """Accepts every connection and never sends a byte: a host that is up but dead.

    With ``drip``, sends those bytes one every 0.2 s on each connection instead.
    """

    def __init__(self, drip: bytes = b"") -> None:
        self.drip = drip
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted.append(conn)
            if self.drip:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        for i in range(len(self.drip)):
            if self._stop.wait(0.2):
                return
            try:
                conn.sendall(self.drip[i : i + 1])
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.listener.close()


@pytest.fixture
def silent_host():
    host = SilentHost()
    yield host
    host.close()


def test_300_urls_on_a_silent_host_finish_in_seconds(silent_host):
    # Default deadline (30 s), read timeout (10 s) and retries (2); two
    # processes, so the count must be shared between them. Without the limit:
    # 300 URLs / 16 in flight x 30 s = about 9 minutes.
    download = DownloadConfig(allow_private_network=True)
    assert download.host_failure_limit == 8 and download.deadline == 30.0
    records = [{R.UID: f"u{i}", R.URL: f"http://127.0.0.1:{silent_host.port}/img/{i}.jpg", R.CAPTION: "c"} for i in range(300)]
    started = time.monotonic()
    with FetchWorkers(download, ImageConfig(), processes=2) as workers:
        assert len(workers.worker_pids()) == 2
        results = workers.map(records)
    elapsed = time.monotonic() - started
    reasons = [r.get(R.REASON) for r in results]
    assert all(reason in ("timeout", "host_unavailable") for reason in reasons), set(reasons)
    assert reasons.count("host_unavailable") >= 300 - 2 * download.per_domain_concurrency
    # One read timeout (10 s) for the first wave, then everything at once.
    assert elapsed < 40, elapsed
    # The first wave only: 16 in flight (8 per process), not 3 attempts x 300.
    assert len(silent_host.accepted) <= 2 * download.per_domain_concurrency


def test_connection_refused_host_is_given_up_after_the_limit():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()  # nobody listens there: every attempt is refused
    config = cfg(retries=0, host_failure_limit=3, threads=1)
    ctx = make_pool(config)
    reasons = []
    for i in range(6):
        try:
            download_image(f"http://127.0.0.1:{port}/{i}.jpg", config, ctx)
        except RejectError as err:
            reasons.append(err.reason)
    assert reasons == [Reason.CONNECTION_ERROR] * 3 + [Reason.HOST_UNAVAILABLE] * 3
    # Other hosts are not affected.
    assert ctx.health.unavailable("localhost") == ""


def test_an_answer_resets_the_count(loopback_server):
    health = HostHealth(limit=3)
    for _ in range(2):
        health.failed("a.example")
    health.answered("a.example")
    for _ in range(2):
        health.failed("a.example")
    assert health.unavailable("a.example") == ""
    health.failed("a.example")
    assert "3 attempts in a row" in health.unavailable("a.example")
    health.answered("a.example")  # a late answer does not bring a given-up host back
    assert health.unavailable("a.example")
    # An error status is an answer too: a host that says 404 is up.
    config = cfg(host_failure_limit=2, retries=0)
    ctx = make_pool(config)
    ctx.health.failed("127.0.0.1")
    with pytest.raises(RejectError):
        download_image(loopback_server.url("/fault/404"), config, ctx)
    assert ctx.health.failures("127.0.0.1") == 0


def _fail_in_child(health: HostHealth, host: str, times: int) -> None:
    for _ in range(times):
        health.failed(host)


def test_the_count_is_shared_between_processes():
    health = HostHealth(limit=8, shared=True)
    context = multiprocessing.get_context("forkserver")
    children = [context.Process(target=_fail_in_child, args=(health, "dead.example", 4)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert health.failures("dead.example") == 8
    assert health.unavailable("dead.example")
    assert health.failures("alive.example") == 0


@pytest.mark.parametrize("shared", [False, True])
def test_many_hosts_fill_the_table_without_losing_counts(shared):
    health = HostHealth(limit=2, slots=64, shared=shared)
    hosts = [f"h{i}.example" for i in range(500)]
    for host in hosts:
        health.failed(host)
        health.failed(host)
    assert all(health.unavailable(host) for host in hosts)
    assert not health.unavailable("other.example")


def test_a_local_table_refuses_to_travel():
    import pickle

    with pytest.raises(TypeError, match="shared=True"):
        pickle.dumps(HostHealth(limit=8))


# -- one host key for the router, the limiter and the failure count ----------------------


@pytest.mark.parametrize(
    "url",
    ["http://Example.COM/a.jpg", "http://example.com./a.jpg", "https://EXAMPLE.com.:8443/a.jpg", "http://example.com/"],
)
def test_host_key_ignores_case_and_a_trailing_dot(url):
    assert host_key(url) == "example.com"
    assert _host_of({R.URL: url}) == "example.com"


def test_host_key_of_junk_is_empty():
    assert host_key("http://[::1/") == ""
    assert _host_of({R.URL: "http://[::1/"}) == ""
    assert host_key("http://[::1]:8080/x") == "::1"


from hypothesis import given, settings  # noqa: E402 - grouped with the property test that uses it
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=200), st.builds(lambda h, p: f"http://{h}/{p}", st.text(max_size=60), st.text(max_size=20))))
def test_host_key_of_any_string_is_a_string(url):
    key = host_key(url)
    assert isinstance(key, str)
    assert key == key.lower() and not key.endswith(".")
    assert _host_of({R.URL: url}) == key
