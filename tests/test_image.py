import hashlib
import io

import pytest
from paircurate.imaging.prepare import prepare_image
from paircurate.schemas.config import ImageConfig
from paircurate.schemas.outcomes import Reason, RejectError
from PIL import Image


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h))
    img.putdata([(x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), 128) for y in range(h) for x in range(w)])
    return img


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize(
    "mode, src, expected",
    [
        ("center_crop", (400, 200), (256, 256)),
        ("center_crop", (100, 300), (256, 256)),
        ("keep_ratio", (400, 200), (512, 256)),
        ("keep_ratio", (200, 400), (256, 512)),
        ("keep_ratio_largest", (400, 200), (256, 128)),
        ("keep_ratio_largest", (100, 50), (256, 128)),
        ("border", (400, 200), (256, 256)),
        ("no", (400, 200), (400, 200)),
    ],
)
def test_resize_modes_follow_img2dataset_meanings(mode, src, expected):
    data = encode(gradient(*src))
    out = prepare_image(data, ImageConfig(image_size=256, resize_mode=mode))
    assert (out.width, out.height) == expected
    assert decoded(out.data).size == expected
    assert (out.original_width, out.original_height) == src
    assert out.sha256 == hashlib.sha256(data).hexdigest()


def test_border_pads_with_white_and_keeps_content_centered():
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    out = decoded(prepare_image(encode(img, "PNG"), ImageConfig(image_size=256, resize_mode="border", encode_format="png")).data)
    assert out.getpixel((128, 5)) == (255, 255, 255)  # top band is border
    assert out.getpixel((128, 128)) == (0, 0, 255)


def test_exif_orientation_is_applied():
    img = gradient(300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(img, exif=exif)
    out = prepare_image(data, ImageConfig(image_size=100, resize_mode="keep_ratio_largest"))
    assert (out.original_width, out.original_height) == (200, 300)
    assert (out.width, out.height) == (67, 100)


def test_untouched_jpeg_is_not_reencoded():
    data = encode(gradient(256, 256))
    out = prepare_image(data, ImageConfig(image_size=256, resize_mode="center_crop"))
    assert out.data == data


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("webp", b"RIFF"), ("jpg", b"\xff\xd8")])
def test_output_encodings(fmt, magic):
    out = prepare_image(encode(gradient(300, 300)), ImageConfig(image_size=64, encode_format=fmt))
    assert out.data.startswith(magic) and out.format == fmt


def test_transparent_png_is_composited_on_white():
    img = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    out = prepare_image(encode(img, "PNG"), ImageConfig(image_size=64, encode_format="png"))
    assert decoded(out.data).convert("RGB").getpixel((10, 10)) == (255, 255, 255)


@pytest.mark.parametrize(
    "data, cfg, reason",
    [
        (b"not an image at all", ImageConfig(), Reason.DECODE_ERROR),
        (encode(gradient(64, 64))[:200], ImageConfig(), Reason.DECODE_ERROR),
        (encode(gradient(50, 80)), ImageConfig(min_image_size=64), Reason.IMAGE_TOO_SMALL),
        (encode(gradient(300, 50)), ImageConfig(max_aspect_ratio=3), Reason.BAD_ASPECT_RATIO),
        (encode(gradient(100, 100)), ImageConfig(max_pixels=5000), Reason.DECOMPRESSION_BOMB),
    ],
)
def test_rejects_carry_specific_reasons(data, cfg, reason):
    with pytest.raises(RejectError) as err:
        prepare_image(data, cfg)
    assert err.value.reason is reason
    assert err.value.detail


def test_bomb_guard_uses_declared_size_without_decoding():
    # A PNG header that declares 30000x30000 pixels; decoding it would need ~2.7 GB.
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    with pytest.raises(RejectError) as err:
        prepare_image(png, ImageConfig())
    assert err.value.reason is Reason.DECOMPRESSION_BOMB
    assert "30000x30000" in err.value.detail
