"""One run through the CLI over a list of hostile servers and images (issue 14, network and images half).

Healthy photos next to: an EPS served as image/jpeg, a target-size JPEG cut
to a third, a 1x1500 PNG that keep_ratio would blow up, a target-size JPEG
carrying GPS EXIF and an appended payload, a server that drips its headers,
and a host that accepts connections and never answers. Every row must come
out once, with its reason; the passed-through JPEG must arrive clean.
"""

from __future__ import annotations

import io
import socket
import threading
import time

from helpers import blocky_jpeg, read_output
from PIL import ExifTags, Image, ImageChops

from paircurate.cli import main

PAYLOAD = b"#!/bin/sh\necho payload\n" * 40
SILENT_URLS = 20


def _encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def _gps_jpeg() -> bytes:
    exif = Image.Exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 29.0)
    img = Image.open(io.BytesIO(blocky_jpeg(40, 32, seed=7))).convert("RGB")
    return _encoded(img, "JPEG", quality=90, exif=exif)


class _SilentHost:
    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        for conn in self.held:
            conn.close()
        self.listener.close()


def test_hostile_servers_and_images_through_the_cli(loopback_server, tmp_path, capsys):
    s = loopback_server
    gps_jpeg = _gps_jpeg()
    truncated = blocky_jpeg(40, 32, seed=8)
    rows = [  # (url, caption, expected outcome)
        *[(s.url(s.add(f"/ok/{i}.jpg", blocky_jpeg(96, 80, seed=200 + i))), f"healthy photo {i}", "kept") for i in range(3)],
        (s.url(s.add("/eps.jpg", _encoded(Image.new("RGB", (64, 64), (9, 9, 9)), "EPS"))), "eps as jpeg", "unsupported_format"),
        (s.url(s.add("/cut.jpg", truncated[: len(truncated) // 3])), "cut jpeg", "decode_error"),
        (s.url(s.add("/tall.png", _encoded(Image.new("RGB", (1, 1500), (120, 120, 120)), "PNG"), "image/png")), "tall png", "output_too_large"),
        (s.url(s.add("/gps.jpg", gps_jpeg + PAYLOAD)), "gps jpeg", "kept"),
        (s.url("/fault/drip-headers?interval=0.2"), "drip headers", "timeout"),
    ]
    silent = _SilentHost()
    rows += [(f"http://127.0.0.1:{silent.port}/{i}.jpg", f"silent {i}", "silent") for i in range(SILENT_URLS)]
    listing = tmp_path / "hostile.tsv"
    listing.write_text("url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c, _ in rows))
    out = tmp_path / "out"
    started = time.monotonic()
    try:
        rc = main([
            "run", str(listing), "-o", str(out), "--resize-mode", "keep_ratio", "--image-size", "32",
            "--max-output-pixels", "1000000", "--deadline", "3", "--read-timeout", "1", "--retries", "0",
            "--host-failure-limit", "2", "--threads", "4", "--no-progress", "--no-report", "--allow-private-network",
        ])
    finally:
        silent.close()
    wall = time.monotonic() - started
    assert rc == 0, capsys.readouterr().err
    got = read_output(out)

    outcome: dict[str, list[str]] = {}
    for row in got["meta"]:
        outcome.setdefault(row["caption"], []).append("kept")
    for row in got["rejects"]:
        outcome.setdefault(row["caption"], []).append(row["reason"])
    for _, caption, expected in rows:
        got_reasons = outcome.get(caption)
        assert got_reasons is not None and len(got_reasons) == 1, (caption, got_reasons)
        if expected == "silent":
            assert got_reasons[0] in ("timeout", "host_unavailable"), (caption, got_reasons)
        else:
            assert got_reasons[0] == expected, (caption, got_reasons)
    silent_reasons = [outcome[f"silent {i}"][0] for i in range(SILENT_URLS)]
    # Only the first attempts (4 threads: at most 4 at once, plus one per process
    # that starts before the count is in) wait for their timeout; the rest are refused at once.
    assert silent_reasons.count("host_unavailable") >= SILENT_URLS - 8, silent_reasons

    gps_row = next(row for row in got["meta"] if row["caption"] == "gps jpeg")
    shipped = got["samples"][gps_row["uid"]]["jpg"]
    assert PAYLOAD[:12] not in shipped and shipped.endswith(b"\xff\xd9")
    with Image.open(io.BytesIO(shipped)) as img, Image.open(io.BytesIO(gps_jpeg)) as original:
        assert dict(img.getexif()) == {}
        assert ImageChops.difference(img.convert("RGB"), original.convert("RGB")).getbbox() is None  # not re-encoded
    print(f"hostile media list: {len(rows)} rows in {wall:.1f} s (machine shared with other jobs)")
