"""Concepts and balancing: matcher throughput, a skewed pool before/after balancing, concept tagging cost.

    python bench/balance.py matching --entries 500000 --captions 100000
    python bench/balance.py skew --samples 1000000 --entries 20000 --cap 200
    python bench/balance.py tagging --images 1000
    python bench/balance.py accuracy --images 1000

matching: captions/s of ``EntryMatcher.match`` (the call the balance stage
makes per sample) with N pseudo-word entries, substring and whole-word, plus
the one-time automaton build. Captions are 8-16 words, a third of them
entries, the rest filler words.

skew: a Zipf-distributed pool (each sample names 1..N entries, entry k drawn
with weight 1/k^1.1) balanced with the same functions the stage uses
(``decide`` with the run's counts); prints the before/after summaries that
stats.json carries.

tagging: what ``--concepts imagenet`` adds to the CLIP stage on CPU: the
label embedding (998 labels x 80 prompts through the text tower) the first
time on a machine and then from the label-embedding cache (a fresh cache
folder per benchmark run), and the per-image cost of the top-k over 998 labels, next to the
image encoding that scoring already pays. The tiny model runs with its
bundled weights, ViT-B-32 with random weights (speed does not depend on the
values); ViT-B-32's label embedding is timed on ``--vit-labels`` labels and
scaled to 998.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import tempfile
import time
from collections import Counter


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))


def bench_matching(args) -> None:
    from paircurate.concepts.matcher import EntryMatcher

    rng = random.Random(0)
    unique: dict[str, None] = {}
    while len(unique) < args.entries:  # one- and two-word entries, as WordNet + Wikipedia titles
        unique[_word(rng) if rng.random() < 0.8 else f"{_word(rng)} {_word(rng)}"] = None
    entries = list(unique)
    filler = [_word(rng) for _ in range(5000)]
    captions = []
    for _ in range(args.captions):
        words = [rng.choice(entries) if rng.random() < 1 / 3 else rng.choice(filler) for _ in range(rng.randint(8, 16))]
        captions.append(" ".join(words).capitalize())
    mean_chars = sum(map(len, captions)) / len(captions)
    print(f"{len(entries)} entries, {len(captions)} captions of {mean_chars:.0f} characters on average")
    print("| mode | build s | captions/s | mean entries matched |")
    print("|---|---:|---:|---:|")
    for whole in (False, True):
        start = time.perf_counter()
        matcher = EntryMatcher(entries, whole_words=whole)
        build = time.perf_counter() - start
        start = time.perf_counter()
        found = sum(len(matcher.match(c)) for c in captions)
        seconds = time.perf_counter() - start
        print(f"| {'whole words' if whole else 'substring (MetaCLIP)'} | {build:.1f} | {len(captions) / seconds:,.0f} | {found / len(captions):.1f} |")


def bench_skew(args) -> None:
    from paircurate.concepts.balancing import decide, summarize

    rng = random.Random(1)
    names = [f"entry{k:05d}" for k in range(args.entries)]
    cum, total = [], 0.0
    for k in range(args.entries):
        total += 1 / (k + 1) ** 1.1
        cum.append(total)
    samples = []
    for i in range(args.samples):
        k = rng.randint(1, args.max_entries_per_sample)
        samples.append((f"uid{i}", sorted(set(rng.choices(names, cum_weights=cum, k=k)))))
    counts: Counter = Counter(e for _, entries in samples for e in entries)
    kept: Counter = Counter()
    n_kept = 0
    start = time.perf_counter()
    for uid, entries in samples:
        if decide(uid, entries, counts, args.cap).keep:
            n_kept += 1
            kept.update(entries)
    seconds = time.perf_counter() - start
    before, after = summarize(counts.items(), args.cap, top=5), summarize(kept.items(), args.cap, top=5)
    print(f"{args.samples} samples naming 1-{args.max_entries_per_sample} of {args.entries} Zipf(1.1) entries, cap T = {args.cap}: kept {n_kept} "
          f"({100 * n_kept / args.samples:.1f} %); decisions at {args.samples / seconds:,.0f} samples/s")
    print("| | before | after |")
    print("|---|---:|---:|")
    for key in ("entries", "matches", "entropy_bits", "flatness", "entries_at_cap", "entries_over_cap"):
        print(f"| {key} | {before[key]} | {after[key]} |")
    print("| top entries | " + ", ".join(f"{e} {c}" for e, c in before["top"]) + " | " + ", ".join(f"{e} {c}" for e, c in after["top"]) + " |")


def bench_tagging(args) -> None:
    import numpy as np
    import torch

    from paircurate.testing import synthetic
    from paircurate.concepts.labels import LabelSet, load_label_set
    from paircurate.embeddings.clip import TINY_MODEL, load_clip
    from paircurate.embeddings.zeroshot import label_embeddings, top_k_concepts

    imagenet = load_label_set("imagenet")
    images = [image for image, _ in synthetic.make_pairs(args.images, seed=4, size=256)]
    print(f"CPU, torch threads {torch.get_num_threads()}; {args.images} images of 256 px; --concepts imagenet ({len(imagenet)} labels x 80 prompts)")
    os.environ["PAIRCURATE_CACHE_DIR"] = tempfile.mkdtemp(prefix="paircurate-bench-cache-")  # a cold cache
    print("| model | label embedding, first time on a machine (s) | the same from the cache (s) | image encoding per 1,000 images (s, paid by scoring) | top-3 tags per 1,000 images (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, pretrained in ((TINY_MODEL, TINY_MODEL), ("ViT-B-32", None)):
        clip = load_clip(name, pretrained, device="cpu", batch_size=128)
        subset = imagenet if name == TINY_MODEL else LabelSet("imagenet", imagenet.labels[: args.vit_labels], imagenet.prompts[: args.vit_labels])
        start = time.perf_counter()
        classifier = label_embeddings(clip, subset)
        setup = (time.perf_counter() - start) * len(imagenet) / len(subset)
        cached = "- (random weights are never cached)"
        if clip.weights_id:
            start = time.perf_counter()
            label_embeddings(clip, subset)
            cached = f"{time.perf_counter() - start:.2f}"
        if len(subset) < len(imagenet):  # the top-k needs the full-size matrix; its values do not matter for speed
            classifier = np.resize(classifier, (len(imagenet), classifier.shape[1]))
        start = time.perf_counter()
        emb = clip.encode_images(images)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.repeats):
            top_k_concepts(emb, classifier, imagenet.labels, 3)
        tags = (time.perf_counter() - start) / args.repeats
        scaled = "" if len(subset) == len(imagenet) else f" (timed on {len(subset)} labels)"
        print(f"| {name} {pretrained or 'random init'} | {setup:.1f}{scaled} | {cached} | {encode * 1000 / len(images):.2f} | {tags * 1000 / len(images):.3f} |")


def bench_accuracy(args) -> None:
    """Top-1 / top-3 accuracy of concept tags on demo images, labels = the six demo shapes, default templates."""
    from paircurate.embeddings.clip import TINY_MODEL, load_clip
    from paircurate.embeddings.train_tiny import shape_tag_accuracy

    clip = load_clip(TINY_MODEL, TINY_MODEL, device="cpu")
    tags = shape_tag_accuracy(clip, args.images, args.seed, size=64)
    print(f"{args.images} demo images (seed {args.seed}), bundled tiny model, 6 shape labels x 80 templates: "
          f"top-1 {tags['top1']:.3f}, top-3 {tags['top3']:.3f} (chance 0.167 / 0.5)")
    print("top-1 per true shape: " + ", ".join(f"{k} {v:.2f}" for k, v in tags["top1_per_shape"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("matching")
    m.add_argument("--entries", type=int, default=500_000)
    m.add_argument("--captions", type=int, default=100_000)
    s = sub.add_parser("skew")
    s.add_argument("--samples", type=int, default=1_000_000)
    s.add_argument("--entries", type=int, default=20_000)
    s.add_argument("--cap", type=int, default=200)
    s.add_argument("--max-entries-per-sample", type=int, default=1, help="each sample names 1..N entries (N > 1: kept through any)")
    t = sub.add_parser("tagging")
    t.add_argument("--images", type=int, default=1000)
    t.add_argument("--vit-labels", type=int, default=25)
    t.add_argument("--repeats", type=int, default=5)
    a = sub.add_parser("accuracy")
    a.add_argument("--images", type=int, default=1000)
    a.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    {"matching": bench_matching, "skew": bench_skew, "tagging": bench_tagging, "accuracy": bench_accuracy}[args.what](args)


if __name__ == "__main__":
    main()
