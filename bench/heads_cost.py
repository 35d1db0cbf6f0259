"""CPU cost of the aesthetic and safety heads per 1,000 images, on embeddings already computed.

    python bench/heads_cost.py                  # published heads from shared/models when present, else same-shape random ones

The heads run in the CLIP scoring DoFn on the batch's image embeddings, so
their cost is the head alone: one call per batch (``--batch`` rows, the
pipeline's ``--clip-batch-size``), including the float32 conversion and L2
normalisation that :class:`paircurate.embeddings.heads.Head` does. Median of
``--repeats`` over ``--images`` embeddings, torch on ``--threads`` CPU threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from paircurate.embeddings.heads import (AESTHETIC, SAFETY, TINY_AESTHETIC_PATH, TINY_SAFETY_PATH, AestheticMLP,
                                         NSFWHead, load_head)

_ROOT = Path(__file__).resolve().parents[1]
SHARED = next((Path(c) for c in (os.environ.get("PAIRCURATE_SHARED_MODELS"), _ROOT.parent / "shared" / "models",
                                 _ROOT.parent.parent / "shared" / "models") if c and Path(c).is_dir()), Path("/nonexistent"))


def _heads(tmp: str) -> list[tuple[str, str, Path]]:
    """(label, kind, file): the published files where available, otherwise random ones of the same shape."""
    def random_file(name: str, module: nn.Module) -> Path:
        path = Path(tmp) / name
        torch.save(module.state_dict(), path)
        return path

    b32 = SHARED / "laion-aesthetic-v1" / "sa_0_4_vit_b_32_linear.pth"
    mlp = SHARED / "improved-aesthetic-predictor" / "sac+logos+ava1-l14-linearMSE.pth"
    return [
        ("aesthetic V1 linear, 512-d (ViT-B/32)", AESTHETIC, b32 if b32.is_file() else random_file("b32.pth", nn.Linear(512, 1))),
        ("aesthetic improved MLP, 768-d (ViT-L/14)", AESTHETIC,
         mlp if mlp.is_file() else random_file("mlp.pth", AestheticMLP((768, 1024, 128, 64, 16)))),
        # The NSFW detector's published sizes; random weights cost the same.
        ("safety NSFW detector, 768-d (ViT-L/14), random weights", SAFETY,
         random_file("nsfw.pth", NSFWHead((768, 64, 512, 256)))),
        ("demo aesthetic, 128-d (paircurate-tiny)", AESTHETIC, TINY_AESTHETIC_PATH),
        ("demo safety, 128-d (paircurate-tiny)", SAFETY, TINY_SAFETY_PATH),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"{args.images} embeddings in batches of {args.batch}, {args.threads} torch threads, CPU\n")
    print("| head | file | ms per 1,000 images |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, kind, path in _heads(tmp):
            head = load_head(kind, path)
            emb = rng.standard_normal((args.images, head.in_dim)).astype(np.float16)  # as stored in flight
            head(emb[: args.batch])  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for i in range(0, args.images, args.batch):
                    head(emb[i : i + args.batch])
                times.append(time.perf_counter() - start)
            per_1000 = statistics.median(times) * 1000 / args.images * 1000
            print(f"| {label} | {'published' if str(path).startswith(str(SHARED)) else Path(path).name} | {per_1000:.2f} |")


if __name__ == "__main__":
    main()
