"""Deterministic synthetic image-caption pairs: coloured shapes on coloured backgrounds.

    >>> pairs = make_pairs(4, seed=0, size=128)
    >>> image, caption = pairs[0]          # PIL RGB image, e.g. "a small red star on the left"

Used to train and test the tiny CLIP model and to feed the end-to-end demo,
so nothing here may depend on the network, torch or Beam. The same seed gives
byte-identical images: every random draw comes from the ``random.Random``
passed in, and all geometry is drawn as fractions of the side before the
pixel size is known, so a seed describes the same scene at every ``size``.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")

# Well separated hues, so a 64 px render still says which colour it is.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (245, 210, 35),
    "orange": (255, 127, 14),
    "purple": (140, 70, 185),
    "white": (242, 242, 242),
    "black": (25, 25, 25),
}

# Pairs whose contrast is too low for a shape to stand out from its background.
_CLASHING = {frozenset(p) for p in (("red", "orange"), ("orange", "yellow"), ("yellow", "white"), ("blue", "purple"))}

SIZES = ("small", "large")
POSITIONS = ("left", "middle", "right")

_POSITION_PHRASES = {"left": "on the left", "middle": "in the middle", "right": "on the right"}

# {a_color} etc. carry their own article ("a red", "an orange").
CAPTION_TEMPLATES = (
    "{a_color} {shape} on {a_background} background",
    "a photo of {a_size} {color} {shape}",
    "{a_size} {color} {shape} on {a_background} background",
    "{a_color} {shape} {where}",
    "{color} {shape}, {background} background",
    "a drawing of {a_color} {shape}",
    "a picture of {a_size} {color} {shape} {where}, {background} background",
)

MIN_SIZE = 16
MAX_SIZE = 1024


@dataclass(frozen=True)
class Scene:
    """What an image shows; every caption is a view of these attributes."""

    shape: str
    color: str
    background: str
    size: str
    position: str


@dataclass(frozen=True)
class SyntheticPair:
    image: Image.Image
    caption: str
    scene: Scene
    template: int


def make_pair(rng: random.Random, size: int = 64) -> tuple[Image.Image, str]:
    """One ``(image, caption)`` drawn from ``rng``; ``size`` is the square side in pixels."""
    pair = make_sample(rng, size)
    return pair.image, pair.caption


def make_pairs(n: int, seed: int, size: int = 64) -> list[tuple[Image.Image, str]]:
    """``n`` pairs; the same ``(n, seed, size)`` always gives identical pixels and captions."""
    rng = random.Random(seed)
    return [make_pair(rng, size) for _ in range(n)]


def make_samples(n: int, seed: int, size: int = 64) -> list[SyntheticPair]:
    """Like :func:`make_pairs` (same images and captions) but keeping the scene attributes."""
    rng = random.Random(seed)
    return [make_sample(rng, size) for _ in range(n)]


def make_sample(rng: random.Random, size: int = 64) -> SyntheticPair:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}] pixels, got {size}")
    scene = random_scene(rng)
    template = rng.randrange(len(CAPTION_TEMPLATES))
    caption = describe(scene, template)
    image = render(scene, rng, size)
    return SyntheticPair(image=image, caption=caption, scene=scene, template=template)


def random_scene(rng: random.Random) -> Scene:
    shape = rng.choice(SHAPES)
    color = rng.choice(sorted(COLORS))
    background = rng.choice([b for b in sorted(COLORS) if b != color and frozenset((b, color)) not in _CLASHING])
    size = rng.choice(SIZES)
    # A large shape fills the frame; only a small one has room to sit off-centre.
    position = rng.choice(POSITIONS) if size == "small" else "middle"
    return Scene(shape=shape, color=color, background=background, size=size, position=position)


def describe(scene: Scene, template: int = 0) -> str:
    """The caption for ``scene`` using ``CAPTION_TEMPLATES[template]``."""
    return CAPTION_TEMPLATES[template].format(
        shape=scene.shape,
        color=scene.color,
        background=scene.background,
        a_color=_with_article(scene.color),
        a_background=_with_article(scene.background),
        a_size=_with_article(scene.size),
        where=_POSITION_PHRASES[scene.position],
    )


def mismatched_caption(rng: random.Random, scene: Scene) -> str:
    """A fluent caption that contradicts ``scene`` in its shape or its colour (or both)."""
    wrong_shape = rng.choice([s for s in SHAPES if s != scene.shape])
    wrong_color = rng.choice([c for c in sorted(COLORS) if c not in (scene.color, scene.background)])
    which = rng.randrange(3)
    wrong = Scene(
        shape=wrong_shape if which in (0, 2) else scene.shape,
        color=wrong_color if which in (1, 2) else scene.color,
        background=scene.background,
        size=scene.size,
        position=scene.position,
    )
    return describe(wrong, rng.randrange(len(CAPTION_TEMPLATES)))


def swapped_captions(samples: list[SyntheticPair]) -> list[str]:
    """For each sample, the caption of the next sample (cyclically) that shows another shape or colour.

    Every template names the shape and the colour, so the result is a real
    caption of another image that is guaranteed to be wrong for this one; a
    plain rotation would now and then hand an image a caption that fits it.
    """
    n = len(samples)
    out = []
    for i, sample in enumerate(samples):
        for step in range(1, n):
            other = samples[(i + step) % n]
            if (other.scene.shape, other.scene.color) != (sample.scene.shape, sample.scene.color):
                out.append(other.caption)
                break
        else:
            raise ValueError("swapped_captions needs at least two samples that differ in shape or colour")
    return out


def render(scene: Scene, rng: random.Random, size: int = 64) -> Image.Image:
    """Draw ``scene`` as an RGB ``size`` x ``size`` image.

    The shape is drawn supersampled and downscaled, because Pillow's polygon
    fill has no anti-aliasing and jagged 64 px edges look nothing like the
    resized photos the model will later see.
    """
    # Random draws first, all size-independent (see the module docstring).
    bg_rgb = _jitter(rng, COLORS[scene.background], 14)
    fg_rgb = _jitter(rng, COLORS[scene.color], 14)
    shade = rng.uniform(0.06, 0.16)
    diameter = rng.uniform(0.26, 0.36) if scene.size == "small" else rng.uniform(0.56, 0.72)
    anchor = {"left": 0.27, "middle": 0.5, "right": 0.73}[scene.position]
    cx = anchor + rng.uniform(-0.04, 0.04)
    cy = 0.5 + rng.uniform(-0.12, 0.12) if scene.size == "small" else 0.5 + rng.uniform(-0.04, 0.04)
    angle = rng.uniform(-0.25, 0.25)

    scale = 4 if size <= 128 else 2
    side = size * scale
    r = diameter * side / 2
    x, y = cx * side, cy * side
    width = max(1, round(side * 0.012))
    # Only the shape needs supersampling; drawing it as two 1-byte masks and
    # box-reducing them is several times cheaper than an RGB canvas + LANCZOS.
    fill_mask = Image.new("L", (side, side), 0)
    edge_mask = Image.new("L", (side, side), 0)
    if scene.shape == "circle":
        box = (x - r, y - r, x + r, y + r)
        ImageDraw.Draw(fill_mask).ellipse(box, fill=255)
        ImageDraw.Draw(edge_mask).ellipse(box, outline=255, width=width)
    else:
        points = _outline_points(scene.shape, x, y, r, angle)
        ImageDraw.Draw(fill_mask).polygon(points, fill=255)
        ImageDraw.Draw(edge_mask).polygon(points, outline=255, width=width)
    image = _background(size, bg_rgb, shade)
    image.paste(fg_rgb, (0, 0, size, size), fill_mask.reduce(scale))
    image.paste(tuple(int(c * 0.7) for c in fg_rgb), (0, 0, size, size), edge_mask.reduce(scale))
    return image


def _background(size: int, rgb: tuple[int, int, int], shade: float) -> Image.Image:
    # A soft top-to-bottom light falloff; flat fills look synthetic at 256 px.
    top = Image.new("RGB", (size, size), tuple(min(255, int(c * (1 + shade) + 8)) for c in rgb))
    bottom = Image.new("RGB", (size, size), tuple(int(c * (1 - shade)) for c in rgb))
    return Image.composite(bottom, top, _gradient(size))


@functools.lru_cache(maxsize=8)
def _gradient(size: int) -> Image.Image:
    return Image.linear_gradient("L").resize((size, size), Image.Resampling.BILINEAR)


def _outline_points(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        polar = [(r * 0.85 * math.sqrt(2), math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif shape == "diamond":
        polar = [(r, k * math.pi / 2) for k in range(4)]
    elif shape == "triangle":
        # Centroid-centred; pushed down so the visual centre sits at (x, y).
        y += r * 0.15
        polar = [(r * 1.1, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif shape == "star":
        polar = [(r if k % 2 == 0 else r * 0.42, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    elif shape == "cross":
        a, b = r * 0.32, r
        corners = [(a, b), (a, a), (b, a), (b, -a), (a, -a), (a, -b), (-a, -b), (-a, -a), (-b, -a), (-b, a), (-a, a), (-a, b)]
        polar = [(math.hypot(px, py), math.atan2(py, px)) for px, py in corners]
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return [(x + rad * math.cos(t + angle), y + rad * math.sin(t + angle)) for rad, t in polar]


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word
