"""Aesthetic and safety heads: published files read exactly, fetched on first use, checked against the CLIP model, run in the pipeline."""

from __future__ import annotations

import glob
import io
import json
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from helpers import read_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paircurate.embeddings.clip import TINY_MODEL, ModelLoadError, load_clip
from paircurate.embeddings.heads import (
    AESTHETIC,
    HEADS_ENDPOINT_ENV,
    SAFETY,
    TINY_AESTHETIC_PATH,
    TINY_SAFETY_PATH,
    load_head,
    load_head_for_run,
    resolve_head,
)
from paircurate.embeddings.train_heads import UNSAFE_COLOR
from torch import nn

from paircurate.cli import main
from paircurate.testing import synthetic
from paircurate.testing.hub import FakeHub


def _shared_models() -> Path | None:
    """The published heads kept with their licences next to the checkouts (see its README.md)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (os.environ.get("PAIRCURATE_SHARED_MODELS"), here.parent / "shared" / "models",
                      here.parent.parent / "shared" / "models"):
        if candidate and (Path(candidate) / "laion-aesthetic-v1" / "sa_0_4_vit_b_32_linear.pth").is_file():
            return Path(candidate)
    return None


SHARED = _shared_models()
needs_shared = pytest.mark.skipif(SHARED is None, reason="the published heads folder (shared/models) is not on this machine")


@pytest.fixture(autouse=True)
def _fresh_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(HEADS_ENDPOINT_ENV, raising=False)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@needs_shared
@pytest.mark.parametrize(("name", "dim"), [("vit_b_32", 512), ("vit_l_14", 768)])
def test_published_linear_heads_equal_a_direct_torch_computation(name, dim):
    path = SHARED / "laion-aesthetic-v1" / f"sa_0_4_{name}_linear.pth"
    examples = np.stack([np.load(SHARED / "laion-aesthetic-v1" / f"{name}_embeddings" / f"rating{i}.npy").reshape(-1)
                         for i in range(10)]).astype(np.float32)
    head = load_head(AESTHETIC, path)
    assert head.layout == "linear" and head.in_dim == dim

    direct = nn.Linear(dim, 1)
    direct.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    with torch.no_grad():
        expected = direct(torch.from_numpy(_unit(examples))).squeeze(-1).numpy()
    ours = head(examples)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    # The published example vectors go from rating 0 to 9: the head ranks them that way, mostly.
    assert np.corrcoef(np.arange(10), ours)[0, 1] > 0.8


@needs_shared
def test_published_improved_mlp_equals_a_direct_torch_computation():
    path = SHARED / "improved-aesthetic-predictor" / "sac+logos+ava1-l14-linearMSE.pth"
    head = load_head(AESTHETIC, path)
    assert head.layout == "mlp" and head.in_dim == 768
    # The predictor exactly as its repository defines it (simple_inference.py's MLP.layers).
    direct = nn.Sequential(nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                           nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1)).eval()
    state = torch.load(path, map_location="cpu", weights_only=True)
    direct.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
    embeddings = np.stack([np.load(SHARED / "laion-aesthetic-v1" / "vit_l_14_embeddings" / f"rating{i}.npy").reshape(-1)
                           for i in range(10)]).astype(np.float32)
    with torch.no_grad():
        expected = direct(torch.from_numpy(_unit(embeddings))).squeeze(-1).numpy()
    np.testing.assert_allclose(head(embeddings), expected, rtol=1e-5, atol=1e-5)


@needs_shared
def test_auto_fetches_the_published_head_once_then_reads_the_cache(tmp_path, monkeypatch):
    data = (SHARED / "laion-aesthetic-v1" / "sa_0_4_vit_b_32_linear.pth").read_bytes()
    published_path = "/LAION-AI/aesthetic-predictor/main/sa_0_4_vit_b_32_linear.pth"  # raw.githubusercontent.com's path
    with FakeHub("unused/repo", {}, static={published_path: data}) as mirror:
        monkeypatch.setenv(HEADS_ENDPOINT_ENV, mirror.endpoint)
        first = resolve_head(AESTHETIC, "auto", "ViT-B-32", "openai")
        second = resolve_head(AESTHETIC, "auto", "ViT-B/32", "openai", offline=True)
        assert mirror.requests() == [("GET", published_path)]
    assert first == second and Path(first).read_bytes() == data
    assert Path(first).parent == tmp_path / "torch-home" / "hub" / "checkpoints"
    head = load_head_for_run(AESTHETIC, "auto", "ViT-B-32", "openai", embed_dim=512)
    assert head.published is not None and head.published.model == "ViT-B-32"


@needs_shared
def test_a_published_head_that_does_not_match_its_checksum_is_refused(monkeypatch):
    wrong = TINY_AESTHETIC_PATH.read_bytes()
    with FakeHub("unused/repo", {}, static={"/LAION-AI/aesthetic-predictor/main/sa_0_4_vit_b_16_linear.pth": wrong}) as mirror:
        monkeypatch.setenv(HEADS_ENDPOINT_ENV, mirror.endpoint)
        with pytest.raises(ModelLoadError, match="sha256 differs"):
            resolve_head(AESTHETIC, "auto", "ViT-B-16", "openai")


def test_zipped_safety_head_is_unpacked_from_its_published_archive(monkeypatch):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("clip_autokeras_binary_nsfw.pth", TINY_SAFETY_PATH.read_bytes())
    path = "/LAION-AI/CLIP-based-NSFW-Detector/files/10250461/clip_autokeras_binary_nsfw.zip"
    with FakeHub("unused/repo", {}, static={path: archive.getvalue()}) as mirror:
        monkeypatch.setenv(HEADS_ENDPOINT_ENV, mirror.endpoint)
        local = resolve_head(SAFETY, "auto", "ViT-L-14", "openai")
    assert Path(local).name == "clip_autokeras_binary_nsfw.pth"
    assert Path(local).read_bytes() == TINY_SAFETY_PATH.read_bytes()
    assert load_head(SAFETY, local).layout == "nsfw"


def test_unreachable_head_url_fails_fast_and_offline_never_fetches(monkeypatch):
    mirror = FakeHub("unused/repo", {}).start()
    mirror.stop()
    url = mirror.url("/heads/aesthetic.pth")
    with pytest.raises(ModelLoadError, match="cannot fetch"):
        resolve_head(AESTHETIC, url, TINY_MODEL, TINY_MODEL, timeout=2)
    with FakeHub("unused/repo", {}, static={"/heads/aesthetic.pth": TINY_AESTHETIC_PATH.read_bytes()}) as live:
        with pytest.raises(ModelLoadError, match="offline"):
            resolve_head(AESTHETIC, live.url("/heads/aesthetic.pth"), TINY_MODEL, TINY_MODEL, offline=True)
        assert live.requests() == []


@needs_shared
def test_heads_are_checked_against_the_clip_model():
    b32 = str(SHARED / "laion-aesthetic-v1" / "sa_0_4_vit_b_32_linear.pth")
    with pytest.raises(ModelLoadError, match="takes 512-d embeddings but CLIP paircurate-tiny"):
        load_head_for_run(AESTHETIC, b32, TINY_MODEL, TINY_MODEL, embed_dim=128)
    # Same size, other weights: the file is recognised as the ViT-B/32 openai head and refused.
    with pytest.raises(ModelLoadError, match="published for CLIP ViT-B-32/openai"):
        load_head_for_run(AESTHETIC, b32, "ViT-B-16", "openai", embed_dim=512)
    with pytest.raises(ModelLoadError, match="published for CLIP ViT-B-32/openai"):
        load_head_for_run(AESTHETIC, b32, "ViT-B-32", "laion2b_s34b_b79k", embed_dim=512)


def test_auto_without_a_published_head_and_wrong_layouts_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no published safety head for CLIP ViT-B-32/laion2b_s34b_b79k"):
        resolve_head(SAFETY, "auto", "ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(ModelLoadError, match="wrong kind for the safety head"):
        load_head(SAFETY, TINY_AESTHETIC_PATH)
    torch.save({"fc.weight": torch.zeros(1, 4)}, tmp_path / "odd.pth")
    with pytest.raises(ModelLoadError, match="unknown layout"):
        load_head(AESTHETIC, tmp_path / "odd.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match="not a torch state dict"):
        load_head(AESTHETIC, tmp_path / "junk.pth")
    with pytest.raises(ModelLoadError, match="file not found"):
        resolve_head(AESTHETIC, str(tmp_path / "missing.pth"), TINY_MODEL, TINY_MODEL)


def test_demo_heads_recognise_their_concepts_on_unseen_images():
    clip = load_clip(TINY_MODEL, TINY_MODEL, device="cpu")
    samples = synthetic.make_samples(200, seed=9090, size=224)
    emb = clip.encode_images([s.image for s in samples])
    aesthetic = load_head_for_run(AESTHETIC, "auto", TINY_MODEL, TINY_MODEL, embed_dim=clip.embed_dim)(emb)
    punsafe = load_head_for_run(SAFETY, "auto", TINY_MODEL, TINY_MODEL, embed_dim=clip.embed_dim)(emb)
    large = np.array([s.scene.size == "large" for s in samples])
    unsafe = np.array([s.scene.color == UNSAFE_COLOR for s in samples])
    assert aesthetic.dtype == punsafe.dtype == np.float32
    assert ((aesthetic >= 5.0) == large).mean() >= 0.9
    assert ((punsafe > 0.5) == unsafe).mean() >= 0.95
    assert ((punsafe >= 0) & (punsafe <= 1)).all()


def test_pipeline_adds_head_scores_and_rejects_unsafe_and_low_aesthetic(loopback_server, tmp_path):
    rng = random.Random(3)
    rows = []
    for i, sample in enumerate(synthetic.make_samples(40, seed=31, size=160)):
        buf = io.BytesIO()
        sample.image.save(buf, format="PNG")
        url = loopback_server.url(loopback_server.add(f"/h/{i}.png", buf.getvalue(), content_type="image/png"))
        rows.append({"url": url, "caption": sample.caption, "size": sample.scene.size, "color": sample.scene.color})
    rng.shuffle(rows)
    inputs = tmp_path / "pairs.jsonl"
    inputs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # The safety head by URL (fetched into TORCH_HOME), the aesthetic head by auto: both through the same loader.
    safety_url = loopback_server.url(loopback_server.add("/heads/nsfw.pth", TINY_SAFETY_PATH.read_bytes(),
                                                         content_type="application/octet-stream"))
    out = tmp_path / "out"
    rc = main(["run", str(inputs), "-o", str(out), "--image-size", "96", "--no-progress", "--allow-private-network",
               "--save-cols", "size,color", "--clip-model", TINY_MODEL, "--clip-pretrained", TINY_MODEL,
               "--device", "cpu", "--clip-threshold", "-1", "--no-dedup-perceptual", "--no-dedup-semantic",
               "--aesthetic-head", "auto", "--min-aesthetic", "5", "--safety-head", safety_url, "--max-punsafe", "0.5"])
    assert rc == 0

    kept, rejects = read_rows(out, "0*.parquet"), read_rows(out, "rejected/*.parquet")
    schema = pq.read_schema(sorted(glob.glob(str(out / "0*.parquet")))[0])
    assert str(schema.field("aesthetic_score").type) == "float" and str(schema.field("punsafe").type) == "float"
    assert kept and all(r["punsafe"] <= 0.5 and r["aesthetic_score"] >= 5 for r in kept)
    unsafe = [r for r in rejects if r["reason"] == "unsafe"]
    low = [r for r in rejects if r["reason"] == "low_aesthetic"]
    assert unsafe and all(r["punsafe"] > 0.5 for r in unsafe)
    assert low and all(r["aesthetic_score"] < 5 and r["punsafe"] <= 0.5 for r in low)
    # The demo concepts: red shapes are the unsafe ones, small shapes the plain ones (a few mistakes allowed).
    assert sum(r["color"] == UNSAFE_COLOR for r in unsafe) >= 0.9 * len(unsafe)
    assert sum(r["size"] == "small" for r in low) >= 0.9 * len(low)
    assert len(kept) + len(unsafe) + len(low) == 40

    # Scores equal the heads applied to the stored embeddings (float16 on disk), and the tar json carries them.
    head = load_head(AESTHETIC, TINY_AESTHETIC_PATH)
    by_uid = {r["uid"]: r for r in kept}
    for tar in sorted(glob.glob(str(out / "0*.tar"))):
        shard = tar[: -len(".tar")]
        emb = np.load(f"{shard}.img.npy").astype(np.float32)
        uids = pq.read_table(f"{shard}.parquet", columns=["uid"]).column("uid").to_pylist()
        np.testing.assert_allclose(head(emb), [by_uid[u]["aesthetic_score"] for u in uids], atol=0.02)
        for s in wds.WebDataset(tar, shardshuffle=False, empty_check=False):
            meta = json.loads(s["json"])
            assert meta["punsafe"] == pytest.approx(by_uid[s["__key__"]]["punsafe"], abs=1e-6)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["min_aesthetic"] == 5 and stats["max_punsafe"] == 0.5
    assert stats["safety_head"]["layout"] == "nsfw" and stats["aesthetic_head"]["source"] == str(TINY_AESTHETIC_PATH)

    report = (out / "report.html").read_text()
    assert "<h2>Aesthetic scores</h2>" in report and "<h2>Safety (punsafe)</h2>" in report
    assert f'id="unsafe-count">{len(unsafe)}<' in report
    for r in unsafe:  # never shown: no URL or caption of an unsafe reject
        assert r["url"] not in report
    assert any(r["url"] in report for r in low)  # low-aesthetic rejects are shown as examples


def test_mismatched_head_is_refused_before_the_run(loopback_server, tmp_path, capsys):
    inputs = tmp_path / "pairs.jsonl"
    inputs.write_text(json.dumps({"url": loopback_server.url("/x.png"), "caption": "a red circle"}) + "\n")
    rc = main(["run", str(inputs), "-o", str(tmp_path / "out"), "--no-progress", "--clip-model", TINY_MODEL,
               "--clip-pretrained", TINY_MODEL, "--device", "cpu", "--safety-head", "auto",
               "--aesthetic-head", str(TINY_SAFETY_PATH)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wrong kind for the aesthetic head" in err[0] and str(TINY_SAFETY_PATH) in err[0]
    assert not (tmp_path / "out" / "00000.parquet").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_any_bytes_as_a_head_file_is_a_load_error_or_a_head(tmp_path, data):
    path = tmp_path / "head.pth"
    path.write_bytes(data)
    try:
        head = load_head(AESTHETIC, path)
    except ModelLoadError:
        return
    assert head.layout in ("linear", "mlp")  # only if the bytes really were a head


_KEYS = st.sampled_from(["weight", "bias", "layers.0.weight", "layers.7.bias", "norm.mean", "norm.variance",
                         "linear_1.weight", "linear_4.weight", "fc.weight"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=st.dictionaries(_KEYS, st.lists(st.integers(0, 5), min_size=0, max_size=3), max_size=6))
def test_state_dicts_of_any_keys_and_shapes_load_or_are_refused_in_one_error(tmp_path, shapes):
    path = tmp_path / "head.pth"
    torch.save({k: torch.zeros(tuple(dims)) for k, dims in shapes.items()}, path)
    for kind in (AESTHETIC, SAFETY):
        try:
            head = load_head(kind, path)
        except ModelLoadError as exc:
            assert "\n" not in str(exc)
            continue
        assert head(np.ones((2, head.in_dim), dtype=np.float32)).shape == (2,)
