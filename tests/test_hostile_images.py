"""Hostile images: formats off the allow-list, truncation, metadata and payloads, degenerate shapes, memory.

prepare_image either returns a PreparedImage or raises RejectError with a
reason code, whatever the bytes; these tests pin the reason for each case.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import threading
import time
import zlib

import pytest
from helpers import photo
from paircurate.crawl.client import make_pool
from paircurate.crawl.workers import fetch_and_prepare
from paircurate.imaging.budget import PixelBudget, decode_budget_pixels
from paircurate.imaging.metadata import strip_container
from paircurate.imaging.prepare import prepare_image, sniff_format
from paircurate.schemas import records as R
from paircurate.schemas.config import ConfigError, DownloadConfig, ImageConfig
from paircurate.schemas.outcomes import Reason, RejectError
from PIL import ExifTags, Image, ImageChops

DEFAULT = ImageConfig()  # 256, center_crop, jpg


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def reason_of(data: bytes, cfg: ImageConfig = DEFAULT) -> Reason:
    with pytest.raises(RejectError) as info:
        prepare_image(data, cfg)
    return info.value.reason


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 29.0)
    return exif


def same_pixels(a: bytes, b: bytes) -> bool:
    with Image.open(io.BytesIO(a)) as x, Image.open(io.BytesIO(b)) as y:
        return x.size == y.size and ImageChops.difference(x.convert("RGB"), y.convert("RGB")).getbbox() is None


PAYLOAD = b"#!/bin/sh\necho this rides along after the image\n" * 20


# -- the allow-list -------------------------------------------------------------------


def test_eps_sent_as_a_jpeg_is_never_decoded():
    eps = encoded(photo(1, (64, 64)), "EPS")
    assert eps.startswith(b"%!PS-Adobe")
    with pytest.raises(RejectError) as info:
        prepare_image(eps, DEFAULT)
    assert info.value.reason is Reason.UNSUPPORTED_FORMAT
    assert info.value.detail.startswith("EPS is not in image_formats")


@pytest.mark.parametrize("fmt,name", [("PDF", "PDF"), ("TIFF", "TIFF"), ("ICO", "ICO"), ("PPM", "PPM")])
def test_formats_off_the_list_are_unsupported(fmt, name):
    data = encoded(photo(2, (64, 64)), fmt)
    with pytest.raises(RejectError) as info:
        prepare_image(data, DEFAULT)
    assert info.value.reason is Reason.UNSUPPORTED_FORMAT
    assert info.value.detail.startswith(f"{name} is not in image_formats")


def test_a_format_can_be_allowed():
    tiff = encoded(photo(3, (300, 200)), "TIFF")
    prepared = prepare_image(tiff, dataclasses.replace(DEFAULT, image_formats=("jpeg", "tiff")))
    assert (prepared.width, prepared.height, prepared.format) == (256, 256, "jpg")
    # ... and a default one forbidden.
    png = encoded(photo(3, (300, 200)), "PNG")
    assert reason_of(png, dataclasses.replace(DEFAULT, image_formats=("jpeg",))) is Reason.UNSUPPORTED_FORMAT


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_every_default_format_decodes(fmt):
    prepared = prepare_image(encoded(photo(4, (320, 240)), fmt), DEFAULT)
    assert (prepared.width, prepared.height) == (256, 256)


def test_garbage_is_a_decode_error_not_unsupported():
    assert reason_of(b"\x00\x01garbage" * 50) is Reason.DECODE_ERROR
    assert sniff_format(b"\x00\x01garbage") is None


def test_delegated_formats_cannot_be_configured():
    for name in ("eps", "pdf", "ps"):
        with pytest.raises(ConfigError, match="outside program"):
            ImageConfig(image_formats=("jpeg", name))
    with pytest.raises(ConfigError, match="'heic' is not one of"):
        ImageConfig(image_formats=("heic",))


# -- pass-through only after a full decode, cleaned ----------------------------------------


def test_a_truncated_jpeg_of_the_target_size_is_rejected():
    whole = encoded(photo(5, (256, 256)), "JPEG", quality=90)
    cut = whole[: len(whole) // 3]
    assert reason_of(cut) is Reason.DECODE_ERROR
    assert reason_of(cut, dataclasses.replace(DEFAULT, resize_mode="keep_ratio")) is Reason.DECODE_ERROR
    # verify() alone accepted it: this is the case the full decode exists for.
    with Image.open(io.BytesIO(cut)) as img:
        img.verify()


def test_a_truncated_target_size_jpeg_with_phash_is_a_reject_row(loopback_server):
    whole = encoded(photo(6, (256, 256)), "JPEG", quality=90)
    loopback_server.add("/cut.jpg", whole[: len(whole) // 3])
    download = DownloadConfig(allow_private_network=True, retries=0)
    ctx = make_pool(download)
    record = {R.UID: "u", R.URL: loopback_server.url("/cut.jpg"), R.CAPTION: "c"}
    result = fetch_and_prepare(record, download, DEFAULT, ctx, with_phash=True, budget=PixelBudget(decode_budget_pixels(DEFAULT)))
    assert result[R.REASON] == "decode_error"
    assert result[R.STAGE] == "image"


def test_gps_exif_and_appended_bytes_are_stripped_losslessly():
    original = encoded(photo(7, (256, 256)), "JPEG", quality=90, exif=gps_exif())
    hostile = original + PAYLOAD
    prepared = prepare_image(hostile, DEFAULT)
    assert PAYLOAD[:20] not in prepared.data
    assert prepared.data.endswith(b"\xff\xd9")
    assert b"SpyCam" not in prepared.data and b"Exif\x00\x00" not in prepared.data
    with Image.open(io.BytesIO(prepared.data)) as img:
        assert dict(img.getexif()) == {}
    assert same_pixels(prepared.data, original)  # not re-encoded: the same pixels
    assert len(prepared.data) < len(original)
    assert prepared.sha256 != ""  # of the bytes as downloaded


def test_keep_metadata_keeps_exif_but_not_the_payload():
    original = encoded(photo(8, (256, 256)), "JPEG", quality=90, exif=gps_exif())
    prepared = prepare_image(original + PAYLOAD, dataclasses.replace(DEFAULT, keep_metadata=True))
    assert prepared.data == original
    with Image.open(io.BytesIO(prepared.data)) as img:
        assert img.getexif().get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitude] == (48.0, 51.0, 29.0)


def test_the_icc_profile_and_jfif_stay():
    icc = b"\x00" * 128 + b"fake-but-carried-icc"
    original = encoded(photo(9, (256, 256)), "JPEG", quality=90, icc_profile=icc, comment=b"secret note")
    prepared = prepare_image(original, DEFAULT)
    with Image.open(io.BytesIO(prepared.data)) as img:
        assert img.info.get("icc_profile") == icc
        assert "comment" not in img.info
        assert "jfif" in img.info


def test_png_pass_through_drops_text_chunks_and_the_tail():
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("Author", "someone@example.com")
    original = encoded(photo(10, (256, 256)), "PNG", pnginfo=meta)
    cfg = dataclasses.replace(DEFAULT, encode_format="png")
    prepared = prepare_image(original + PAYLOAD, cfg)
    assert b"tEXt" not in prepared.data and b"someone@" not in prepared.data
    assert prepared.data.endswith(b"IEND\xaeB`\x82")
    assert same_pixels(prepared.data, original)


def test_webp_pass_through_drops_exif_and_clears_its_flag():
    original = encoded(photo(11, (256, 256)), "WEBP", quality=90, exif=gps_exif())
    cfg = dataclasses.replace(DEFAULT, encode_format="webp")
    prepared = prepare_image(original + PAYLOAD, cfg)
    assert b"EXIF" not in prepared.data and b"SpyCam" not in prepared.data
    assert int.from_bytes(prepared.data[4:8], "little") + 8 == len(prepared.data)
    with Image.open(io.BytesIO(prepared.data)) as img:
        img.load()
        assert dict(img.getexif()) == {}
    assert same_pixels(prepared.data, original)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_strip_refuses_broken_structure(fmt):
    whole = encoded(photo(12, (64, 64)), fmt)
    with pytest.raises(ValueError):
        strip_container(whole[: len(whole) // 2], fmt)
    assert strip_container(whole + b"tail", fmt) == strip_container(whole, fmt)


# -- output size and shape --------------------------------------------------------------


def _png_1xn(height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = b"\x00\x80\x80\x80" * height
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def test_a_1x1500_png_with_keep_ratio_is_refused_before_resizing():
    data = _png_1xn(1500)
    assert len(data) < 200
    started = time.monotonic()
    with pytest.raises(RejectError) as info:
        prepare_image(data, dataclasses.replace(DEFAULT, resize_mode="keep_ratio"))
    assert info.value.reason is Reason.OUTPUT_TOO_LARGE
    assert "256x384000" in info.value.detail
    assert time.monotonic() - started < 1.0  # nothing was allocated; 434 MiB took seconds
    # The other modes give small outputs and are fine.
    for mode in ("center_crop", "border", "keep_ratio_largest"):
        assert prepare_image(data, dataclasses.replace(DEFAULT, resize_mode=mode)).height == 256


def test_max_output_pixels_caps_no_resize_too():
    data = encoded(photo(13, (300, 200)), "PNG")
    cfg = dataclasses.replace(DEFAULT, resize_mode="no", max_output_pixels=50_000)
    assert reason_of(data, cfg) is Reason.OUTPUT_TOO_LARGE
    assert prepare_image(data, dataclasses.replace(cfg, max_output_pixels=60_000)).width == 300


# -- the pixel budget ------------------------------------------------------------------------


def test_the_budget_never_lets_threads_exceed_it():
    budget = PixelBudget(100)
    held = []
    most = [0]
    lock = threading.Lock()

    def worker(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                held.append(min(pixels, budget.capacity))  # a request above capacity runs alone
                most[0] = max(most[0], sum(held))
            time.sleep(0.01)
            with lock:
                held.remove(min(pixels, budget.capacity))

    threads = [threading.Thread(target=worker, args=(p,)) for p in [60, 50, 40, 30, 100, 70, 500] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert most[0] <= 100
    assert budget.free == 100


def test_prepare_waits_for_its_share_of_the_budget():
    data = encoded(photo(14, (320, 240)), "PNG")
    budget = PixelBudget(decode_budget_pixels(DEFAULT))
    done = threading.Event()

    def prepare() -> None:
        prepare_image(data, DEFAULT, budget)
        done.set()

    with budget.hold(budget.capacity):  # someone else holds it all
        thread = threading.Thread(target=prepare)
        thread.start()
        assert not done.wait(0.5)
    assert done.wait(10)
    thread.join()
    assert budget.free == budget.capacity


_PEAK_SCRIPT = """
import io, sys
from PIL import Image
from paircurate.imaging.budget import PixelBudget, decode_budget_pixels
from paircurate.imaging.prepare import prepare_image
from paircurate.schemas.config import ImageConfig
mode, side = sys.argv[1], 3000
colour = {"LA": (7, 200), "RGBA": (7, 8, 9, 200), "P": 7}[mode]
extra = {"transparency": 0} if mode == "P" else {}
out = io.BytesIO()
Image.new(mode, (side, side), colour).save(out, "PNG", **extra)
data = out.getvalue()
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
cfg = ImageConfig()
budget = PixelBudget(decode_budget_pixels(cfg))
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
prepare_image(data, cfg, budget)
print((status("VmHWM") - before) / (side * side + 256 * 256))
"""


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P"])
def test_bytes_per_charged_pixel_stay_within_the_documented_peak(mode, tmp_path):
    # The README's worst case (12 bytes x the budget) rests on this constant.
    import subprocess
    import sys

    from paircurate.imaging.budget import BYTES_PER_PIXEL_PEAK

    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    per_pixel = float(proc.stdout.strip())
    assert 2 < per_pixel <= BYTES_PER_PIXEL_PEAK + 0.5, per_pixel


def test_new_options_reach_the_config_from_the_cli():
    from paircurate.cli import build_config, make_parser

    args, beam_args = make_parser().parse_known_args(
        ["run", "x.csv", "-o", "out", "--image-formats", "jpeg,tiff", "--keep-metadata", "--max-output-pixels", "1000", "--host-failure-limit", "3"]
    )
    cfg = build_config(args, beam_args)
    assert cfg.image.image_formats == ("jpeg", "tiff")
    assert cfg.image.keep_metadata is True
    assert cfg.image.max_output_pixels == 1000
    assert cfg.download.host_failure_limit == 3
    with pytest.raises(ConfigError, match="host_failure_limit"):
        DownloadConfig(host_failure_limit=-1)
    with pytest.raises(ConfigError, match="max_output_pixels"):
        ImageConfig(max_output_pixels=0)
