"""Every crawler fault once, through the real HTTP layer, as a markdown table.

Starts a LoopbackServer on 127.0.0.1, sends each fault route once through
``download_image`` (the bomb also through ``prepare_image``), and prints the
reason and how long it took to give up. Then a fresh process fetches the
decompression bomb and an endless body (``max_bytes`` 20 MiB) and reports its
peak RSS, so the memory a hostile server can cost one worker is on record.

    python bench/fault_matrix.py
    python bench/fault_matrix.py --deadline 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from paircurate.crawl.client import download_image, make_pool
from paircurate.imaging.prepare import prepare_image
from paircurate.schemas.config import DownloadConfig, ImageConfig
from paircurate.schemas.outcomes import RejectError

from paircurate.testing.loopback import FAULT_IMAGE, LoopbackServer

ROBOTS_TXT = b"User-agent: paircurate\nDisallow: /private/\n\nUser-agent: *\nDisallow:\n"
RSS_MAX_BYTES = 20 * 1024 * 1024


def attempt(url: str, cfg: DownloadConfig, ctx, image: bool = False) -> tuple[str, float, str]:
    started = time.monotonic()
    try:
        result = download_image(url, cfg, ctx)
        if image:
            prepare_image(result.data, ImageConfig())
    except RejectError as err:
        return err.reason.value, time.monotonic() - started, err.detail
    return "ok", time.monotonic() - started, f"{len(result.data)} bytes"


def fault_rows(server: LoopbackServer, cfg: DownloadConfig) -> list[tuple[str, str, str, float, str]]:
    """(fault, expected, reason, seconds, detail) for every fault, one at a time."""
    s = server
    local = f"http://localhost:{s.port}"  # same server, another host: its own limits and robots.txt
    faults = [
        ("slow drip (1 byte / 0.2 s)", "timeout", s.url("/fault/drip?interval=0.2")),
        ("slow headers (5 s)", "timeout", s.url("/fault/slow?seconds=5")),
        ("reset mid-body", "connection_error", s.url("/fault/reset")),
        ("HTTP 500", "http_5xx", s.url("/fault/500")),
        ("HTTP 404", "http_404", s.url("/fault/404")),
        ("429, Retry-After 1 (fits)", "ok", s.url("/fault/429?retry_after=1&id=fits")),
        ("429, Retry-After 60", "http_429", local + "/fault/429?retry_after=60&id=far"),
        ("truncated body", "truncated", s.url("/fault/truncated")),
        ("HTML as image", "not_an_image", s.url("/fault/html")),
        ("X-Robots-Tag: noai", "opted_out", s.url("/fault/noai")),
        ("X-Robots-Tag: otherbot: noai", "ok", s.url("/fault/noai?tag=" + quote("otherbot: noai"))),
        ("robots.txt disallow", "opted_out", s.url("/private/a.png")),
        ("redirect loop", "redirect_loop", s.url("/fault/redirect-loop")),
        ("redirect chain of 9", "too_many_redirects", s.url("/fault/redirect-chain/9")),
        ("redirect to ftp://", "invalid_url", s.url("/fault/redirect?to=ftp://files.invalid/a.jpg")),
        ("endless body", "too_large", s.url("/fault/endless?chunk=65536&interval=0")),
        ("declared 1 GB", "too_large", s.url("/fault/large?bytes=1000000000")),
        ("bomb 30000x30000 (download + prepare_image)", "decompression_bomb", s.url("/fault/bomb")),
    ]
    ctx = make_pool(cfg)
    # robots.txt is fetched on first use of an origin; do that outside the timings.
    attempt(s.url("/same/warm.png"), cfg, ctx)
    attempt(local + "/same/warm.png", cfg, ctx)
    rows = []
    for name, expected, url in faults:
        reason, seconds, detail = attempt(url, cfg, ctx, image=name.startswith("bomb"))
        rows.append((name, expected, reason, seconds, detail))

    guarded_cfg = dataclasses.replace(cfg, allow_private_network=False)
    guarded = make_pool(guarded_cfg)
    for name, url in [
        ("private address (localhost), guard on", local + "/same/a.png"),
        ("literal 0x7f000001, guard on", f"http://0x7f000001:{s.port}/same/a.png"),
        ("literal [::1], guard on", f"http://[::1]:{s.port}/same/a.png"),
    ]:
        reason, seconds, detail = attempt(url, guarded_cfg, guarded)
        rows.append((name, "blocked_address", reason, seconds, detail))
    return rows


def limit_rows(cfg: DownloadConfig) -> list[tuple[str, str, str, float, str]]:
    rows = []
    with LoopbackServer() as s:
        limited = dataclasses.replace(cfg, per_domain_concurrency=2, deadline=20.0)
        ctx = make_pool(limited)
        urls = [s.url(f"/fault/slow?seconds=0.2&i={i}") for i in range(16)]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda u: attempt(u, limited, ctx), urls))
        ok = sum(r[0] == "ok" for r in results)
        rows.append((
            "per_domain_concurrency=2, 8 threads, 16 URLs of 0.2 s", "max 2 in flight",
            f"max {s.max_in_flight('127.0.0.1')} in flight", time.monotonic() - started, f"{ok}/16 ok",
        ))
    with LoopbackServer() as s:
        limited = dataclasses.replace(cfg, per_domain_rps=5.0, deadline=20.0)
        ctx = make_pool(limited)
        urls = [s.url(f"/same/{i}.png") for i in range(11)]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda u: attempt(u, limited, ctx), urls))
        arrivals = sorted(r.at for r in s.requests())
        span = arrivals[-1] - arrivals[0]
        ok = sum(r[0] == "ok" for r in results)
        rows.append((
            "per_domain_rps=5, 8 threads, 11 URLs", "<= 5 req/s",
            f"{(len(arrivals) - 1) / span:.2f} req/s", time.monotonic() - started,
            f"{ok}/11 ok, min gap {min(b - a for a, b in zip(arrivals, arrivals[1:])):.3f} s",
        ))
    return rows


def rss_child(bomb_url: str, endless_url: str) -> None:
    """Run in a fresh process: fetch the bomb and the endless body, print peak RSS as JSON."""
    cfg = DownloadConfig(max_bytes=RSS_MAX_BYTES, deadline=30.0, retries=0, allow_private_network=True)
    ctx = make_pool(cfg)
    before = _current_rss_kib()
    outcomes = [attempt(bomb_url, cfg, ctx, image=True)[0], attempt(endless_url, cfg, ctx)[0]]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"before_kib": before, "peak_kib": peak, "outcomes": outcomes}))


def _current_rss_kib() -> int:
    # ru_maxrss is a high-water mark that imports may already have set;
    # the resident size right now is the fair baseline.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deadline", type=float, default=2.0)
    parser.add_argument("--rss-child", nargs=2, metavar=("BOMB_URL", "ENDLESS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child)
        return

    cfg = DownloadConfig(
        connect_timeout=1.0, read_timeout=1.0, deadline=args.deadline, retries=1, backoff_base=0.05, backoff_max=0.5,
        max_bytes=RSS_MAX_BYTES, allow_private_network=True, respect_robots_txt=True,
    )
    with LoopbackServer() as server:
        server.add("/robots.txt", ROBOTS_TXT, "text/plain")
        server.add("/private/a.png", FAULT_IMAGE, "image/png")
        rows = fault_rows(server, cfg)
        child = subprocess.run(
            [sys.executable, __file__, "--rss-child", server.url("/fault/bomb"),
             server.url("/fault/endless?chunk=65536&interval=0")],
            check=True, capture_output=True, text=True,
        )
    rows += limit_rows(cfg)
    rss = json.loads(child.stdout.strip().splitlines()[-1])

    print(f"deadline {cfg.deadline:g} s, read_timeout {cfg.read_timeout:g} s, retries {cfg.retries}, "
          f"max_bytes {cfg.max_bytes // (1024 * 1024)} MiB, robots.txt respected\n")
    print("| fault | expected | reason | seconds to give up | detail |")
    print("|---|---|---|---:|---|")
    for name, expected, reason, seconds, detail in rows:
        mark = "" if reason == expected or not expected.replace("_", "").isalpha() else " **(unexpected)**"
        short = detail if len(detail) <= 90 else detail[:87] + "..."
        print(f"| {name} | {expected} | {reason}{mark} | {seconds:.2f} | {short.replace('|', '/')} |")
    print(
        f"\nPeak RSS of a fresh process fetching the 30000x30000 PNG bomb (+ prepare_image) and an endless body "
        f"(max_bytes 20 MiB): {rss['peak_kib'] / 1024:.0f} MiB "
        f"(resident {rss['before_kib'] / 1024:.0f} MiB before the two fetches, after imports; "
        f"outcomes {', '.join(rss['outcomes'])})."
    )


if __name__ == "__main__":
    main()
