"""Start-up and exit of a `paircurate run` process, and what it imports.

Serves one small list from a loopback server and measures, over --runs runs:

- start-up: from starting the process to the server receiving the first request;
- exit: from `stats.json` being written (the run's last file with --no-report) to the process being gone;
- the modules the run imported, from `python -X importtime` (cumulative ms), top --top.

    python bench/startup.py --urls 20 --runs 5
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from PIL import Image

from paircurate.testing.loopback import LoopbackServer


def tiny_jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96 + seed % 7, 80), (seed * 37 % 256, 90, 160)).save(buf, format="JPEG")
    return buf.getvalue()


def run_once(url_list: str, out_dir: str, server: LoopbackServer, extra: list[str], importtime: bool = False) -> dict:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "paircurate.cli", "run", url_list, "-o", out_dir,
           "--no-progress", "--no-report", "--allow-private-network", "--overwrite", *extra]
    seen_before = len(server.requests())
    log = tempfile.TemporaryFile("w+")  # not a pipe: -X importtime writes more than a pipe holds
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    first_request = None
    while proc.poll() is None and first_request is None:
        if len(server.requests()) > seen_before:
            first_request = time.time()
        time.sleep(0.002)
    proc.wait()
    ended = time.time()
    log.seek(0)
    stderr = log.read()
    stats_written = os.path.getmtime(os.path.join(out_dir, "stats.json"))
    return {
        "startup": (first_request or ended) - started,
        "exit": ended - stats_written,
        "wall": ended - started,
        "importtime": stderr,
    }


def top_imports(importtime_log: str, n: int) -> list[tuple[float, str]]:
    rows = []
    for line in importtime_log.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if m and len(m.group(2)) <= 3:  # top-level imports only (their cumulative time)
            rows.append((int(m.group(1)) / 1000, m.group(3)))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("extra", nargs="*", help="extra `paircurate run` arguments (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as server:
        url_list = os.path.join(tmp, "urls.csv")
        with open(url_list, "w") as fh:
            fh.write("url,caption\n")
            for i in range(args.urls):
                fh.write(f"{server.url(server.add(f'/img/{i}.jpg', tiny_jpeg(i)))},picture number {i}\n")
        runs = [run_once(url_list, os.path.join(tmp, "out"), server, args.extra) for _ in range(args.runs)]
        for key in ("startup", "exit", "wall"):
            values = [r[key] for r in runs]
            print(f"{key:<8} min {min(values):.3f}s  median {statistics.median(values):.3f}s  max {max(values):.3f}s")
        profiled = run_once(url_list, os.path.join(tmp, "out"), server, args.extra, importtime=True)
        print("top-level imports (cumulative ms):")
        for ms, name in top_imports(profiled["importtime"], args.top):
            print(f"  {ms:8.1f}  {name}")


if __name__ == "__main__":
    main()
