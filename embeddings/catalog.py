"""What `paircurate models` lists: every open_clip architecture + pretrained tag, and what this machine has.

    >>> rows = list_models(only_cached=True)
    >>> rows[0].model, rows[0].pretrained, rows[0].embed_dim, rows[0].threshold

Nothing here touches the network: "cached" means found in the Hugging Face
cache (``HF_HOME`` / ``HF_HUB_CACHE``) or open_clip's own cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip

from paircurate.embeddings.clip import TINY_MODEL, is_cached
from paircurate.filters.similarity import default_threshold, threshold_source
from paircurate.embeddings.heads import AESTHETIC, SAFETY, published_head


@dataclass(frozen=True)
class ModelRow:
    model: str
    pretrained: str
    embed_dim: int
    cached: bool
    threshold: float | None
    threshold_source: str | None
    auto_heads: tuple[str, ...]  # head kinds that `--*-head auto` has for these weights


def list_models(model_filter: str = "", only_cached: bool = False, cache_dir: str | None = None) -> list[ModelRow]:
    rows = []
    for model, tag in [(TINY_MODEL, TINY_MODEL), *open_clip.list_pretrained()]:
        if model_filter and model_filter.lower() not in model.lower():
            continue
        cached = is_cached(model, tag, cache_dir)
        if only_cached and not cached:
            continue
        config = open_clip.get_model_config(model) or {}
        rows.append(ModelRow(
            model=model,
            pretrained=tag,
            embed_dim=int(config.get("embed_dim", 0)),
            cached=cached,
            threshold=default_threshold(model, tag),
            threshold_source=threshold_source(model, tag),
            auto_heads=tuple(k for k in (AESTHETIC, SAFETY) if published_head(k, model, tag)),
        ))
    return rows


def format_models(rows: list[ModelRow]) -> str:
    header = ("model", "pretrained", "dim", "cached", "threshold", "auto heads")
    table = [header] + [
        (r.model, r.pretrained, str(r.embed_dim), "yes" if r.cached else "-",
         f"{r.threshold:g}" if r.threshold is not None else "-", ",".join(r.auto_heads) or "-")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    sources = {(r.model, r.pretrained, r.threshold): r.threshold_source for r in rows if r.threshold_source}
    if sources:
        lines += ["", "threshold sources (image-caption cosine; --clip-threshold overrides):"]
        lines += [f"  {m} / {t} = {v:g}: {src}" for (m, t, v), src in sources.items()]
    models = len({r.model for r in rows})
    lines += ["", f"{len(rows)} weights of {models} architectures; other architectures: open_clip.list_models()"]
    return "\n".join(lines)
