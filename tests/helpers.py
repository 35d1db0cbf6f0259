"""What the tests share: generated images, reading a finished output folder back, a random small CLIP."""

from __future__ import annotations

import glob
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image, ImageDraw, ImageEnhance

# --- images ------------------------------------------------------------------------------------


def solid_jpeg(size: tuple[int, int] = (64, 48), rgb: tuple[int, int, int] = (10, 120, 200), quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def blocky_jpeg(w: int, h: int, seed: int) -> bytes:
    """A blocky random picture: distinct seeds are never perceptual duplicates."""
    rng = np.random.default_rng(seed)
    blocks = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    buf = io.BytesIO()
    blocks.resize((w, h), Image.Resampling.NEAREST).save(buf, format="JPEG", quality=90)
    return buf.getvalue()



def photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A gradient sky, a few filled shapes and sensor-like noise: distinct seeds look distinct."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * x / w + np.sin(angle) * y / h
    t = (t - t.min()) / (t.max() - t.min())
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = Image.fromarray((c0 + (c1 - c0) * t[..., None]).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = rng.uniform(-0.2, 1, 2) * (w, h)
        sw, sh = rng.uniform(0.1, 0.6, 2) * (w, h)
        shape = draw.ellipse if rng.integers(2) else draw.rectangle
        shape([x0, y0, x0 + sw, y0 + sh], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def encode(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def half_size(img: Image.Image) -> Image.Image:
    return img.resize((img.width // 2, img.height // 2), Image.BILINEAR)


def brighter(img: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(1.05)


def crop_border(img: Image.Image, fraction: float) -> Image.Image:
    dx, dy = int(img.width * fraction), int(img.height * fraction)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


# --- output folders ----------------------------------------------------------------------------


def read_rows(out, pattern: str) -> list[dict]:
    """Every row of the Parquet files matching ``pattern`` under ``out``, in shard order."""
    return [r for p in sorted(glob.glob(os.path.join(str(out), pattern))) for r in pq.read_table(p).to_pylist()]


def ledger(out) -> dict[int, dict]:
    """source_row -> the row's kept Parquet or reject row; asserts every row appears once."""
    rows: dict[int, dict] = {}
    for pattern in ("[0-9]*.parquet", "rejected/[0-9]*.parquet"):
        for row in read_rows(out, pattern):
            assert row["source_row"] not in rows, f"row {row['source_row']} appears twice"
            rows[row["source_row"]] = row
    return rows


def read_output(out) -> dict:
    """A finished output folder: tar samples by key, kept metadata, rejects and stats.json."""
    samples = {}
    for tar in sorted(glob.glob(os.path.join(str(out), "*.tar"))):
        for s in wds.WebDataset(tar, shardshuffle=False, empty_check=False):
            samples[s["__key__"]] = s
    with open(os.path.join(str(out), "stats.json")) as fh:
        stats = json.load(fh)
    return {"samples": samples, "meta": read_rows(out, "0*.parquet"), "rejects": read_rows(out, "rejected/*.parquet"), "stats": stats}


# --- models ------------------------------------------------------------------------------------


def save_random_tiny(path, seed: int) -> dict:
    """A randomly initialised paircurate-tiny saved as a safetensors checkpoint; returns its state dict."""
    import open_clip
    import torch
    from paircurate.embeddings.clip import (
        TINY_MODEL,  # registers the small model's config
    )
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in open_clip.create_model(TINY_MODEL).state_dict().items()}
    save_file(state, str(path))
    return state


# --- processes and caches ------------------------------------------------------------------------


def kill_when(proc, ready, timeout: float, poll: float = 0.01) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; fails if it finishes first or ``timeout`` passes."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "run finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def fake_hf_snapshot(cache_dir, repo_id: str, files: dict, commit: str = "0" * 40):
    """The cache layout huggingface_hub writes (refs/main names the snapshot folder); ``files``: name -> writer(path)."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, write in files.items():
        write(snapshot / name)
    return snapshot
