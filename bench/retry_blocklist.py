"""Two figures for issue 18: success rate on a list with a flaky host, first run vs after one ``--retry-failed``;
and the cost of blocklist matching per million rows.

Flaky host: a LoopbackServer serves ``--urls`` photos; half of them are on
``127.0.0.1`` (steady), half on ``localhost`` (the same server, another host
name), where ``--flaky-share`` of the URLs answer 500 to their first
``--down-for`` requests (more than the run's own retries: the host is down for
the whole first run) and ``--dead-share`` always answer 500. The run uses the
default download settings.

Blocklist matching: random rows against lists of ``--list-size`` url entries,
a tenth as many domains, a hundredth as many prefixes, the same number of
sha256 and md5 entries and ``--phash-entries`` pHash entries at distance 4;
times parsing the lists, then ``match_url``, ``match_digests`` and
``match_phash`` over ``--rows`` rows each, and reports seconds per million rows.

    python bench/retry_blocklist.py
    python bench/retry_blocklist.py --urls 2000 --rows 1000000
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from paircurate.cli import main
from paircurate.filters.blocklist import load_blocklists
from paircurate.testing.loopback import LoopbackServer


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((256, 192), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def flaky_host(args, work: str) -> dict:
    rng = random.Random(0)
    with LoopbackServer() as s:
        rows = []
        for i in range(args.urls):
            path = s.add(f"/img/{i}.jpg", jpeg(i))
            if i % 2 == 0:
                url = s.url(path)
            else:
                draw = rng.random()
                host = f"http://localhost:{s.port}"
                if draw < args.dead_share:
                    url = f"{host}/fault/500?i={i}"
                elif draw < args.dead_share + args.flaky_share:
                    url = f"{host}/fault/flaky/{args.down_for}/f{i}?then={path}"
                else:
                    url = host + path
            rows.append((url, f"benchmark photo number {i}"))
        inputs = os.path.join(work, "in.csv")
        with open(inputs, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["url", "caption"])
            writer.writerows(rows)
        out = os.path.join(work, "out")
        base = ["run", inputs, "-o", out, "--no-progress", "--no-report", "--allow-private-network", "--shard-size", "500"]
        started = time.monotonic()
        assert main(base) == 0
        first_seconds = time.monotonic() - started
        with open(os.path.join(out, "stats.json")) as fh:
            first = json.load(fh)
        started = time.monotonic()
        assert main([*base, "--retry-failed"]) == 0
        retry_seconds = time.monotonic() - started
        with open(os.path.join(out, "stats.json")) as fh:
            after = json.load(fh)
    n = first["funnel"]["input_rows"]
    return {
        "urls": n,
        "first_run_kept": first["funnel"]["kept"],
        "first_run_success": first["funnel"]["kept"] / n,
        "first_run_seconds": round(first_seconds, 1),
        "first_run_diagnosis": first["hosts"]["diagnosis"],
        "after_retry_kept": after["funnel"]["kept"],
        "after_retry_success": after["funnel"]["kept"] / n,
        "retry": after["retries"][0],
        "retry_seconds": round(retry_seconds, 1),
    }


def matching_cost(args, work: str) -> dict:
    rng = random.Random(1)
    hexes = lambda bits: format(rng.getrandbits(bits), f"0{bits // 4}x")  # noqa: E731
    n = args.list_size
    path = os.path.join(work, "list.txt")
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(f"url:https://img{i % 5000}.example.com/a/{i}.jpg\n")
        for i in range(n // 10):
            fh.write(f"domain:bad{i}.example.net\n")
        for i in range(max(1, n // 100)):
            fh.write(f"prefix:https://cdn{i % 500}.example.org/private/{i}/\n")
        for _ in range(n):
            fh.write(f"sha256:{hexes(256)}\nmd5:{hexes(128)}\n")
        for _ in range(args.phash_entries):
            fh.write(f"phash:{hexes(64)} 4\n")
    started = time.perf_counter()
    lists = load_blocklists([path])
    parse_seconds = time.perf_counter() - started

    rows = args.rows
    # Rows as a crawl list has them: most on hosts no list names, 1 % listed URLs, 1 % under listed domains.
    def row_url() -> str:
        draw = rng.random()
        if draw < 0.01:
            i = rng.randrange(n)
            return f"https://img{i % 5000}.example.com/a/{i}.jpg"
        if draw < 0.02:
            return f"https://cdn.bad{rng.randrange(max(1, n // 10))}.example.net/x/{rng.randrange(n)}.png"
        return f"https://img{rng.randrange(20000)}.example.com/b/{rng.randrange(10 * n)}.jpg"

    urls = [row_url() for _ in range(rows)]
    shas = [hexes(256) for _ in range(rows)]
    md5s = [hexes(128) for _ in range(rows)]
    phashes = [hexes(64) for _ in range(rows)]

    def per_million(fn, items) -> tuple[float, int]:
        started = time.perf_counter()
        hits = sum(1 for item in items if fn(item) is not None)
        return (time.perf_counter() - started) * 1e6 / len(items), hits

    url_s, url_hits = per_million(lists.match_url, urls)
    digest_s, _ = per_million(lambda i: lists.match_digests(shas[i], md5s[i]), range(rows))
    phash_s, _ = per_million(lists.match_phash, phashes)
    return {
        "entries": {k: sum(c[k] for c in lists.entry_counts.values()) for k in ("url", "prefix", "domain", "sha256", "md5", "phash")},
        "parse_seconds": round(parse_seconds, 2),
        "rows": rows,
        "url_seconds_per_million": round(url_s, 2),
        "url_hits": url_hits,
        "digest_seconds_per_million": round(digest_s, 2),
        "phash_seconds_per_million": round(phash_s, 2),
    }


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=1000)
    parser.add_argument("--flaky-share", type=float, default=0.5, help="share of the flaky host's URLs that are down for the first run")
    parser.add_argument("--dead-share", type=float, default=0.05, help="share of the flaky host's URLs that always fail")
    parser.add_argument("--down-for", type=int, default=3, help="requests a flaky URL fails (the run makes 1 + --retries = 3)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--list-size", type=int, default=100_000)
    parser.add_argument("--phash-entries", type=int, default=10_000)
    parser.add_argument("--skip-flaky", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="paircurate-bench-")
    try:
        result = {}
        if not args.skip_flaky:
            result["flaky_host"] = flaky_host(args, work)
        result["blocklist_matching"] = matching_cost(args, work)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
