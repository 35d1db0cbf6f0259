"""CLIP scoring throughput: image-caption pairs per second through ``ClipModel.score``.

    python bench/clip_throughput.py                       # tiny model + random ViT-B-32, CPU
    python bench/clip_throughput.py --images 1024 --device cuda --repeats 3

Timed from decoded PIL images (256 px, the size the pipeline stores) to
scores, so the model's own preprocessing and the caption encoding are
included, as they are in the pipeline's scoring stage. ViT-B-32 runs with
random weights: speed does not depend on the values, and no download is
needed. Prints a markdown table; each cell is the median over ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from paircurate.embeddings.clip import TINY_MODEL, load_clip

from paircurate.testing import synthetic

MODELS = {
    "tiny": (TINY_MODEL, TINY_MODEL),
    "vit-b-32": ("ViT-B-32", None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,vit-b-32", help=f"comma-separated subset of {sorted(MODELS)}")
    parser.add_argument("--batch-sizes", default="32,64,128,256")
    parser.add_argument("--images", type=int, default=256, help="pairs scored per setting")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    pairs = synthetic.make_pairs(args.images, seed=123, size=args.image_size)
    images = [image for image, _ in pairs]
    captions = [caption for _, caption in pairs]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    rows = []
    for key in args.models.split(","):
        model_name, pretrained = MODELS[key]
        clip = load_clip(model_name, pretrained, device=args.device, precision=args.precision)
        clip.batch_size = batch_sizes[0]
        clip.score(images[: batch_sizes[0]], captions[: batch_sizes[0]])  # warm-up: allocator, kernels
        for batch_size in batch_sizes:
            clip.batch_size = batch_size
            times = []
            for _ in range(args.repeats):
                if clip.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                clip.score(images, captions)  # returns numpy, so the device work has finished
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            rows.append((model_name, pretrained or "random init", str(clip.device), batch_size, seconds))

    print(f"\n{args.images} pairs of {args.image_size} px PIL images per setting; torch threads: "
          f"{torch.get_num_threads()}; median of {args.repeats} run(s)\n")
    print("| model | weights | device | batch | seconds | pairs/s |")
    print("|---|---|---|---:|---:|---:|")
    for model_name, weights, device, batch_size, seconds in rows:
        print(f"| {model_name} | {weights} | {device} | {batch_size} | {seconds:.2f} | {args.images / seconds:.0f} |")


if __name__ == "__main__":
    main()
