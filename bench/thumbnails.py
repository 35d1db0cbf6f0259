"""A second photo set for the speed benchmarks: the same photos as web thumbnails.

    python bench/thumbnails.py --side 160 --quality 85 --out /tmp/thumbs-160
    python bench/vs_img2dataset.py --data /tmp/thumbs-160 --urls 3000 --hosts 1 --runs 3

The 250 photos of ../shared/data/imagenet-sample-250 are ~500x375 JPEGs of
~108 KB at high quality, where decoding alone is ~1 ms of CPU per image and
both tools spend most of their time in libjpeg. Lists from the web also hold
many small images; this writes each photo shrunk to at most ``--side`` pixels
on its longer side (Pillow, LANCZOS), re-encoded as JPEG ``--quality``, with
the same ``labels.tsv``, so the benchmarks can report both regimes.
"""

from __future__ import annotations

import argparse
import csv
import os

from PIL import Image

from throughput import DEFAULT_DATA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with labels.tsv and the photos")
    parser.add_argument("--side", type=int, default=160, help="longer side of each thumbnail, pixels")
    parser.add_argument("--quality", type=int, default=85)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    sizes = []
    with open(os.path.join(args.data, "labels.tsv")) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for row in rows:
        with Image.open(os.path.join(args.data, row["file"])) as img:
            img = img.convert("RGB")
            img.thumbnail((args.side, args.side), Image.Resampling.LANCZOS)
            path = os.path.join(args.out, row["file"])
            img.save(path, "JPEG", quality=args.quality)
            sizes.append(os.path.getsize(path))
    with open(os.path.join(args.out, "labels.tsv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} thumbnails of at most {args.side} px, JPEG q{args.quality}, "
          f"mean {sum(sizes) / len(sizes) / 1024:.1f} KiB, in {args.out}")


if __name__ == "__main__":
    main()
