"""Throughput of `paircurate run` on real photos served over loopback.

Serves the 250 photos of ../shared/data/imagenet-sample-250 from one
LoopbackServer, repeats them to --urls rows with distinct query strings (so no
cache or dedup can help), and times whole `paircurate run` processes:
start-up, download, decode, resize, encode and shard writing.

    python bench/throughput.py --urls 2000 --runs 3
    python bench/throughput.py --urls 2000 --runs 3 -- --direct_running_mode multi_processing --direct_num_workers 2
    python bench/throughput.py --urls 2000 --runs 1 -- --clip --clip-model paircurate-tiny --clip-pretrained paircurate-tiny
    python bench/throughput.py --urls 250 --runs 1 --random-clip ViT-B-32 -- --clip-threshold 0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from paircurate.testing.loopback import LoopbackServer

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "imagenet-sample-250")


def serve_photos(servers: list[LoopbackServer], data_dir: str) -> list[tuple[str, str]]:
    """Register every photo on every server (same path on each); returns (url path, caption) pairs."""
    photos = []
    with open(os.path.join(data_dir, "labels.tsv")) as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            name = row.get("file") or row.get("filename") or list(row.values())[0]
            label = row.get("label") or list(row.values())[-1]
            with open(os.path.join(data_dir, name), "rb") as img:
                body = img.read()
            for server in servers:
                path = server.add(f"/photos/{name}", body, content_type="image/jpeg")
            photos.append((path, f"a photo of a {label}"))
    return photos


def write_url_list(server: LoopbackServer, photos, n: int, path: str) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption"])
        for i in range(n):
            photo, caption = photos[i % len(photos)]
            writer.writerow([server.url(f"{photo}?i={i}"), caption])


def paircurate_command(url_list: str, out_dir: str, extra: list[str], per_domain_concurrency: int | None = 64) -> list[str]:
    """`paircurate run` with the benchmark's settings: 256 center_crop jpg q95, no dedup, no report.

    Every URL of a benchmark list is on one host, so the per-host cap is raised
    unless ``per_domain_concurrency`` is None (paircurate's polite default).
    """
    polite = [] if per_domain_concurrency is None else ["--per-domain-concurrency", str(per_domain_concurrency)]
    return [
        sys.executable, "-m", "paircurate.cli", "run", url_list, "-o", out_dir,
        "--image-size", "256", "--resize-mode", "center_crop", "--encode-format", "jpg", "--encode-quality", "95",
        "--no-progress", "--no-report", "--allow-private-network", *polite,
        # The list repeats 250 photos: dedup would rightly drop all but 250.
        "--no-dedup-exact", "--no-dedup-perceptual", "--no-dedup-semantic", *extra,
    ]


def time_run(url_list: str, out_dir: str, extra: list[str]) -> tuple[float, int]:
    shutil.rmtree(out_dir, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(paircurate_command(url_list, out_dir, extra), check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    with open(os.path.join(out_dir, "stats.json")) as fh:
        stages = {s["stage"]: s for s in json.load(fh)["funnel"]["stages"]}
    # Images that went all the way through download, decode and resize (and
    # scoring, with --clip): a CLIP threshold may reject many, but they were processed.
    return elapsed, stages["image"]["out"]


def peak_memory_mib(url_list: str, out_dir: str, extra: list[str], interval: float = 0.1) -> tuple[float, float]:
    """Peak memory of one `paircurate run`: (RSS of the main process, PSS of its whole process tree).

    The download processes are children of a fork server, so the main
    process's own RSS misses them; the tree's PSS counts every process and
    shares the pages they have in common instead of counting them per process.
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    proc = subprocess.Popen(paircurate_command(url_list, out_dir, extra), stdout=subprocess.DEVNULL)
    main_proc = psutil.Process(proc.pid)
    peak_main = peak_tree = 0
    while proc.poll() is None:
        try:
            peak_main = max(peak_main, main_proc.memory_info().rss)
            tree = 0
            for p in [main_proc, *main_proc.children(recursive=True)]:
                try:
                    tree += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak_tree = max(peak_tree, tree)
        except psutil.NoSuchProcess:
            break
        time.sleep(interval)
    if proc.wait() != 0:
        raise SystemExit(f"paircurate run failed with exit code {proc.returncode}")
    return peak_main / 2**20, peak_tree / 2**20


def random_checkpoint(model_name: str, folder: str) -> str:
    """A randomly initialised open_clip checkpoint file, loaded by the run like any checkpoint path."""
    import open_clip
    import torch

    path = os.path.join(folder, f"{model_name}-random.pt")
    torch.save(open_clip.create_model(model_name, pretrained=None).state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--rss", type=int, nargs="*", default=[], metavar="N", help="also report peak memory (main RSS, process tree PSS) at these list sizes")
    parser.add_argument(
        "--random-clip", metavar="MODEL",
        help="score with CLIP MODEL (e.g. ViT-B-32) from a randomly initialised checkpoint written for the run: "
        "the speed of the real weights, no download",
    )
    parser.add_argument("extra", nargs="*", help="extra `paircurate run` arguments (after --)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as server:
        if args.random_clip:
            args.extra = [*args.extra, "--clip", "--clip-model", args.random_clip, "--clip-pretrained", random_checkpoint(args.random_clip, tmp)]
        photos = serve_photos([server], args.data)
        url_list = os.path.join(tmp, "urls.csv")
        write_url_list(server, photos, args.urls, url_list)
        rates = []
        for run in range(args.runs):
            elapsed, kept = time_run(url_list, os.path.join(tmp, "out"), args.extra)
            rates.append(kept / elapsed)
            print(f"run {run + 1}: {kept} images processed in {elapsed:.1f}s = {kept / elapsed:.0f} images/s", flush=True)
        if rates:
            print(
                f"paircurate run, {args.urls} URLs, 256 center_crop, extra={args.extra}: "
                f"images/s min {min(rates):.0f} median {statistics.median(rates):.0f} max {max(rates):.0f}"
            )
        for n in args.rss:
            rss_list = os.path.join(tmp, f"urls_{n}.csv")
            write_url_list(server, photos, n, rss_list)
            main_mib, tree_mib = peak_memory_mib(rss_list, os.path.join(tmp, "rss_out"), args.extra)
            print(f"peak memory at {n} URLs: main process RSS {main_mib:.0f} MiB, process tree PSS {tree_mib:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
