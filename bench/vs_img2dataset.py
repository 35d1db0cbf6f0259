"""paircurate vs img2dataset, side by side on the same loopback server and URL list.

Both tools get the 250 photos of ../shared/data/imagenet-sample-250 repeated
to --urls rows with distinct query strings, 256 px center_crop, jpg quality 95,
WebDataset output, no CLIP and no dedup, and run alternately --runs times each.
img2dataset runs from its own virtual environment (--img2dataset-python), with
its best settings for 2 cores (2 processes x 32 threads by default).

    python -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset
    python bench/vs_img2dataset.py --urls 2000 --runs 3 --img2dataset-python /tmp/i2d/bin/python
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time

from throughput import DEFAULT_DATA, paircurate_command, serve_photos, write_url_list

from paircurate.testing.loopback import LoopbackServer

I2D_SCRIPT = """
import sys
from img2dataset import download
if __name__ == "__main__":
    url_list, out, processes, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    download(
        url_list=url_list, output_folder=out, input_format="csv", url_col="url", caption_col="caption",
        output_format="webdataset", image_size=256, resize_mode="center_crop", encode_format="jpg",
        encode_quality=95, processes_count=processes, thread_count=threads, number_sample_per_shard=10000,
        timeout=10, retries=0, disallowed_header_directives=[], enable_wandb=False, distributor="multiprocessing",
    )
"""


def count_tar_images(out_dir: str) -> int:
    n = 0
    for path in glob.glob(os.path.join(out_dir, "*.tar")):
        with tarfile.open(path) as tar:
            n += sum(1 for m in tar if m.name.endswith(".jpg"))
    return n


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of the command's process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    elapsed = time.perf_counter() - start
    return elapsed, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def run_paircurate(url_list: str, out: str, extra: list[str]) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    elapsed, _ = timed(paircurate_command(url_list, out, ["--retries", "0", *extra]))
    return elapsed, count_tar_images(out)


def run_img2dataset(python: str, url_list: str, out: str, processes: int, threads: int, script: str) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    elapsed, _ = timed([python, script, url_list, out, str(processes), str(threads)], env=env)
    return elapsed, count_tar_images(out)


def summary(name: str, rates: list[float]) -> str:
    return f"{name:<12} images/s min {min(rates):6.0f}  median {statistics.median(rates):6.0f}  max {max(rates):6.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--img2dataset-python", default="/tmp/i2d/bin/python")
    parser.add_argument("--i2d-processes", type=int, default=2)
    parser.add_argument("--i2d-threads", type=int, default=32)
    parser.add_argument("extra", nargs="*", help="extra `paircurate run` arguments (after --)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as server:
        photos = serve_photos(server, args.data)
        url_list = os.path.join(tmp, "urls.csv")
        write_url_list(server, photos, args.urls, url_list)
        script = os.path.join(tmp, "run_img2dataset.py")
        with open(script, "w") as fh:
            fh.write(I2D_SCRIPT)
        rates = {"paircurate": [], "img2dataset": []}
        for run in range(args.runs):
            for name in ("img2dataset", "paircurate"):
                out = os.path.join(tmp, name)
                if name == "paircurate":
                    elapsed, n = run_paircurate(url_list, out, args.extra)
                else:
                    elapsed, n = run_img2dataset(args.img2dataset_python, url_list, out, args.i2d_processes, args.i2d_threads, script)
                if n != args.urls:
                    print(f"warning: {name} wrote {n} of {args.urls} samples", flush=True)
                rates[name].append(n / elapsed)
                print(f"run {run + 1} {name:<12} {n} images in {elapsed:5.1f}s = {n / elapsed:6.0f} images/s", flush=True)
        print(summary("img2dataset", rates["img2dataset"]))
        print(summary("paircurate", rates["paircurate"]))
        ratio = statistics.median(rates["paircurate"]) / statistics.median(rates["img2dataset"])
        print(f"ratio of medians paircurate / img2dataset: {ratio:.2f}x  ({args.urls} URLs, extra={args.extra})")
        print(json.dumps({k: [round(v, 1) for v in r] for k, r in rates.items()}))


if __name__ == "__main__":
    main()
