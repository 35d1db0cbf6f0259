"""Decode, validate, orient, resize and encode one downloaded image.

Resize modes mean what they mean in img2dataset:

- ``no``: keep the decoded size.
- ``keep_ratio``: scale so the smaller side is ``image_size``.
- ``keep_ratio_largest``: scale so the larger side is ``image_size``.
- ``center_crop``: scale so the smaller side is ``image_size``, then crop the centre square.
- ``border``: scale so the larger side is ``image_size``, then pad to a white square.

    >>> img = prepare_image(jpeg_bytes, ImageConfig(image_size=256))
    >>> img.width, img.height, img.format
    (256, 256, 'jpg')
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from paircurate.filters.image import check_image_shape
from paircurate.schemas.config import ImageConfig
from paircurate.schemas.outcomes import Reason, RejectError
from PIL import Image, ImageOps

# We enforce our own pixel limit (ImageConfig.max_pixels) before decoding, with
# a reject reason; Pillow's global guard would raise or warn on its own terms.
Image.MAX_IMAGE_PIXELS = None

_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_BORDER_COLOR = (255, 255, 255)


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    format: str
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str  # of the bytes as downloaded


def target_size(width: int, height: int, cfg: ImageConfig) -> tuple[int, int]:
    """Size of the scaled image before any crop or border."""
    size = cfg.image_size
    mode = cfg.resize_mode
    if mode == "no":
        return width, height
    if mode in ("keep_ratio", "center_crop"):
        scale = size / min(width, height)
    else:  # keep_ratio_largest, border
        scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_image(data: bytes, cfg: ImageConfig) -> PreparedImage:
    """Turn downloaded bytes into the bytes that go into the shard.

    Raises ``RejectError`` with ``decode_error``, ``decompression_bomb``,
    ``image_too_small`` or ``bad_aspect_ratio``.
    """
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
        declared_w, declared_h = img.size
    except Exception as exc:  # Pillow raises many unrelated types for bad input
        raise RejectError(Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None

    # Header-only check: a 30000x30000 PNG is refused before a pixel is decoded.
    if declared_w * declared_h > cfg.max_pixels:
        raise RejectError(Reason.DECOMPRESSION_BOMB, f"declares {declared_w}x{declared_h} pixels > {cfg.max_pixels}")

    orientation = _exif_orientation(img)
    if orientation in _SWAPS_AXES:
        orig_w, orig_h = declared_h, declared_w
    else:
        orig_w, orig_h = declared_w, declared_h
    decision = check_image_shape(orig_w, orig_h, cfg)
    if not decision.keep:
        raise RejectError(decision.reason, decision.detail)

    source_format = (img.format or "").upper()
    want_w, want_h = target_size(orig_w, orig_h, cfg)
    untouched = (
        (want_w, want_h) == (orig_w, orig_h)
        and cfg.resize_mode in ("no", "keep_ratio", "keep_ratio_largest")
        or (cfg.resize_mode in ("center_crop", "border") and (orig_w, orig_h) == (cfg.image_size, cfg.image_size))
    )
    if untouched and orientation in (None, 1) and source_format == _PIL_FORMATS[cfg.encode_format] and img.mode == "RGB":
        # Already what we would produce: ship the original bytes, no re-encode loss.
        try:
            img.verify()
        except Exception as exc:
            raise RejectError(Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None
        return PreparedImage(data, cfg.encode_format, orig_w, orig_h, orig_w, orig_h, digest)

    try:
        if source_format == "JPEG" and cfg.resize_mode != "no":
            # DCT-domain downscaling while decoding: far cheaper than decoding
            # full size and resizing, and never goes below the size we need.
            draft_w, draft_h = (want_h, want_w) if orientation in _SWAPS_AXES else (want_w, want_h)
            img.draft("RGB", (draft_w, draft_h))
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except RejectError:
        raise
    except Exception as exc:
        raise RejectError(Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None

    img = _resize(img, want_w, want_h, cfg)
    out = io.BytesIO()
    save_args = {"quality": cfg.encode_quality} if cfg.encode_format in ("jpg", "webp") else {}
    img.save(out, format=_PIL_FORMATS[cfg.encode_format], **save_args)
    return PreparedImage(out.getvalue(), cfg.encode_format, img.width, img.height, orig_w, orig_h, digest)


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(_ORIENTATION_TAG)
    except Exception:  # a broken EXIF block must not cost us the image
        return None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, not the black that a plain convert gives.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BORDER_COLOR)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _resize(img: Image.Image, want_w: int, want_h: int, cfg: ImageConfig) -> Image.Image:
    if cfg.resize_mode == "no":
        return img
    size = cfg.image_size
    w, h = img.size
    if cfg.resize_mode == "center_crop":
        # Resample straight from the centre square of the source: the same
        # result as scale-then-crop, without resampling pixels we throw away.
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        return img.resize((size, size), _filter_for(side, size), box=box)
    if img.size != (want_w, want_h):
        img = img.resize((want_w, want_h), _filter_for(max(w, h), max(want_w, want_h)))
    if cfg.resize_mode == "border":
        canvas = Image.new("RGB", (size, size), _BORDER_COLOR)
        canvas.paste(img, ((size - want_w) // 2, (size - want_h) // 2))
        img = canvas
    return img


def _filter_for(source: int, target: int) -> Image.Resampling:
    # Area averaging when shrinking (what img2dataset does with cv2.INTER_AREA)
    # is both the fastest and alias-free; bicubic when enlarging.
    return Image.Resampling.BOX if source > target else Image.Resampling.BICUBIC
