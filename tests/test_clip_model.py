import json
import socket

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import fake_hf_snapshot, save_random_tiny
from paircurate.embeddings import clip as clip_mod
from paircurate.embeddings.clip import (
    TINY_CONFIG_PATH,
    TINY_MODEL,
    ModelLoadError,
    load_clip,
)
from paircurate.filters.similarity import default_threshold
from PIL import Image
from safetensors.torch import save_file

from paircurate.testing import synthetic


@pytest.fixture(scope="module")
def random_tiny(tmp_path_factory):
    """A randomly initialised paircurate-tiny saved as a checkpoint file, plus its weights."""
    path = tmp_path_factory.mktemp("tiny") / "random_tiny.safetensors"
    return path, save_random_tiny(path, seed=0)


@pytest.fixture
def no_network(monkeypatch):
    """Record, and refuse, any outgoing connection."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def _images_and_texts(n=12, seed=3):
    samples = synthetic.make_samples(n, seed, size=64)
    images = [s.image for s in samples]
    # Sizes and modes the pipeline really meets: larger photos, greyscale.
    images[0] = images[0].resize((200, 120))
    images[1] = images[1].convert("L")
    return images, [s.caption for s in samples]


def _roc_auc(pos, neg):
    # Fraction of (positive, negative) pairs ranked correctly, ties half.
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_score_matches_a_direct_open_clip_computation(random_tiny):
    path, _ = random_tiny
    images, texts = _images_and_texts()
    ours = load_clip(TINY_MODEL, str(path), device="cpu").score(images, texts)

    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(path))
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    direct = (img * txt).sum(-1).numpy()

    assert ours.dtype == np.float32 and ours.shape == (len(images),)
    np.testing.assert_allclose(ours, direct, atol=1e-4)


def test_loader_really_loads_the_file(random_tiny):
    # A loader that silently built a fresh random model would still pass the
    # comparison above if both sides did it; compare the weights themselves.
    path, state = random_tiny
    loaded = load_clip(TINY_MODEL, str(path), device="cpu").model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_embeddings_are_unit_float32_rows(random_tiny):
    path, _ = random_tiny
    clip = load_clip(TINY_MODEL, str(path), device="cpu", batch_size=5)  # forces several chunks
    images, texts = _images_and_texts()
    emb_i, emb_t = clip.encode_images(images), clip.encode_texts(texts)
    assert emb_i.shape == emb_t.shape == (len(images), 128)
    assert emb_i.dtype == emb_t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb_i, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb_t, axis=1), 1.0, atol=1e-5)
    assert clip.encode_images([]).shape == (0, 128)
    with pytest.raises(ValueError, match="one caption per image"):
        clip.score(images, texts[:-1])


def test_shipped_model_ranks_true_captions_above_swapped_ones():
    clip = load_clip(TINY_MODEL, TINY_MODEL, device="cpu")
    # Unseen seed, and the size the demo serves.
    samples = synthetic.make_samples(200, seed=4242, size=128)
    images = [s.image for s in samples]
    true = clip.score(images, [s.caption for s in samples])
    swapped = clip.score(images, synthetic.swapped_captions(samples))
    assert _roc_auc(true, swapped) >= 0.95
    threshold = default_threshold(TINY_MODEL, TINY_MODEL)
    assert (true >= threshold).mean() >= 0.9
    assert (swapped >= threshold).mean() <= 0.1


def test_missing_checkpoint_says_how_to_provide_weights(tmp_path, no_network):
    with pytest.raises(ModelLoadError) as err:
        load_clip(TINY_MODEL, str(tmp_path / "missing.safetensors"), device="cpu")
    message = str(err.value)
    assert "missing.safetensors" in message
    assert "local-dir:" in message and "Hugging Face cache" in message and "checkpoint file" in message
    assert not no_network


def test_unknown_tag_lists_known_tags_and_how_to_provide_weights(no_network):
    with pytest.raises(ModelLoadError) as err:
        load_clip("ViT-B-32", "no_such_tag", device="cpu")
    message = str(err.value)
    assert "no_such_tag" in message and "laion2b_s34b_b79k" in message
    assert "local-dir:" in message
    assert not no_network


def test_unknown_model_name_is_a_load_error():
    with pytest.raises(ModelLoadError, match="unknown CLIP model name"):
        load_clip("ViT-Nope-99", None, device="cpu")


def test_uncached_tag_offline_fails_fast_without_touching_the_network(tmp_path, no_network):
    with pytest.raises(ModelLoadError) as err:
        load_clip("ViT-B-32", "laion2b_s34b_b79k", device="cpu", cache_dir=str(tmp_path))  # allow_download=False
    message = str(err.value)
    assert "not in the local cache" in message and "offline" in message.splitlines()[0]
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message
    assert not no_network


def test_cached_tag_loads_offline(random_tiny, tmp_path, monkeypatch, no_network):
    path, state = random_tiny
    fake_hf_snapshot(tmp_path, "paircurate/tiny-test", {
        "open_clip_model.safetensors": lambda p: save_file(state, str(p)),
    })
    real = open_clip.get_pretrained_cfg

    def with_test_tag(model, tag):
        if (model, tag) == (TINY_MODEL, "cached_test"):
            return {"hf_hub": "paircurate/tiny-test/", "interpolation": "bilinear"}
        return real(model, tag)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", with_test_tag)
    clip = load_clip(TINY_MODEL, "cached_test", device="cpu", cache_dir=str(tmp_path))
    assert all(torch.equal(clip.model.state_dict()[k], state[k]) for k in state)
    # The tag's own preprocessing travels with it even though open_clip sees a file path.
    assert "bilinear" in repr(clip.preprocess)
    assert not no_network


def _write_local_dir(folder, state, with_weights=True):
    folder.mkdir()
    config = {
        "model_cfg": json.loads(TINY_CONFIG_PATH.read_text()),
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if with_weights:
        save_file(state, str(folder / "open_clip_model.safetensors"))


def test_local_dir_loading_matches_file_loading(random_tiny, tmp_path, no_network):
    path, state = random_tiny
    _write_local_dir(tmp_path / "tiny", state)
    images, texts = _images_and_texts()
    from_dir = load_clip(TINY_MODEL, f"local-dir:{tmp_path / 'tiny'}", device="cpu").score(images, texts)
    from_file = load_clip(TINY_MODEL, str(path), device="cpu").score(images, texts)
    np.testing.assert_allclose(from_dir, from_file, atol=1e-6)
    # A bare "local-dir:" model name works too (no separate pretrained value).
    alone = load_clip(f"local-dir:{tmp_path / 'tiny'}", None, device="cpu").score(images, texts)
    np.testing.assert_allclose(alone, from_file, atol=1e-6)
    assert not no_network


def test_hf_hub_name_uses_the_cached_snapshot(random_tiny, tmp_path, no_network):
    _, state = random_tiny
    snapshot = fake_hf_snapshot(tmp_path, "paircurate/tiny-hub", {})
    (snapshot / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": json.loads(TINY_CONFIG_PATH.read_text())}))
    save_file(state, str(snapshot / "open_clip_model.safetensors"))
    clip = load_clip(TINY_MODEL, "hf-hub:paircurate/tiny-hub", device="cpu", cache_dir=str(tmp_path))
    assert all(torch.equal(clip.model.state_dict()[k], state[k]) for k in state)
    assert not no_network


def test_local_dir_without_weights_is_an_error_not_a_random_model(random_tiny, tmp_path):
    _, state = random_tiny
    _write_local_dir(tmp_path / "empty", state, with_weights=False)
    with pytest.raises(ModelLoadError, match="no weights file"):
        load_clip(TINY_MODEL, f"local-dir:{tmp_path / 'empty'}", device="cpu")
    with pytest.raises(ModelLoadError, match="folder not found"):
        load_clip(TINY_MODEL, f"local-dir:{tmp_path / 'nowhere'}", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_is_refused(random_tiny):
    # A silent CPU fallback turns a GPU job into one 50x slower; the user asked for CUDA.
    path, _ = random_tiny
    with pytest.raises(ModelLoadError, match="CUDA is not available.*--device cpu"):
        load_clip(TINY_MODEL, str(path), device="cuda", precision="fp16")
    with pytest.raises(ModelLoadError):
        clip_mod.check_device("cuda")
    assert clip_mod.check_device("auto") == "cpu"


def test_bad_precision_is_rejected(random_tiny):
    path, _ = random_tiny
    with pytest.raises(ValueError, match="precision"):
        load_clip(TINY_MODEL, str(path), device="cpu", precision="fp8")


@pytest.mark.parametrize(
    ("model", "pretrained", "expected"),
    [
        ("ViT-B-32", "openai", 0.28),
        ("ViT-B/32", "openai", 0.28),
        ("ViT-B-32-quickgelu", "openai", 0.28),
        ("ViT-L-14", "openai", 0.243),
        ("ViT-B-32", "laion2b_s34b_b79k", None),  # other weights: no borrowed threshold
        ("ViT-B-32", None, None),
    ],
)
def test_default_thresholds(model, pretrained, expected):
    assert default_threshold(model, pretrained) == expected


def test_tiny_model_has_a_measured_threshold():
    assert 0.0 < default_threshold(TINY_MODEL, TINY_MODEL) < 1.0


def test_random_init_model_builds_without_weights():
    clip = load_clip(TINY_MODEL, None, device="cpu")
    assert clip.encode_texts(["a red circle"]).shape == (1, 128)


def test_precision_auto_on_cpu_is_fp32(random_tiny):
    path, _ = random_tiny
    clip = load_clip(TINY_MODEL, str(path), device="cpu")
    assert clip.autocast_dtype is None and clip.device == torch.device("cpu")


def test_image_of_any_mode_is_accepted(random_tiny):
    path, _ = random_tiny
    clip = load_clip(TINY_MODEL, str(path), device="cpu")
    rgba = Image.new("RGBA", (80, 50), (255, 0, 0, 128))
    palette = Image.new("P", (30, 30))
    assert clip.encode_images([rgba, palette]).shape == (2, 128)


def test_openai_tags_keep_their_quickgelu_and_preprocessing():
    # A tag resolved to a cached file reaches open_clip as a path, so the
    # loader must carry the tag's settings itself.
    kwargs = clip_mod._tag_create_kwargs("ViT-B-32", open_clip.get_pretrained_cfg("ViT-B-32", "openai"))
    assert kwargs["force_quick_gelu"] is True
    assert kwargs["image_interpolation"] == "bicubic" and kwargs["image_resize_mode"] == "shortest"
    assert "force_quick_gelu" not in clip_mod._tag_create_kwargs(
        "ViT-B-32-quickgelu", open_clip.get_pretrained_cfg("ViT-B-32-quickgelu", "openai"))
