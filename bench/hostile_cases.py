"""The hostile network and image cases of issue 14, each in a fresh process: reason, time to give up, peak RSS.

Every case goes through the real path: a LoopbackServer (or a silent
listener) on 127.0.0.1, ``fetch_and_prepare`` with the default download and
image settings (pHash on, as the default dedup has it) and the process's
pixel budget, or ``FetchWorkers`` with two processes for the dead host.
Each case runs in its own child process so its peak RSS is its own; the
baseline is the child's RSS after imports and inputs, before the case.

    python bench/hostile_cases.py              # markdown table
    python bench/hostile_cases.py --case eps   # one case, JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

CASES = {
    "drip-status": "server drips the status line, 1 byte / 0.5 s, --deadline 3 --retries 0",
    "drip-headers": "server drips a header, 1 byte / 0.5 s, --deadline 3 --retries 0",
    "drip-body": "server drips the body, 1 byte / 0.5 s, --deadline 3 --retries 0",
    "dead-host-x300": "300 URLs on a host that accepts and never answers (defaults: deadline 30 s, 2 processes)",
    "eps": "EPS served as image/jpeg",
    "png-1x1500-keep-ratio": "1x1500 PNG, --resize-mode keep_ratio",
    "png-9400-rgba": "9400x9400 RGBA PNG (under --max-pixels), default center_crop",
    "png-9400-rgba-x8": "8 of those at once on 8 threads of one process (the pixel budget)",
    "jpeg-truncated-target-size": "256x256 JPEG cut to a third, default settings (pHash on)",
    "jpeg-gps-appended": "256x256 JPEG with GPS EXIF and 1 KB appended (passed through)",
}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child
    # would report its parent's peak (the parent built the 9400x9400 PNG).
    return _status_mb("VmHWM")


def _current_rss_mb() -> float:
    return _status_mb("VmRSS")


def _photo_jpeg(size: int, **kwargs) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    pixels = (rng.random((size // 8, size // 8, 3)) * 255).astype("uint8")
    img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, **kwargs)
    return out.getvalue()


def big_rgba_png(path: str) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (9400, 9400), (30, 120, 200, 160))
    draw = ImageDraw.Draw(img)
    for i in range(0, 9400, 400):
        draw.line((0, i, 9400, 9400 - i), fill=(250, 20, 20, 255), width=9)
    img.save(path, "PNG", compress_level=9)


def run_case(name: str, big_png_path: str) -> dict:
    from paircurate.crawl.client import make_pool
    from paircurate.crawl.workers import FetchWorkers, fetch_and_prepare
    from paircurate.imaging.budget import PixelBudget, decode_budget_pixels, return_freed_pixels_to_the_system
    from paircurate.schemas import records as R
    from paircurate.schemas.config import DownloadConfig, ImageConfig
    from PIL import ExifTags, Image

    from paircurate.testing.loopback import LoopbackServer

    download = DownloadConfig(allow_private_network=True)
    image = ImageConfig()
    server = LoopbackServer().start()
    body: bytes | None = None
    path = "/x"
    if name.startswith("drip"):
        download = dataclasses.replace(download, deadline=3.0, retries=0)
        path = {"drip-status": "/fault/drip-status", "drip-headers": "/fault/drip-headers", "drip-body": "/fault/drip"}[name] + "?interval=0.5"
    elif name == "eps":
        out = io.BytesIO()
        Image.new("RGB", (300, 300), (1, 2, 3)).save(out, "EPS")
        body = out.getvalue()
    elif name == "png-1x1500-keep-ratio":
        out = io.BytesIO()
        Image.new("RGB", (1, 1500), (128, 128, 128)).save(out, "PNG")
        body = out.getvalue()
        image = dataclasses.replace(image, resize_mode="keep_ratio")
    elif name.startswith("png-9400"):
        with open(big_png_path, "rb") as fh:
            body = fh.read()
    elif name == "jpeg-truncated-target-size":
        whole = _photo_jpeg(256)
        body = whole[: len(whole) // 3]
    elif name == "jpeg-gps-appended":
        exif = Image.Exif()
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps[ExifTags.GPS.GPSLatitudeRef] = "N"
        gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 29.0)
        body = _photo_jpeg(256, exif=exif) + b"PAYLOAD" * 150
    if body is not None:
        server.add(path, body, "image/jpeg")

    listener = None
    if name == "dead-host-x300":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)  # the kernel completes handshakes; nobody ever reads or writes
        held: list[socket.socket] = []

        def accept() -> None:
            while True:
                try:
                    held.append(listener.accept()[0])
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()

    baseline = _current_rss_mb()
    started = time.monotonic()
    extra = ""
    if name == "dead-host-x300":
        records = [{R.UID: str(i), R.URL: f"http://127.0.0.1:{listener.getsockname()[1]}/{i}.jpg", R.CAPTION: "c"} for i in range(300)]
        with FetchWorkers(download, image, processes=2) as workers:
            results = workers.map(records)
        reasons: dict[str, int] = {}
        for result in results:
            reasons[result.get(R.REASON, "kept")] = reasons.get(result.get(R.REASON, "kept"), 0) + 1
        reason = ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        extra = "main process only (children not counted)"
    else:
        ctx = make_pool(download)
        budget = PixelBudget(decode_budget_pixels(image))
        return_freed_pixels_to_the_system()  # as each download process does (crawl/workers.py _Fetcher)
        record = {R.UID: "u", R.URL: server.url(path), R.CAPTION: "c"}
        copies = 8 if name.endswith("-x8") else 1
        outputs: list[dict] = [None] * copies  # type: ignore[list-item]

        def one(i: int) -> None:
            outputs[i] = fetch_and_prepare(dict(record, **{R.UID: str(i)}), download, image, ctx, True, budget)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(copies)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result = outputs[0]
        reason = result.get(R.REASON) or "kept"
        if copies > 1:
            reason = f"{reason} x{sum(1 for o in outputs if (o.get(R.REASON) or 'kept') == reason)}"
        if reason == "kept" and name == "jpeg-gps-appended":
            data = result[R.IMAGE]
            ends_at_eoi = data.endswith(b"\xff\xd9")
            with Image.open(io.BytesIO(data)) as img:
                extra = f"shipped {len(data)} of {len(body)} bytes; EXIF tags left: {len(img.getexif())}; ends at EOI: {ends_at_eoi}"
        elif R.REASON in result:
            extra = result.get(R.DETAIL, "")[:110]
    seconds = time.monotonic() - started
    server.stop()
    return {"case": name, "reason": reason, "seconds": round(seconds, 2), "peak_rss_mb": round(_rss_mb(), 1), "baseline_rss_mb": round(baseline, 1), "note": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--big-png", default=os.path.join(tempfile.gettempdir(), "paircurate-9400-rgba.png"))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.big_png)))
        return
    if not os.path.exists(args.big_png):
        big_rgba_png(args.big_png)
    print(f"9400x9400 RGBA PNG: {os.path.getsize(args.big_png) / 1e3:.0f} KB")
    print("| case | reason | seconds to give up / finish | peak RSS MiB (baseline) | note |")
    print("|---|---|---|---|---|")
    for name, description in CASES.items():
        proc = subprocess.run([sys.executable, __file__, "--case", name, "--big-png", args.big_png], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"| {description} | FAILED rc {proc.returncode} | | | {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''} |")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {description} | {row['reason']} | {row['seconds']} | {row['peak_rss_mb']} ({row['baseline_rss_mb']}) | {row['note']} |")


if __name__ == "__main__":
    main()
