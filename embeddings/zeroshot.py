"""Zero-shot concept tags: label text embeddings once per worker, then top-k labels per image embedding.

    >>> labels = load_label_set("imagenet")
    >>> classifier = label_embeddings(clip, labels)          # (n_labels, dim), rows L2-normalised
    >>> top_k_concepts(image_emb, classifier, labels.labels, k=3)
    [(['tabby cat', 'tiger cat', 'Egyptian Mau'], [0.29, 0.27, 0.25]), ...]

As CLIP's zero-shot classifier: each label's prompts ("a photo of a {}." ...)
are encoded, L2-normalised, averaged, and the mean normalised again. An
image's tags are the labels of highest cosine with its (normalised) embedding.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from paircurate.concepts.labels import LabelSet, imagenet_templates

_PROMPTS_PER_BATCH = 4096  # texts handed to the model at a time; ClipModel batches them further


def label_embeddings(clip, labels: LabelSet) -> np.ndarray:
    """float32 ``(len(labels), clip.embed_dim)``: the mean of each label's normalised prompt embeddings, normalised."""
    templates = imagenet_templates()
    out = np.zeros((len(labels), clip.embed_dim), dtype=np.float32)
    pending: list[tuple[int, list[str]]] = []
    size = 0

    def flush() -> None:
        texts = [t for _, prompts in pending for t in prompts]
        emb = clip.encode_texts(texts)
        start = 0
        for index, prompts in pending:
            out[index] = emb[start : start + len(prompts)].mean(axis=0)
            start += len(prompts)

    for index in range(len(labels)):
        prompts = labels.prompts_for(index, templates)
        pending.append((index, prompts))
        size += len(prompts)
        if size >= _PROMPTS_PER_BATCH:
            flush()
            pending, size = [], 0
    if pending:
        flush()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


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
