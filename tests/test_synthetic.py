import random

import pytest

from paircurate.testing import synthetic
from paircurate.testing.synthetic import (
    CAPTION_TEMPLATES,
    COLORS,
    make_pair,
    make_pairs,
    make_samples,
)


def _raw(pairs):
    return [(image.tobytes(), caption) for image, caption in pairs]


@pytest.mark.parametrize("size", [64, 256])
def test_same_seed_gives_identical_bytes(size):
    assert _raw(make_pairs(12, seed=7, size=size)) == _raw(make_pairs(12, seed=7, size=size))


def test_different_seeds_differ():
    assert _raw(make_pairs(12, seed=7)) != _raw(make_pairs(12, seed=8))


def test_make_pairs_is_make_pair_on_a_seeded_rng():
    rng = random.Random(3)
    one_by_one = [make_pair(rng, 64) for _ in range(5)]
    assert _raw(one_by_one) == _raw(make_pairs(5, seed=3, size=64))


def test_seed_describes_the_same_scene_at_every_size():
    small = make_samples(10, seed=5, size=64)
    large = make_samples(10, seed=5, size=256)
    assert [s.caption for s in small] == [s.caption for s in large]
    assert all(s.image.size == (64, 64) and s.image.mode == "RGB" for s in small)
    assert all(s.image.size == (256, 256) for s in large)


def test_captions_mention_the_attributes_their_template_names():
    samples = make_samples(300, seed=11)
    assert {s.template for s in samples} == set(range(len(CAPTION_TEMPLATES)))
    for s in samples:
        words = s.caption.replace(",", " ").split()
        assert s.scene.color in words and s.scene.shape in words, s.caption
        template = CAPTION_TEMPLATES[s.template]
        if "background" in template:
            assert f"{s.scene.background} background" in s.caption, s.caption
        if "size}" in template:
            assert s.scene.size in words, s.caption
        if "{where}" in template:
            assert s.scene.position in words, s.caption
        assert " a orange" not in s.caption and " an red" not in s.caption


def test_image_shows_the_colour_the_caption_names():
    # A large shape always covers the image centre; the fill there is the named
    # colour plus at most the generator's +-14 jitter per channel.
    samples = [s for s in make_samples(200, seed=2, size=96) if s.scene.size == "large"]
    assert len(samples) > 50
    for s in samples:
        centre = s.image.getpixel((48, 48))
        assert all(abs(a - b) <= 16 for a, b in zip(centre, COLORS[s.scene.color])), (s.caption, centre)


def test_swapped_captions_always_contradict_the_image():
    samples = make_samples(200, seed=9)
    # Every caption names its scene's shape and colour, so a caption fixes both.
    named = {s.caption: (s.scene.shape, s.scene.color) for s in samples}
    swapped = synthetic.swapped_captions(samples)
    assert len(swapped) == len(samples)
    for sample, wrong in zip(samples, swapped):
        assert named[wrong] != (sample.scene.shape, sample.scene.color), (sample.caption, wrong)


def test_mismatched_caption_never_fits():
    rng = random.Random(1)
    for sample in make_samples(100, seed=4):
        wrong = synthetic.mismatched_caption(rng, sample.scene)
        assert wrong not in {synthetic.describe(sample.scene, t) for t in range(len(CAPTION_TEMPLATES))}


@pytest.mark.parametrize("size", [8, 4096])
def test_size_out_of_range_is_rejected(size):
    with pytest.raises(ValueError, match="size"):
        make_pair(random.Random(0), size)
