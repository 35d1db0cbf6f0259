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

import contextlib
import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Iterator

from paircurate.filters.image import check_image_shape
from paircurate.imaging.budget import PixelBudget
from paircurate.imaging.metadata import strip_container
from paircurate.schemas.config import ImageConfig
from paircurate.schemas.outcomes import Reason, RejectError
from PIL import Image, ImageOps, UnidentifiedImageError

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


def output_size(width: int, height: int, cfg: ImageConfig) -> tuple[int, int]:
    """Size of the image a resize mode produces from a ``width`` x ``height`` one (after orientation)."""
    if cfg.resize_mode in ("center_crop", "border"):
        return cfg.image_size, cfg.image_size
    return target_size(width, height, cfg)


def allowed_formats(cfg: ImageConfig) -> tuple[str, ...]:
    """Pillow plugin names of ``cfg.image_formats``: the only decoders ever run."""
    return tuple(dict.fromkeys("JPEG" if f.lower() == "jpg" else f.upper() for f in cfg.image_formats))


# Formats Pillow cannot open at all, named so that a reject says what arrived.
_FOREIGN_SIGNATURES = ((b"%PDF-", "PDF"), (b"<svg", "SVG"), (b"<?xml", "XML/SVG"), (b"\x1f\x8b", "GZIP"), (b"PK\x03\x04", "ZIP"))
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heif", b"mif1", b"msf1")


def sniff_format(data: bytes) -> str | None:
    """The format ``data`` starts with, by signature only: no decoder runs (None: unknown)."""
    for signature, name in _FOREIGN_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF"
    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:  # noqa: BLE001 - a signature check that chokes on junk is a "no"
            continue
    return None


def prepare_image(data: bytes, cfg: ImageConfig, budget: PixelBudget | None = None) -> PreparedImage:
    """Turn downloaded bytes into the bytes that go into the shard.

    Raises ``RejectError`` with ``unsupported_format``, ``decode_error``,
    ``decompression_bomb``, ``output_too_large``, ``image_too_small`` or
    ``bad_aspect_ratio``; nothing else for any input. With ``budget``, the
    decode waits for its share of the process's pixel budget.
    """
    digest = hashlib.sha256(data).hexdigest()
    formats = allowed_formats(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Only the allowed plugins even look at the bytes: an EPS sent as
            # image/jpeg never reaches the EPS plugin, let alone Ghostscript.
            img = Image.open(io.BytesIO(data), formats=formats)
        declared_w, declared_h = img.size
    except UnidentifiedImageError:
        found = sniff_format(data)
        if found is not None and found not in formats:
            raise RejectError(
                Reason.UNSUPPORTED_FORMAT, f"{found} is not in image_formats ({', '.join(formats)})"
            ) from None
        raise RejectError(Reason.DECODE_ERROR, f"not a decodable {'/'.join(formats)} image ({len(data)} bytes)") from None
    except Exception as exc:  # Pillow raises many unrelated types for bad input
        raise RejectError(Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None

    source_format = (img.format or "").upper()
    if source_format not in formats and not (source_format == "MPO" and "JPEG" in formats):
        # A plugin may hand over to another (JPEG -> MPO); only known pairs pass.
        raise RejectError(Reason.UNSUPPORTED_FORMAT, f"{source_format or 'unknown'} is not in image_formats ({', '.join(formats)})")

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

    # Before any pixel: a 1x1500 PNG scaled so its short side is 256 would be
    # 256x384000 (434 MiB); every mode's output is capped.
    out_w, out_h = output_size(orig_w, orig_h, cfg)
    if out_w * out_h > cfg.max_output_pixels:
        raise RejectError(
            Reason.OUTPUT_TOO_LARGE,
            f"{cfg.resize_mode} of {orig_w}x{orig_h} would give {out_w}x{out_h} > max_output_pixels {cfg.max_output_pixels}",
        )

    want_w, want_h = target_size(orig_w, orig_h, cfg)
    untouched = (
        (want_w, want_h) == (orig_w, orig_h)
        and cfg.resize_mode in ("no", "keep_ratio", "keep_ratio_largest")
        or (cfg.resize_mode in ("center_crop", "border") and (orig_w, orig_h) == (cfg.image_size, cfg.image_size))
    )
    hold = budget.hold if budget is not None else _no_budget
    if untouched and orientation in (None, 1) and source_format == _PIL_FORMATS[cfg.encode_format] and img.mode == "RGB":
        # Already what we would produce: ship the original pixels, no
        # re-encode loss, but neither its metadata nor anything appended.
        with hold(orig_w * orig_h):
            shipped = _clean_pass_through(data, source_format, cfg)
        return PreparedImage(shipped, cfg.encode_format, orig_w, orig_h, orig_w, orig_h, digest)

    try:
        if source_format == "JPEG" and cfg.resize_mode != "no":
            # DCT-domain downscaling while decoding: far cheaper than decoding
            # full size and resizing, and never goes below the size we need.
            draft_w, draft_h = (want_h, want_w) if orientation in _SWAPS_AXES else (want_w, want_h)
            img.draft("RGB", (draft_w, draft_h))
    except Exception as exc:  # noqa: BLE001 - a broken header found late
        raise RejectError(Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None
    decoded_w, decoded_h = img.size  # after draft: what load() will allocate
    with hold(decoded_w * decoded_h + out_w * out_h):
        try:
            img.load()
            if orientation not in (None, 1):
                img = ImageOps.exif_transpose(img)  # without an orientation it would only copy
            img = _to_rgb(img)
        except RejectError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many unrelated types for bad input
            raise RejectError(Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None
        img = _resize(img, want_w, want_h, cfg)
        out = io.BytesIO()
        save_args = {"quality": cfg.encode_quality} if cfg.encode_format in ("jpg", "webp") else {}
        img.save(out, format=_PIL_FORMATS[cfg.encode_format], **save_args)
    return PreparedImage(out.getvalue(), cfg.encode_format, img.width, img.height, orig_w, orig_h, digest)


def _clean_pass_through(data: bytes, source_format: str, cfg: ImageConfig) -> bytes:
    """The bytes to ship for an image passed through: cleaned, and decoded in full to prove they are whole.

    ``verify()`` alone checks nothing for JPEG: a JPEG cut to a third of its
    length passed it and was shipped.
    """
    try:
        shipped = strip_container(data, source_format, keep_metadata=cfg.keep_metadata)
    except ValueError as exc:
        raise RejectError(Reason.DECODE_ERROR, str(exc)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(shipped), formats=(source_format,)) as check:
                check.load()
    except Exception as exc:  # noqa: BLE001 - any failure to decode what we would ship
        raise RejectError(Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None
    return shipped


@contextlib.contextmanager
def _no_budget(pixels: int) -> Iterator[None]:
    yield


def _exif_orientation(img: Image.Image) -> int | None:
    if img.format == "PNG" and "exif" not in img.info:
        # Pillow's PNG getexif() decodes the whole image to look for an eXIf
        # chunk after the pixels: outside the pixel budget, and before the
        # output size is checked. An orientation stored there is ignored.
        return None
    try:
        return img.getexif().get(_ORIENTATION_TAG)
    except Exception:  # a broken EXIF block must not cost us the image
        return None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, not the black that a plain convert gives.
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BORDER_COLOR)
        background.paste(rgba, mask=rgba)  # an RGBA mask means its alpha: no extra copy of the band
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
