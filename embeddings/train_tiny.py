"""Train the bundled ``paircurate-tiny`` CLIP on synthetic shape captions, offline, on CPU.

    python -m paircurate.embeddings.train_tiny --steps 1200 --out embeddings/assets/paircurate_tiny.safetensors

The model exists so that tests and the demo exercise real CLIP scoring (true
captions must outscore wrong ones) without any downloaded weights. Training is
bounded by steps, not wall time, so a given ``--seed``/``--steps``/``--threads``
reproduces the same checkpoint however fast the machine happens to be. At the
end the checkpoint is reloaded through :func:`paircurate.embeddings.clip.load_clip`,
the same path users take, and scored on fresh pairs from a different seed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from PIL import Image
from safetensors.torch import save_file

from paircurate.concepts.labels import LabelSet
from paircurate.embeddings.clip import (
    TINY_CHECKPOINT_PATH,
    TINY_MODEL,
    ClipModel,
    load_clip,
    register_tiny_config,
)
from paircurate.embeddings.zeroshot import label_embeddings, top_k_concepts
from paircurate.testing import synthetic

log = logging.getLogger(__name__)

IMAGE_SIZE = 64
EVAL_SEED = 1000  # far from any training seed, so evaluation pairs are unseen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 400 steps already separate true from swapped captions (AUC 0.99) but mostly by colour: the
    # shape is named by the top zero-shot tag of only 41 % of images; 1,200 steps reach ~91 %.
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps (the only stopping rule)")
    parser.add_argument("--out", type=Path, default=TINY_CHECKPOINT_PATH, help="checkpoint to write (.safetensors)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=20, help="linear warm-up steps before the cosine decay")
    parser.add_argument("--pool", type=int, default=20_000, help="synthetic training pairs generated up front")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads; part of what makes a run reproducible")
    parser.add_argument("--eval-pairs", type=int, default=2000)
    args = parser.parse_args(argv)
    # open_clip logs every construction step on the root logger at INFO; keep ours only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

    if args.out.suffix != ".safetensors":
        parser.error(f"--out must end in .safetensors, got {args.out}")
    if args.eval_pairs < 2:
        parser.error("--eval-pairs must be >= 2 (captions are swapped between pairs)")
    train(args)
    return 0


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    register_tiny_config()

    started = time.perf_counter()
    images, tokens = build_pool(args.pool, args.seed)
    log.info("generated %d training pairs in %.1f s", args.pool, time.perf_counter() - started)

    model = open_clip.create_model(TINY_MODEL)
    model.train()
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, args.warmup, args.steps))
    loss_fn = ClipLoss()
    picker = torch.Generator().manual_seed(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training %s (%.2f M parameters) for %d steps, batch %d", TINY_MODEL, n_params / 1e6, args.steps, args.batch_size)

    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(images), (args.batch_size,), generator=picker)
        # Matches the inference transform exactly: 64 px inputs pass Resize/CenterCrop unchanged.
        pixels = (images[idx].float() / 255.0 - mean) / std
        image_features, text_features, logit_scale = model(pixels, tokens[idx])
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            # CLIP's cap on the temperature (logit scale 100), as in open_clip's trainer.
            model.logit_scale.clamp_(0, math.log(100))
        if step % 20 == 0 or step == args.steps:
            log.info("step %d/%d loss %.4f logit_scale %.1f (%.1f s)", step, args.steps, loss.item(),
                     logit_scale.item(), time.perf_counter() - started)

    save_checkpoint(model, args.out, {"steps": args.steps, "seed": args.seed, "batch_size": args.batch_size,
                                      "lr": args.lr, "pool": args.pool, "threads": args.threads})
    log.info("wrote %s (%.1f MB) after %.1f s of training", args.out, args.out.stat().st_size / 1e6,
             time.perf_counter() - started)

    clip = load_clip(TINY_MODEL, str(args.out), device="cpu")
    for size, quality in ((IMAGE_SIZE, None), (256, 90)):
        report = evaluate(clip, args.eval_pairs, EVAL_SEED, size=size, jpeg_quality=quality)
        label = f"{size} px" + (f" JPEG q{quality}" if quality else "")
        print(f"held-out {label}: ROC AUC true vs swapped captions = {report['auc']:.4f} "
              f"(n={args.eval_pairs}, seed {EVAL_SEED})")
        print(f"  true    mean {report['true_mean']:.3f}  p1 {report['true_p1']:.3f}  p5 {report['true_p5']:.3f}")
        print(f"  swapped mean {report['swapped_mean']:.3f}  p95 {report['swapped_p95']:.3f}  p99 {report['swapped_p99']:.3f}")
        print(f"  best threshold (Youden's J) {report['best_threshold']:.3f}: "
              f"keeps {report['tpr']:.3f} of true, {report['fpr']:.3f} of swapped")
        tags = shape_tag_accuracy(clip, args.eval_pairs, EVAL_SEED, size=size)
        print(f"  zero-shot shape tags (6 shapes x 80 ImageNet templates): top-1 {tags['top1']:.3f}, top-3 {tags['top3']:.3f}")
    sys.stdout.flush()


def build_pool(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic pairs as a uint8 image tensor (n, 3, 64, 64) and token ids (n, context_length)."""
    samples = synthetic.make_samples(n, seed, IMAGE_SIZE)
    images = np.stack([np.asarray(s.image, dtype=np.uint8) for s in samples])
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    tokens = tokenizer([s.caption for s in samples])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), tokens


def save_checkpoint(model: torch.nn.Module, path: Path, info: dict) -> None:
    """Write ``model``'s weights as fp16 safetensors (integer buffers kept as they are)."""
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # One metadata key: safetensors writes several keys in hash order, which
    # would make identical training runs produce different bytes.
    metadata = {"paircurate": json.dumps({"model": TINY_MODEL, **info}, sort_keys=True)}
    save_file(state, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(path)


def evaluate(clip: ClipModel, n: int, seed: int, size: int = IMAGE_SIZE, jpeg_quality: int | None = None) -> dict:
    """Score fresh pairs against their own and a neighbour's caption; AUC and score percentiles."""
    samples = synthetic.make_samples(n, seed, size)
    images = [s.image for s in samples]
    if jpeg_quality is not None:
        images = [_jpeg_roundtrip(im, jpeg_quality) for im in images]
    captions = [s.caption for s in samples]
    true = clip.score(images, captions)
    swapped = clip.score(images, synthetic.swapped_captions(samples))
    threshold, tpr, fpr = best_threshold(true, swapped)
    return {
        "auc": roc_auc(true, swapped),
        "true_mean": float(true.mean()), "true_p1": float(np.percentile(true, 1)),
        "true_p5": float(np.percentile(true, 5)),
        "swapped_mean": float(swapped.mean()), "swapped_p95": float(np.percentile(swapped, 95)),
        "swapped_p99": float(np.percentile(swapped, 99)),
        "best_threshold": threshold, "tpr": tpr, "fpr": fpr,
    }


def shape_tag_accuracy(clip: ClipModel, n: int, seed: int, size: int = IMAGE_SIZE) -> dict:
    """How often the true shape is the top (and among the top 3) zero-shot concept tags of fresh images.

    ``{"top1": ..., "top3": ..., "top1_per_shape": {shape: ...}}``; labels are the six shapes with the 80 templates.
    """
    labels = LabelSet("shapes", synthetic.SHAPES, tuple(() for _ in synthetic.SHAPES))  # no prompts: the 80 templates
    samples = synthetic.make_samples(n, seed, size)
    tags = top_k_concepts(clip.encode_images([s.image for s in samples]), label_embeddings(clip, labels), labels.labels, 3)
    hits = [(s.scene.shape, t[0][0] == s.scene.shape, s.scene.shape in t[0]) for t, s in zip(tags, samples)]
    per_shape = {
        shape: sum(top1 for true, top1, _ in hits if true == shape) / max(1, sum(true == shape for true, _, _ in hits))
        for shape in synthetic.SHAPES
    }
    return {"top1": sum(h[1] for h in hits) / n, "top3": sum(h[2] for h in hits) / n, "top1_per_shape": per_shape}


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(random positive outscores random negative), ties counting half (Mann-Whitney U)."""
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    # Tied scores share the mean of their ranks.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    rank_sums = np.bincount(inverse, weights=ranks)
    ranks = (rank_sums / counts)[inverse]
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_threshold(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float, float]:
    """The cut maximising TPR - FPR (Youden's J), returned as (threshold, tpr, fpr)."""
    candidates = np.unique(np.concatenate([positive, negative]))
    tpr = (positive[None, :] >= candidates[:, None]).mean(axis=1)
    fpr = (negative[None, :] >= candidates[:, None]).mean(axis=1)
    best = int(np.argmax(tpr - fpr))
    return float(candidates[best]), float(tpr[best]), float(fpr[best])


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decaying norms, biases, embeddings' scale or the temperature only hurts; open_clip's trainer exempts them too.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exempt = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


if __name__ == "__main__":
    sys.exit(main())
