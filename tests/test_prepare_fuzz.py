"""prepare_image over mutated real images: a PreparedImage or a RejectError, never another exception.

Seeds are real encodings of every allowed format plus formats that must be
refused (EPS, PDF, TIFF, ICO, PPM); hypothesis truncates, flips, overwrites
header fields with huge sizes, inserts and appends bytes. Each example must
finish within a time bound, and the whole run within a memory bound.
"""

from __future__ import annotations

import io
import resource
import struct
import time

import pytest
from helpers import photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paircurate.imaging.budget import PixelBudget, decode_budget_pixels
from paircurate.imaging.prepare import PreparedImage, prepare_image
from paircurate.schemas.config import ENCODE_FORMATS, RESIZE_MODES, ImageConfig
from paircurate.schemas.outcomes import Reason, RejectError
from PIL import Image

# Small enough that one example's worst case is a few tens of MB and a few
# hundred ms; large enough that every seed decodes.
MAX_PIXELS = 4_000_000
MAX_OUTPUT = 1_000_000
SECONDS_PER_EXAMPLE = 10.0  # generous: ~10 ms is typical; a hang or a huge allocation is far beyond
RSS_GROWTH_LIMIT_MB = 768


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def _seeds() -> dict[str, bytes]:
    small = photo(21, (48, 36))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the transpose path
    return {
        "jpeg": _save(small, "JPEG", quality=85),
        "jpeg-progressive": _save(small, "JPEG", quality=85, progressive=True),
        "jpeg-exif-rotated": _save(small, "JPEG", exif=exif),
        "jpeg-target-size": _save(photo(22, (256, 256)), "JPEG", quality=85),  # the pass-through path
        "png-rgb": _save(small, "PNG"),
        "png-rgba": _save(small.convert("RGBA"), "PNG"),
        "png-target-size": _save(photo(23, (256, 256)), "PNG"),
        "png-palette": _save(small.convert("P"), "PNG", transparency=0),
        "png-la": _save(small.convert("LA"), "PNG"),
        "webp": _save(small, "WEBP", quality=80),
        "webp-target-size": _save(photo(24, (256, 256)), "WEBP", quality=80),
        "gif": _save(small.convert("P"), "GIF"),
        "bmp": _save(small, "BMP"),
        "eps": _save(small, "EPS"),
        "pdf": _save(small, "PDF"),
        "tiff": _save(small, "TIFF"),
        "ico": _save(small, "ICO"),
        "ppm": _save(small, "PPM"),
    }


SEEDS = _seeds()


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "size", "insert", "truncate", "append"]))
        if not data:
            break
        if kind == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif kind == "size":
            # A width/height-like field near the start set to something huge.
            at = draw(st.integers(0, max(0, min(len(data), 64) - 4)))
            data[at : at + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 65535, 30000, 2**31 - 1, 2**32 - 1])))
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:
            data += draw(st.binary(min_size=1, max_size=256))
    return name, bytes(data)


configs = st.builds(
    ImageConfig,
    image_size=st.sampled_from([16, 64, 256]),
    resize_mode=st.sampled_from(RESIZE_MODES),
    encode_format=st.sampled_from(ENCODE_FORMATS),
    max_pixels=st.just(MAX_PIXELS),
    max_output_pixels=st.just(MAX_OUTPUT),
    keep_metadata=st.booleans(),
)

BUDGET = PixelBudget(decode_budget_pixels(ImageConfig(max_pixels=MAX_PIXELS, max_output_pixels=MAX_OUTPUT)))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@pytest.fixture(scope="module")
def rss_before():
    before = _peak_rss_mb()
    yield before
    # ru_maxrss is the peak of the whole process: an example that allocated
    # far beyond the config's bounds would show here.
    assert _peak_rss_mb() - before < RSS_GROWTH_LIMIT_MB


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=mutated(), cfg=configs)
def test_prepare_image_returns_an_image_or_a_reason(rss_before, case, cfg):
    name, data = case
    started = time.monotonic()
    try:
        prepared = prepare_image(data, cfg, BUDGET)
    except RejectError as err:
        assert isinstance(err.reason, Reason)
        if name in ("eps", "pdf", "tiff", "ico", "ppm") and err.reason is not Reason.DECODE_ERROR:
            # A refused format stays refused however it is mangled (or stops being recognisable at all).
            assert err.reason is Reason.UNSUPPORTED_FORMAT, (name, err)
    else:
        assert isinstance(prepared, PreparedImage)
        assert name not in ("eps", "pdf", "tiff", "ico", "ppm")
        assert prepared.width * prepared.height <= MAX_OUTPUT
        with Image.open(io.BytesIO(prepared.data)) as out:
            out.load()  # what we ship decodes in full
            assert out.size == (prepared.width, prepared.height)
    assert time.monotonic() - started < SECONDS_PER_EXAMPLE
    assert BUDGET.free == BUDGET.capacity


def test_every_seed_is_what_it_claims():
    cfg = ImageConfig(max_pixels=MAX_PIXELS, max_output_pixels=MAX_OUTPUT)
    for name, data in SEEDS.items():
        if name in ("eps", "pdf", "tiff", "ico", "ppm"):
            with pytest.raises(RejectError) as info:
                prepare_image(data, cfg)
            assert info.value.reason is Reason.UNSUPPORTED_FORMAT, name
        else:
            assert prepare_image(data, cfg).width == 256, name
