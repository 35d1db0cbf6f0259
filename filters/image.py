"""Image checks on the decoded dimensions: size and aspect ratio.

    >>> check_image_shape(120, 90, ImageConfig(min_image_size=200)).reason
    <Reason.IMAGE_TOO_SMALL: 'image_too_small'>
"""

from __future__ import annotations

from paircurate.schemas.config import ImageConfig
from paircurate.schemas.outcomes import Decision, Reason


def check_image_shape(width: int, height: int, cfg: ImageConfig) -> Decision:
    """Size and aspect filters on the original (oriented) dimensions."""
    if width <= 0 or height <= 0:
        return Decision.reject(Reason.DECODE_ERROR, f"image has no pixels: {width}x{height}")
    if cfg.min_image_size and min(width, height) < cfg.min_image_size:
        return Decision.reject(Reason.IMAGE_TOO_SMALL, f"{width}x{height}, smaller side < {cfg.min_image_size}")
    if cfg.max_aspect_ratio:
        ratio = max(width, height) / min(width, height)
        if ratio > cfg.max_aspect_ratio:
            return Decision.reject(Reason.BAD_ASPECT_RATIO, f"{width}x{height}, aspect {ratio:.2f} > {cfg.max_aspect_ratio}")
    return Decision.accept()
