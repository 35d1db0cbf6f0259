"""Keep-or-reject decisions and the closed set of reason codes.

Reasons are short snake_case codes; anything specific to one record (a status
line, a size, an exception message) goes in ``detail``, never in the reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Stage(str, enum.Enum):
    """Pipeline stages, in funnel order."""

    READ = "read"
    CAPTION = "caption"
    DOWNLOAD = "download"
    IMAGE = "image"
    CLIP = "clip"
    DEDUP = "dedup"
    BALANCE = "balance"
    WRITE = "write"  # only internal_error: a sample that could not be written into its shard


class Reason(str, enum.Enum):
    # read
    INVALID_URL = "invalid_url"
    DUPLICATE_ROW = "duplicate_row"
    # caption
    CAPTION_TOO_LONG = "caption_too_long"  # over --max-caption-chars, checked before any other caption work
    CAPTION_TOO_SHORT = "caption_too_short"
    CAPTION_TOO_FEW_WORDS = "caption_too_few_words"
    BOILERPLATE_CAPTION = "boilerplate_caption"  # "image", "IMG_1234.JPG", camera defaults
    NON_ENGLISH_CAPTION = "non_english_caption"
    # download
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    HTTP_404 = "http_404"
    HTTP_4XX = "http_4xx"
    HTTP_429 = "http_429"
    HTTP_5XX = "http_5xx"
    TOO_LARGE = "too_large"
    TRUNCATED = "truncated"
    NOT_AN_IMAGE = "not_an_image"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    REDIRECT_LOOP = "redirect_loop"
    BLOCKED_ADDRESS = "blocked_address"
    OPTED_OUT = "opted_out"
    # download (url/prefix/domain entries, nothing fetched) or image (sha256/md5/phash entries)
    BLOCKLISTED = "blocklisted"
    HOST_UNAVAILABLE = "host_unavailable"  # host_failure_limit attempts in a row got no answer
    # image
    DECODE_ERROR = "decode_error"
    UNSUPPORTED_FORMAT = "unsupported_format"  # not in image.image_formats (EPS, PDF, TIFF, ...)
    OUTPUT_TOO_LARGE = "output_too_large"  # the resize would produce more than image.max_output_pixels
    DECOMPRESSION_BOMB = "decompression_bomb"
    IMAGE_TOO_SMALL = "image_too_small"
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    # clip
    LOW_CLIP_SCORE = "low_clip_score"
    UNSAFE = "unsafe"  # safety head's punsafe above --max-punsafe
    LOW_AESTHETIC = "low_aesthetic"  # aesthetic head's score below --min-aesthetic
    # dedup
    DUPLICATE_EXACT = "duplicate_exact"
    DUPLICATE_PHASH = "duplicate_phash"
    DUPLICATE_SEMANTIC = "duplicate_semantic"
    EVAL_CONTAMINATION = "eval_contamination"
    # balance (MetaCLIP-style, --balance-cap)
    OVER_REPRESENTED = "over_represented"
    NO_ENTRY_MATCH = "no_entry_match"
    # any stage: an exception we did not anticipate, recorded instead of crashing
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Decision:
    """The outcome of one filter on one record."""

    keep: bool
    reason: Reason | None = None
    detail: str = ""

    @classmethod
    def accept(cls) -> "Decision":
        return _KEEP

    @classmethod
    def reject(cls, reason: Reason, detail: str = "") -> "Decision":
        return cls(keep=False, reason=reason, detail=detail)


_KEEP = Decision(keep=True)


class RejectError(Exception):
    """Raised by per-record functions that cannot produce their result.

    Carries the reason code so the stage turns it into a reject row.
    """

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
