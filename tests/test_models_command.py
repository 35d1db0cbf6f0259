"""`paircurate models`: architectures, tags, embedding sizes, what is cached, thresholds with sources."""

from __future__ import annotations

from helpers import fake_hf_snapshot
from paircurate.embeddings.catalog import format_models, list_models
from paircurate.embeddings.clip import TINY_MODEL

from paircurate.cli import main


def test_rows_carry_size_cache_state_threshold_and_heads(tmp_path):
    fake_hf_snapshot(tmp_path, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", {"open_clip_model.safetensors": lambda p: p.write_bytes(b"weights")}, commit="1" * 40)
    rows = {(r.model, r.pretrained): r for r in list_models(cache_dir=str(tmp_path))}
    assert rows[("ViT-B-32", "laion2b_s34b_b79k")].cached
    assert not rows[("ViT-B-32", "openai")].cached
    assert rows[("ViT-L-14", "openai")].embed_dim == 768
    openai_b32 = rows[("ViT-B-32", "openai")]
    assert openai_b32.threshold == 0.28 and "LAION-5B" in openai_b32.threshold_source
    assert openai_b32.auto_heads == ("aesthetic",)
    assert rows[("ViT-L-14", "openai")].auto_heads == ("aesthetic", "safety")
    assert rows[("ViT-B-32", "laion2b_s34b_b79k")].threshold is None
    tiny = rows[(TINY_MODEL, TINY_MODEL)]
    assert tiny.cached and tiny.embed_dim == 128 and tiny.auto_heads == ("aesthetic", "safety")

    cached_only = list_models(only_cached=True, cache_dir=str(tmp_path))
    assert {(r.model, r.pretrained) for r in cached_only} == {(TINY_MODEL, TINY_MODEL), ("ViT-B-32", "laion2b_s34b_b79k")}
    text = format_models(cached_only)
    assert "ViT-B-32" in text and "laion2b_s34b_b79k" in text and "2 weights of 2 architectures" in text


def test_cli_lists_filtered_models_with_sources(capsys):
    assert main(["models", "--model", "ViT-L-14"]) == 0
    out = capsys.readouterr().out
    assert "ViT-L-14" in out and "ViT-B-32 " not in out
    assert "DataComp" in out and "cached = found in" in out
