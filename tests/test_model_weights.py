"""Weights on first use from a hub, offline runs from the cache, fail-fast loading on the driver.

The hub is a real HTTP server on 127.0.0.1 (paircurate.testing.hub.FakeHub)
serving the bundled model in open_clip's hub layout; ``HF_ENDPOINT`` points the
real huggingface_hub client at it and a fresh ``HF_HOME`` holds the cache.
"""

from __future__ import annotations

import glob
import io
import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import webdataset as wds
from helpers import read_rows
from paircurate.embeddings.clip import (
    TINY_MODEL,
    ModelLoadError,
    load_clip,
    resolve_weights,
)
from PIL import Image

from paircurate.testing import synthetic
from paircurate.testing.hub import FakeHub, tiny_model_repo_files

REPO = "paircurate/tiny-hub"
N_PAIRS = 24


@pytest.fixture
def pairs_jsonl(loopback_server, tmp_path):
    rows = []
    for i, sample in enumerate(synthetic.make_samples(N_PAIRS, seed=21, size=96)):
        buf = io.BytesIO()
        sample.image.save(buf, format="PNG")
        url = loopback_server.url(loopback_server.add(f"/w/{i}.png", buf.getvalue(), content_type="image/png"))
        rows.append({"url": url, "caption": sample.caption})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _env(tmp_path, hub_endpoint: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=hub_endpoint, TORCH_HOME=str(tmp_path / "torch-home"))
    env.update(extra)
    return env


def _cli(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paircurate.cli", *argv], env=env, capture_output=True, text=True, timeout=300)


def _run_argv(inputs: str, out) -> list[str]:
    return ["run", inputs, "-o", str(out), "--image-size", "64", "--no-progress", "--no-report", "--allow-private-network",
            "--clip-model", TINY_MODEL, "--clip-pretrained", f"hf-hub:{REPO}", "--clip-threshold", "-1", "--device", "cpu",
            "--no-dedup-perceptual", "--no-dedup-semantic", "--no-dedup-exact"]


def _scores(out) -> dict[str, float]:
    return {r["uid"]: r["clip_score"] for r in read_rows(out, "0*.parquet")}


def test_first_run_downloads_then_offline_run_scores_identically(pairs_jsonl, tmp_path):
    hub = FakeHub(REPO, tiny_model_repo_files()).start()
    try:
        env = _env(tmp_path, hub.endpoint, HF_TOKEN="hf_test_token")
        first = _cli(env, *_run_argv(pairs_jsonl, tmp_path / "first"))
        assert first.returncode == 0, first.stderr[-3000:]
        gets = [path for method, path in hub.requests() if method == "GET" and path.startswith(f"/{REPO}/")]
        assert gets == [f"/{REPO}/resolve/main/open_clip_config.json", f"/{REPO}/resolve/main/open_clip_model.safetensors"]
        # HF_TOKEN is sent as huggingface_hub sends it.
        assert set(hub.authorizations()) == {"Bearer hf_test_token"}
    finally:
        hub.stop()
    cached = glob.glob(str(tmp_path / "hf-home" / "hub" / "models--paircurate--tiny-hub" / "snapshots" / "*" / "open_clip_model.safetensors"))
    assert len(cached) == 1  # the standard HF cache layout, under HF_HOME

    first_scores = _scores(tmp_path / "first")
    assert len(first_scores) == N_PAIRS and all(v is not None for v in first_scores.values())

    second = _cli(_env(tmp_path, hub.endpoint), *_run_argv(pairs_jsonl, tmp_path / "second"), "--offline")
    assert second.returncode == 0, second.stderr[-3000:]
    assert _scores(tmp_path / "second") == first_scores

    # The hub served the bundled weights: scores equal the bundled model's on the same stored images.
    clip = load_clip(TINY_MODEL, TINY_MODEL, device="cpu")
    images, captions, uids = [], [], []
    for tar in sorted(glob.glob(str(tmp_path / "first" / "*.tar"))):
        for s in wds.WebDataset(tar, shardshuffle=False, empty_check=False):
            images.append(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
            captions.append(s["txt"].decode())
            uids.append(s["__key__"])
    np.testing.assert_allclose([first_scores[u] for u in uids], clip.score(images, captions), atol=1e-5)


def test_unreachable_hub_without_cache_fails_fast_in_one_line(pairs_jsonl, tmp_path):
    hub = FakeHub(REPO, tiny_model_repo_files()).start()
    hub.stop()  # nothing listens on its port any more
    result = _cli(_env(tmp_path, hub.endpoint), *_run_argv(pairs_jsonl, tmp_path / "out"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("paircurate: error:")]
    assert len(error_lines) == 1
    line = error_lines[0]
    assert f"hf-hub:{REPO}" in line and "cannot reach" in line and hub.endpoint in line
    assert not os.path.exists(tmp_path / "out" / "00000.parquet")  # the pipeline never started


def test_offline_without_cache_names_model_and_weights(pairs_jsonl, tmp_path):
    with FakeHub(REPO, tiny_model_repo_files()) as hub:
        result = _cli(_env(tmp_path, hub.endpoint, HF_HUB_OFFLINE="1"), *_run_argv(pairs_jsonl, tmp_path / "out"))
        assert hub.requests() == []  # HF_HUB_OFFLINE=1: not even a probe
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("paircurate: error:")]
    assert f"hf-hub:{REPO}" in line and "offline" in line


@pytest.fixture(autouse=True)
def _no_offline_from_outside(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_offline_with_a_cache_sends_no_request(tmp_path, monkeypatch):
    with FakeHub(REPO, tiny_model_repo_files()) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        online = resolve_weights(TINY_MODEL, f"hf-hub:{REPO}", cache_dir=str(tmp_path), timeout=5)
        assert online.downloaded and online.embed_dim == 128
        seen = len(hub.requests())
        again = resolve_weights(TINY_MODEL, f"hf-hub:{REPO}", cache_dir=str(tmp_path), offline=True)
        warm = resolve_weights(TINY_MODEL, f"hf-hub:{REPO}", cache_dir=str(tmp_path))  # online, cached: no request either
        assert len(hub.requests()) == seen
    assert not again.downloaded and not warm.downloaded
    assert again.open_clip_name == online.open_clip_name


def test_a_built_in_tag_is_fetched_from_the_hub_with_open_clip_file_names(tmp_path, monkeypatch):
    # ViT-B-32/laion2b_s34b_b79k lives at laion/CLIP-ViT-B-32-laion2B-s34B-b79K; serve a stand-in with the .bin name
    # only, so the safetensors name is asked first (404) and the .bin one next, as open_clip does.
    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    with FakeHub(repo, {"open_clip_pytorch_model.bin": b"not really weights" * 1000}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        source = resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path), timeout=5)
        assert source.checkpoint.endswith("open_clip_pytorch_model.bin") and source.downloaded
        assert source.embed_dim == 512
        heads = [p for m, p in hub.requests() if m == "HEAD"]
        assert heads[0].endswith("/open_clip_model.safetensors") and heads[1].endswith("/open_clip_pytorch_model.bin")


def test_unknown_repository_is_one_line_naming_it(tmp_path, monkeypatch):
    with FakeHub("someone/else", tiny_model_repo_files()) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(ModelLoadError) as err:
            resolve_weights(TINY_MODEL, f"hf-hub:{REPO}", cache_dir=str(tmp_path), timeout=5)
    assert f"repository {REPO} not found" in str(err.value) and "HF_TOKEN" in str(err.value)


def test_a_hub_that_never_answers_costs_one_probe_not_retries(tmp_path, monkeypatch):
    # Accepts connections and never replies: huggingface_hub's own retries would take ~23 s per file here.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with pytest.raises(ModelLoadError) as err:
            resolve_weights(TINY_MODEL, f"hf-hub:{REPO}", cache_dir=str(tmp_path), timeout=0.5)
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert "cannot reach" in str(err.value)
    assert len(accepted) == 1  # one request, no retry


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_on_the_driver(pairs_jsonl, tmp_path):
    result = _cli(_env(tmp_path, "http://127.0.0.1:9"), "run", pairs_jsonl, "-o", str(tmp_path / "out"), "--clip-model",
                  TINY_MODEL, "--clip-pretrained", TINY_MODEL, "--device", "cuda", "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("paircurate: error:")]
    assert "CUDA is not available" in line and "--device cpu" in line


def test_unknown_model_name_fails_on_the_driver(pairs_jsonl, tmp_path):
    result = _cli(_env(tmp_path, "http://127.0.0.1:9"), "run", pairs_jsonl, "-o", str(tmp_path / "out"),
                  "--clip-model", "ViT-Nope-99", "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("paircurate: error:")]
    assert "ViT-Nope-99" in line
