"""CLIP scoring inside the real pipeline: fidelity, filtering, embeddings alignment, semantic dedup."""

from __future__ import annotations

import glob
import io
import json
import os
import random

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from helpers import read_output, read_rows, save_random_tiny
from paircurate.embeddings.clip import TINY_MODEL
from paircurate.filters.similarity import default_threshold
from PIL import Image

from paircurate.cli import main
from paircurate.testing import synthetic

N_PAIRS = 48


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "random_tiny.safetensors"
    save_random_tiny(path, seed=1)
    return str(path)


@pytest.fixture
def pairs_csv(loopback_server, tmp_path):
    """Synthetic pairs: most captions true, every fourth swapped for a wrong one."""
    rng = random.Random(7)
    rows = []
    for i, sample in enumerate(synthetic.make_samples(N_PAIRS, seed=11, size=96)):
        buf = io.BytesIO()
        sample.image.save(buf, format="PNG")
        url = loopback_server.url(loopback_server.add(f"/s/{i}.png", buf.getvalue(), content_type="image/png"))
        swapped = i % 4 == 3
        caption = synthetic.mismatched_caption(rng, sample.scene) if swapped else sample.caption
        rows.append({"url": url, "caption": caption, "truth": "swapped" if swapped else "true"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def run(inputs: str, out, *flags) -> dict:
    argv = ["run", inputs, "-o", str(out), "--image-size", "64", "--no-progress", "--allow-private-network",
            "--save-cols", "truth", "--clip-model", TINY_MODEL, "--device", "cpu", "--clip-batch-size", "16",
            "--no-dedup-perceptual", "--no-dedup-semantic", *flags]
    assert main(argv) == 0
    got = read_output(out)
    return {"kept": got["meta"], "rejects": got["rejects"], "stats": got["stats"]}


def test_pipeline_scores_equal_a_direct_open_clip_computation(pairs_csv, random_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = run(pairs_csv, out, "--clip-pretrained", random_checkpoint, "--clip-threshold", "-1")
    assert len(result["kept"]) == N_PAIRS

    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=random_checkpoint)
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    by_uid = {r["uid"]: r for r in result["kept"]}
    images, captions, ours = [], [], []
    for tar in sorted(glob.glob(os.path.join(out, "*.tar"))):
        for s in wds.WebDataset(tar, shardshuffle=False, empty_check=False):
            images.append(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
            captions.append(s["txt"].decode())
            ours.append(by_uid[s["__key__"]]["clip_score"])
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    direct = (img * txt).sum(-1).numpy()
    np.testing.assert_allclose(np.array(ours), direct, atol=1e-4)

    # Embedding files: float16, one row per Parquet row, in the same order, unit norm.
    for parquet in sorted(glob.glob(os.path.join(out, "0*.parquet"))):
        table = pq.read_table(parquet)
        img_emb = np.load(parquet.replace(".parquet", ".img.npy"))
        txt_emb = np.load(parquet.replace(".parquet", ".txt.npy"))
        assert img_emb.dtype == np.float16 and img_emb.shape[0] == txt_emb.shape[0] == table.num_rows
        recomputed = (img_emb.astype(np.float32) * txt_emb.astype(np.float32)).sum(1)
        np.testing.assert_allclose(recomputed, table.column("clip_score").to_numpy(), atol=2e-3)
        np.testing.assert_allclose(np.linalg.norm(img_emb.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_shipped_model_rejects_swapped_captions_by_threshold(pairs_csv, tmp_path):
    result = run(pairs_csv, tmp_path / "out", "--clip-pretrained", TINY_MODEL)
    scores = {r["truth"]: [] for r in result["kept"] + result["rejects"]}
    for r in result["kept"] + result["rejects"]:
        scores[r["truth"]].append(r["clip_score"])
    true, swapped = np.array(scores["true"]), np.array(scores["swapped"])
    auc = float((true[:, None] > swapped[None, :]).mean())
    assert auc >= 0.9, auc

    threshold = result["stats"]["clip_threshold"]
    assert threshold == pytest.approx(default_threshold(TINY_MODEL, TINY_MODEL))
    assert "published default" in result["stats"]["clip_threshold_source"]
    assert all(r["clip_score"] >= threshold for r in result["kept"])
    low = [r for r in result["rejects"] if r["reason"] == "low_clip_score"]
    assert all(r["clip_score"] < threshold and r["stage"] == "clip" for r in low)
    assert len(result["kept"]) + len(low) == N_PAIRS
    # Most swapped captions go, most true ones stay.
    assert sum(r["truth"] == "swapped" for r in low) >= 0.8 * len(swapped)
    assert sum(r["truth"] == "true" for r in result["kept"]) >= 0.8 * len(true)


def test_top_percent_keeps_the_best_scores_of_the_run(pairs_csv, random_checkpoint, tmp_path):
    result = run(pairs_csv, tmp_path / "out", "--clip-pretrained", random_checkpoint, "--clip-top-percent", "25")
    all_scores = sorted((r["clip_score"] for r in result["kept"] + result["rejects"]), reverse=True)
    cutoff = result["stats"]["clip_top_percent_cutoff"]
    assert result["stats"]["clip_threshold"] == cutoff
    kept_scores = sorted((r["clip_score"] for r in result["kept"]), reverse=True)
    # Exactly the samples at or above the run-wide cutoff are kept, and that is the top quarter.
    assert kept_scores == [s for s in all_scores if s >= cutoff]
    assert abs(len(kept_scores) - N_PAIRS * 0.25) <= 1


def test_semantic_dedup_removes_a_caption_variant_of_the_same_image(loopback_server, random_checkpoint, tmp_path):
    sample = synthetic.make_samples(1, seed=5, size=96)[0]
    other = synthetic.make_samples(1, seed=6, size=96)[0]
    buf = io.BytesIO()
    sample.image.save(buf, format="PNG")
    crop = io.BytesIO()
    sample.image.crop((6, 6, 90, 90)).save(crop, format="PNG")  # a crop pHash would miss
    obuf = io.BytesIO()
    other.image.save(obuf, format="PNG")
    rows = [
        {"url": loopback_server.url(loopback_server.add("/a.png", buf.getvalue(), "image/png")), "caption": sample.caption, "truth": "a"},
        {"url": loopback_server.url(loopback_server.add("/a-crop.png", crop.getvalue(), "image/png")), "caption": sample.caption, "truth": "crop"},
        {"url": loopback_server.url(loopback_server.add("/b.png", obuf.getvalue(), "image/png")), "caption": other.caption, "truth": "b"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["run", str(path), "-o", str(tmp_path / "out"), "--image-size", "64", "--no-progress", "--allow-private-network",
            "--save-cols", "truth", "--clip-model", TINY_MODEL, "--clip-pretrained", TINY_MODEL, "--device", "cpu",
            "--clip-threshold", "-1", "--no-dedup-perceptual", "--semantic-dedup-threshold", "0.9"]
    assert main(argv) == 0
    kept = read_rows(tmp_path / "out", "0*.parquet")
    rejects = read_rows(tmp_path / "out", "rejected/*.parquet")
    assert sorted(r["truth"] for r in kept) in (["a", "b"], ["b", "crop"])
    assert len(rejects) == 1 and rejects[0]["reason"] == "duplicate_semantic"
    keeper = [r for r in kept if r["truth"] != "b"][0]
    assert rejects[0]["duplicate_of"] == keeper["uid"] and rejects[0]["similarity"] >= 0.9
    # The keeper is the better-scoring of the two.
    assert keeper["clip_score"] >= rejects[0]["clip_score"]
