"""Lossless clean-up of an image that is shipped as downloaded: no metadata, nothing after its end.

    clean = strip_container(jpeg_bytes, "JPEG", keep_metadata=False)

An image passes through unchanged (no re-encode, no generation loss) when it
already has the output's format and size; it must not carry its EXIF (GPS
position, camera serial), XMP, IPTC or comments into the dataset, nor
whatever was appended after its last byte (another file, a payload).
Re-encoding would strip them too, but a JPEG re-encoded loses quality, so
this works on the container instead: JPEG marker segments, PNG chunks, WebP
RIFF chunks, all with fixed, documented layouts. What the decoder needs
(tables, frames, scans, palette, transparency) and what colour depends on
(ICC profile, sRGB/gAMA/cHRM, the JFIF and Adobe segments) is kept; the rest
is dropped, and the image ends at its end marker. ``keep_metadata`` keeps
every segment and still cuts the bytes after the end: they are no part of
the image.

Raises ``ValueError`` when the structure is broken (no end marker, a
segment running past the data): such a file is not passed through.
"""

from __future__ import annotations

__all__ = ["strip_container"]

# JPEG APPn segments that change how pixels look; every other APPn and COM is metadata.
_JPEG_KEEP_APP = {
    0xE0: (b"JFIF\0", b"JFXX\0"),  # pixel density, colour space hint
    0xE2: (b"ICC_PROFILE\0",),
    0xEE: (b"Adobe",),  # says whether YCbCr/YCCK was used: decoders need it for colour
}
# PNG ancillary chunks that affect colour or transparency; critical chunks are always kept.
_PNG_KEEP = {b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"cICP", b"bKGD"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# WebP chunks that make up the picture; EXIF, XMP and unknown chunks are dropped.
_WEBP_KEEP = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"}
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def strip_container(data: bytes, pil_format: str, *, keep_metadata: bool = False) -> bytes:
    """``data`` without metadata segments (unless ``keep_metadata``) and without bytes after its end."""
    if pil_format == "JPEG":
        return _strip_jpeg(data, keep_metadata)
    if pil_format == "PNG":
        return _strip_png(data, keep_metadata)
    if pil_format == "WEBP":
        return _strip_webp(data, keep_metadata)
    raise ValueError(f"no container cleaner for {pil_format}")


def _strip_jpeg(data: bytes, keep_metadata: bool) -> bytes:
    n = len(data)
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG: no start-of-image marker")
    out = [b"\xff\xd8"]
    i = 2
    while True:
        if i >= n or data[i] != 0xFF:
            raise ValueError(f"JPEG: expected a marker at byte {i} of {n}")
        while i < n and data[i] == 0xFF:  # fill bytes may precede a marker
            i += 1
        if i >= n:
            raise ValueError("JPEG: ends inside a marker (no end-of-image)")
        marker = data[i]
        i += 1
        if marker == 0xD9:  # EOI: the image ends here, whatever follows
            out.append(b"\xff\xd9")
            return b"".join(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            out.append(bytes((0xFF, marker)))
            continue
        if i + 2 > n:
            raise ValueError("JPEG: truncated segment header")
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2 or i + length > n:
            raise ValueError(f"JPEG: segment 0x{marker:02X} of {length} bytes runs past the end ({n} bytes)")
        payload = data[i + 2 : i + length]
        segment = data[i - 2 : i + length]
        i += length
        if keep_metadata or _keep_jpeg_segment(marker, payload):
            out.append(segment)
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            j = i
            while True:
                j = data.find(b"\xff", j)
                if j < 0 or j + 1 >= n:
                    raise ValueError("JPEG: scan data runs to the end of the file (truncated, no end-of-image)")
                following = data[j + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed 0xFF, restart marker
                    j += 2
                elif following == 0xFF:  # fill byte before a marker
                    j += 1
                else:
                    break
            out.append(data[i:j])
            i = j


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    if marker == 0xFE:  # COM
        return False
    if 0xE0 <= marker <= 0xEF:
        return payload.startswith(_JPEG_KEEP_APP.get(marker, ()))
    return True  # tables, frame and scan headers, restart interval: the image itself


def _strip_png(data: bytes, keep_metadata: bool) -> bytes:
    n = len(data)
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG: no signature")
    out = [_PNG_SIGNATURE]
    i = len(_PNG_SIGNATURE)
    while True:
        if i + 12 > n:
            raise ValueError("PNG: truncated (no IEND chunk)")
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > n:
            raise ValueError(f"PNG: chunk {kind!r} of {length} bytes runs past the end ({n} bytes)")
        critical = not kind[0] & 0x20  # lower-case first letter: ancillary
        if keep_metadata or critical or kind in _PNG_KEEP:
            out.append(data[i:end])
        i = end
        if kind == b"IEND":
            return b"".join(out)


def _strip_webp(data: bytes, keep_metadata: bool) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP: no RIFF/WEBP header")
    end = 8 + int.from_bytes(data[4:8], "little")
    if end > len(data):
        raise ValueError(f"WebP: RIFF declares {end} bytes, only {len(data)} present (truncated)")
    chunks = []
    dropped = 0
    i = 12
    while i < end:
        if i + 8 > end:
            raise ValueError("WebP: truncated chunk header")
        kind = data[i : i + 4]
        size = int.from_bytes(data[i + 4 : i + 8], "little")
        stop = i + 8 + size + (size & 1)  # chunks are padded to even sizes
        if stop > end:
            raise ValueError(f"WebP: chunk {kind!r} of {size} bytes runs past the RIFF end")
        if keep_metadata or kind in _WEBP_KEEP:
            chunks.append(bytearray(data[i:stop]))
        else:
            dropped |= {b"EXIF": _VP8X_EXIF, b"XMP ": _VP8X_XMP}.get(kind, 0)
        i = stop
    for chunk in chunks:
        if chunk[:4] == b"VP8X" and len(chunk) > 8:
            chunk[8] &= ~dropped & 0xFF  # the extended header must not announce chunks that are gone
    body = b"".join(bytes(c) for c in chunks)
    return b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WEBP" + body
