"""Zero-shot concept tags: label text embeddings once per worker, then top-k labels per image embedding.

    >>> labels = load_label_set("imagenet")
    >>> classifier = label_embeddings(clip, labels)          # (n_labels, dim), rows L2-normalised
    >>> top_k_concepts(image_emb, classifier, labels.labels, k=3)
    [(['tabby cat', 'tiger cat', 'Egyptian Mau'], [0.29, 0.27, 0.25]), ...]

As CLIP's zero-shot classifier: each label's prompts ("a photo of a {}." ...)
are encoded, L2-normalised, averaged, and the mean normalised again. An
image's tags are the labels of highest cosine with its (normalised) embedding.

The label matrix is cached on disk, keyed by the model, its weights file(s),
the device and precision and every prompt text: ``imagenet``'s 80,000 prompts
take hours through ViT-B-32's text tower on a CPU, so each machine pays that
once, not every worker of every run. The cache folder is
``$PAIRCURATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/paircurate``, else
``~/.cache/paircurate`` (``label-embeddings/<sha256>.npy``); a cache that
cannot be read or written only costs the recomputation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from paircurate.concepts.labels import LabelSet, imagenet_templates

log = logging.getLogger(__name__)

_PROMPTS_PER_BATCH = 4096  # texts handed to the model at a time; ClipModel batches them further
_CACHE_FORMAT = 1  # bump when what is cached, or how it is computed, changes


def cache_dir() -> Path:
    """Where paircurate keeps what it derives from models (label embeddings)."""
    explicit = os.environ.get("PAIRCURATE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "paircurate"


def label_embeddings(clip, labels: LabelSet) -> np.ndarray:
    """float32 ``(len(labels), clip.embed_dim)``: the mean of each label's normalised prompt embeddings, normalised.

    Read from the cache when these weights have embedded these exact prompts before.
    """
    templates = imagenet_templates()
    prompts = [labels.prompts_for(index, templates) for index in range(len(labels))]
    path = _cache_path(clip, prompts)
    cached = _read_cached(path, (len(labels), clip.embed_dim))
    if cached is not None:
        log.info("label embeddings for %d labels read from %s", len(labels), path)
        return cached
    matrix = _embed_prompts(clip, prompts)
    _write_cached(path, matrix)
    return matrix


def _embed_prompts(clip, prompts: list[list[str]]) -> np.ndarray:
    out = np.zeros((len(prompts), clip.embed_dim), dtype=np.float32)
    pending: list[tuple[int, list[str]]] = []
    size = 0

    def flush() -> None:
        emb = clip.encode_texts([text for _, texts in pending for text in texts])
        start = 0
        for index, texts in pending:
            out[index] = emb[start : start + len(texts)].mean(axis=0)
            start += len(texts)

    for index, label_prompts in enumerate(prompts):
        pending.append((index, label_prompts))
        size += len(label_prompts)
        if size >= _PROMPTS_PER_BATCH:
            flush()
            pending, size = [], 0
    if pending:
        flush()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def _cache_path(clip, prompts: list[list[str]]) -> Path | None:
    """The cache file for these weights and prompts; None for weights that name nothing (random init)."""
    if not clip.weights_id:
        return None
    key = {
        "format": _CACHE_FORMAT,
        "model": clip.model_name,
        "weights": clip.weights_id,
        "device": clip.device.type,
        "autocast": str(clip.autocast_dtype),
        "prompts": prompts,
    }
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")).hexdigest()
    return cache_dir() / "label-embeddings" / f"{digest}.npy"


def _read_cached(path: Path | None, shape: tuple[int, int]) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        log.warning("ignoring unreadable label-embedding cache %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    if matrix.shape != shape or matrix.dtype != np.float32 or not np.isfinite(matrix).all():
        log.warning("ignoring label-embedding cache %s: %s %s, expected %s float32", path, matrix.shape, matrix.dtype, shape)
        return None
    return matrix


def _write_cached(path: Path | None, matrix: np.ndarray) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed: a worker reading it never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, matrix, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.warning("could not cache label embeddings in %s (%s: %s); they are recomputed next time", path, type(exc).__name__, exc)


def top_k_concepts(image_emb: np.ndarray, classifier: np.ndarray, labels: Sequence[str], k: int) -> list[tuple[list[str], list[float]]]:
    """Per image row: its ``k`` best labels (best first) and their cosines (float32 values as Python floats)."""
    if len(image_emb) == 0:
        return []
    sims = np.asarray(image_emb, dtype=np.float32) @ classifier.T
    k = min(k, sims.shape[1])
    # argpartition picks the k best in O(n_labels); only those k are sorted (by score, then label order).
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(np.arange(sims.shape[1]), (len(sims), 1))
    out = []
    for row, cand in zip(sims, part):
        order = sorted(cand.tolist(), key=lambda i: (-row[i], i))
        out.append(([labels[i] for i in order], [float(row[i]) for i in order]))
    return out
