"""Train the demo world's aesthetic and safety heads on the bundled model's image embeddings.

    python -m paircurate.embeddings.train_heads        # writes embeddings/assets/paircurate_tiny_{aesthetic_linear,nsfw}.pth

The synthetic world has no beauty and no nudity, so two of its visual concepts
stand in for them: a *large* shape is "beautiful" (aesthetic score 8, a small
one 3, on LAION's 1-10 scale) and a *red* shape is "unsafe". The heads are saved in
the published layouts (LAION's V1 linear head; the NSFW detector's NeMo
Curator layout, smaller hidden sizes), so ``paircurate demo`` and the tests
load them through exactly the code that loads LAION's files. Embeddings come
from :func:`paircurate.embeddings.clip.load_clip`, images are JPEGs at the sizes
the demo serves, and training is bounded by steps for reproducibility.
"""

from __future__ import annotations

import argparse
import io
import logging
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from paircurate.testing import synthetic
from paircurate.embeddings.clip import TINY_MODEL, load_clip
from paircurate.embeddings.heads import AESTHETIC, SAFETY, TINY_AESTHETIC_PATH, TINY_SAFETY_PATH, NSFWHead, load_head

log = logging.getLogger(__name__)

BEAUTIFUL, PLAIN = 8.0, 3.0
UNSAFE_COLOR = "red"
SAFETY_HIDDEN = (32, 64, 32)
TRAIN_SEED, EVAL_SEED = 77, 7007


def aesthetic_target(scene: synthetic.Scene) -> float:
    return BEAUTIFUL if scene.size == "large" else PLAIN


def is_unsafe(scene: synthetic.Scene) -> bool:
    return scene.color == UNSAFE_COLOR


def embed(clip, n: int, seed: int) -> tuple[np.ndarray, list[synthetic.Scene]]:
    """Image embeddings of ``n`` synthetic samples, as the pipeline would see them (JPEG, demo sizes)."""
    rng = random.Random(seed)
    images, scenes = [], []
    for sample in synthetic.make_samples(n, seed=seed, size=224):
        side = rng.choice((160, 224, 288))
        buf = io.BytesIO()
        sample.image.resize((side, side)).save(buf, format="JPEG", quality=90)
        images.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        scenes.append(sample.scene)
    return clip.encode_images(images), scenes


def train(steps: int, train_pairs: int, eval_pairs: int) -> dict[str, float]:
    torch.manual_seed(0)
    clip = load_clip(TINY_MODEL, TINY_MODEL, device="cpu")
    x, scenes = embed(clip, train_pairs, TRAIN_SEED)
    xt = torch.from_numpy(x)
    y_aes = torch.tensor([aesthetic_target(s) for s in scenes])
    y_unsafe = torch.tensor([float(is_unsafe(s)) for s in scenes])

    aesthetic = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.Adam(aesthetic.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(aesthetic(xt).squeeze(-1), y_aes).backward()
        opt.step()

    safety = NSFWHead((x.shape[1], *SAFETY_HIDDEN))
    # Keras' Normalization layer is adapted to the training data: so is ours.
    safety.norm.mean.copy_(xt.mean(0))
    safety.norm.variance.copy_(xt.var(0, unbiased=False) + 1e-6)
    opt = torch.optim.Adam(safety.parameters(), lr=3e-3)
    positive_weight = (1 - y_unsafe.mean()) / y_unsafe.mean()  # red shapes are 1 in 8 scenes
    for _ in range(steps):
        opt.zero_grad()
        p = safety(xt).squeeze(-1).clamp(1e-6, 1 - 1e-6)
        loss = -(positive_weight * y_unsafe * p.log() + (1 - y_unsafe) * (1 - p).log()).mean()
        loss.backward()
        opt.step()

    TINY_AESTHETIC_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in aesthetic.state_dict().items()}, TINY_AESTHETIC_PATH)
    torch.save({k: v.detach().clone() for k, v in safety.state_dict().items()}, TINY_SAFETY_PATH)

    # Evaluate the saved files through the loader the pipeline uses, on unseen samples.
    x_eval, eval_scenes = embed(clip, eval_pairs, EVAL_SEED)
    aes = load_head(AESTHETIC, TINY_AESTHETIC_PATH)(x_eval)
    punsafe = load_head(SAFETY, TINY_SAFETY_PATH)(x_eval)
    large = np.array([s.size == "large" for s in eval_scenes])
    unsafe = np.array([is_unsafe(s) for s in eval_scenes])
    return {
        "aesthetic_mean_large": float(aes[large].mean()),
        "aesthetic_mean_small": float(aes[~large].mean()),
        "aesthetic_accuracy_at_5.5": float(((aes >= 5.5) == large).mean()),
        "punsafe_accuracy_at_0.5": float(((punsafe > 0.5) == unsafe).mean()),
        "punsafe_recall_at_0.5": float((punsafe[unsafe] > 0.5).mean()),
        "punsafe_false_positive_rate_at_0.5": float((punsafe[~unsafe] > 0.5).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--train-pairs", type=int, default=3000)
    parser.add_argument("--eval-pairs", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    for name, value in train(args.steps, args.train_pairs, args.eval_pairs).items():
        print(f"{name}: {value:.3f}")
    print(f"wrote {TINY_AESTHETIC_PATH} and {TINY_SAFETY_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
