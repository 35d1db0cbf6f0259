"""A budget of decoded pixels shared by the threads of one process.

    budget = PixelBudget(decode_budget_pixels(image_cfg))
    with budget.hold(decoded_pixels + output_pixels):
        ...  # decode, convert, resize, encode

Every image is checked against ``max_pixels`` before a pixel is decoded, but
32 threads each decoding an allowed 9400x9400 RGBA PNG would still need tens
of GB. Holding a share of one budget while decoding makes the worst case a
property of the config, not of the list: a process never has more than
``capacity`` pixels decoded at once, whatever arrives. Images wait for their
turn (they are never refused for it), and the capacity fits the largest
image a config allows, so every allowed image gets its turn.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from paircurate.schemas.config import ImageConfig

__all__ = ["PixelBudget", "decode_budget_pixels", "return_freed_pixels_to_the_system", "BYTES_PER_PIXEL_PEAK"]

# Peak bytes held per charged pixel while one image is prepared. Pillow stores
# RGB, RGBA, LA, CMYK, I and F at 4 bytes a pixel; the worst path (LA -> RGBA
# -> white-backed RGB) holds three such buffers at once. Measured peak RSS per
# decoded pixel of a 4000x4000 image: LA 12.0, P with transparency 9.0,
# RGBA/RGB/CMYK 8.0, I;16 6.0, L 5.0. Output pixels are charged too.
BYTES_PER_PIXEL_PEAK = 12


# glibc's malloc raises its mmap threshold after a large block is freed (up to
# 32 MiB), so Pillow's 16 MiB image blocks come from per-thread heaps, which
# keep freed memory: 8 threads that decode a 9400x9400 PNG one after another
# under the budget still grew to 3.1 GB RSS. A fixed threshold sends every
# large block to mmap and back to the system when it is freed.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def return_freed_pixels_to_the_system() -> bool:
    """Make freed image memory leave the process at once (glibc); False where that is not possible."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False  # not glibc: its allocator has its own policy


def decode_budget_pixels(cfg: ImageConfig) -> int:
    """Pixels a process may hold decoded at once: one largest-allowed image and its largest output."""
    return cfg.max_pixels + cfg.max_output_pixels


class PixelBudget:
    """A counting semaphore in pixels; a request above ``capacity`` is clamped to it (so it runs alone)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a pixel budget needs a capacity >= 1, got {capacity}")
        self.capacity = capacity
        self._free = capacity
        self._cond = threading.Condition()

    @property
    def free(self) -> int:
        with self._cond:
            return self._free

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(max(int(pixels), 0), self.capacity)
        with self._cond:
            while self._free < pixels:
                self._cond.wait()
            self._free -= pixels
        try:
            yield
        finally:
            with self._cond:
                self._free += pixels
                self._cond.notify_all()
