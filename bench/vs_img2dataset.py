"""paircurate vs img2dataset, alternating, on the same loopback servers and URL list.

Both tools get the 250 photos of ../shared/data/imagenet-sample-250 repeated
to --urls rows with distinct query strings, 256 px center_crop, jpg quality 95,
WebDataset output, no CLIP, no dedup, no retries; they run alternately --runs
times each and the medians are reported.

img2dataset gets its best settings for this machine: one process per core
(--i2d-processes, default all cores), --i2d-threads threads each, and shards
small enough that every process has several (--i2d-shard-size, default
ceil(urls / (4 x processes)) capped at 1,000: it parallelises by shard, so a
single shard would leave all processes but one idle). paircurate runs with
its defaults plus --paircurate-args; by default those raise the per-host cap
to img2dataset's thread count, since img2dataset has no per-host cap at all
(`--paircurate-args ''` measures paircurate's polite defaults instead).

The URLs are spread over --hosts loopback addresses (127.0.0.1, 127.0.0.2,
...: on Linux the whole 127/8 range is loopback), one server each, since real
lists spread over many hosts and per-host logic behaves differently on one.

Reported per tool: wall images/s of the whole process (start-up and exit
included) and CPU milliseconds per image of the whole process tree. A
forkserver's children are not the parent's rusage children (they are the
fork server's, which is never waited for), so rusage would undercount
paircurate; instead the tree (every descendant, the fork server's children
included) is polled every 20 ms and each process's last user+system time is
summed. The machine's busy time (/proc/stat) minus this benchmark's own CPU
is printed too: on an idle machine the two agree, on a shared one only the
tree figure means anything.

    python -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset
    python bench/vs_img2dataset.py --urls 3000 20000 --hosts 1 4 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import math
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time

import psutil
from throughput import DEFAULT_DATA, paircurate_command, serve_photos

from paircurate.testing.loopback import LoopbackServer

I2D_SCRIPT = """
import sys
from img2dataset import download
if __name__ == "__main__":
    url_list, out, processes, threads, shard = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    download(
        url_list=url_list, output_folder=out, input_format="csv", url_col="url", caption_col="caption",
        output_format="webdataset", image_size=256, resize_mode="center_crop", encode_format="jpg",
        encode_quality=95, processes_count=processes, thread_count=threads, number_sample_per_shard=shard,
        timeout=10, retries=0, disallowed_header_directives=[], enable_wandb=False, distributor="multiprocessing",
    )
"""


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def count_tar_images(out_dir: str) -> int:
    n = 0
    for path in glob.glob(os.path.join(out_dir, "*.tar")):
        with tarfile.open(path) as tar:
            n += sum(1 for m in tar if m.name.endswith(".jpg"))
    return n


def measured(cmd: list[str], out_dir: str, env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds of its process tree (and machine busy minus ours), images written."""
    shutil.rmtree(out_dir, ignore_errors=True)
    busy0, own0, start = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    root = psutil.Process(proc.pid)
    cpu_by_pid: dict[tuple[int, float], float] = {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                times = p.cpu_times()
                cpu_by_pid[(p.pid, p.create_time())] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    busy = (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    return {"wall": wall, "cpu": sum(cpu_by_pid.values()), "busy": busy, "images": count_tar_images(out_dir)}


@contextlib.contextmanager
def photo_servers(n_hosts: int, data_dir: str):
    """One LoopbackServer per host address, each serving every photo; yields (servers, [(path, caption)])."""
    servers = [LoopbackServer(host=f"127.0.0.{i + 1}").start() for i in range(n_hosts)]
    try:
        photos = serve_photos(servers, data_dir)
        yield servers, photos
    finally:
        for server in servers:
            server.stop()


def write_url_list(servers: list[LoopbackServer], photos, n: int, path: str) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption"])
        for i in range(n):
            photo, caption = photos[i % len(photos)]
            writer.writerow([servers[i % len(servers)].url(f"{photo}?i={i}"), caption])


def describe(name: str, runs: list[dict]) -> dict:
    rates = [r["images"] / r["wall"] for r in runs]
    cpu_ms = [1000 * r["cpu"] / max(r["images"], 1) for r in runs]
    return {
        "tool": name,
        "images_per_s": [round(v, 1) for v in rates],
        "median_images_per_s": round(statistics.median(rates), 1),
        "cpu_ms_per_image": [round(v, 2) for v in cpu_ms],
        "median_cpu_ms_per_image": round(statistics.median(cpu_ms), 2),
        "images": [r["images"] for r in runs],
    }


def compare(args, n_urls: int, n_hosts: int, tmp: str, script: str) -> dict:
    processes = args.i2d_processes or len(os.sched_getaffinity(0))
    shard = args.i2d_shard_size or min(1000, math.ceil(n_urls / (4 * processes)))
    extra = shlex.split(args.paircurate_args)
    with photo_servers(n_hosts, args.data) as (servers, photos):
        url_list = os.path.join(tmp, f"urls-{n_urls}-{n_hosts}.csv")
        write_url_list(servers, photos, n_urls, url_list)
        env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
        i2d_cmd = [args.img2dataset_python, script, url_list, os.path.join(tmp, "i2d"), str(processes), str(args.i2d_threads), str(shard)]
        pc_cmd = paircurate_command(url_list, os.path.join(tmp, "pc"), ["--retries", "0", *extra], per_domain_concurrency=None)
        runs = {"img2dataset": [], "paircurate": []}
        for run in range(args.runs):
            for name, cmd, out in (("img2dataset", i2d_cmd, "i2d"), ("paircurate", pc_cmd, "pc")):
                got = measured(cmd, os.path.join(tmp, out), env=env if name == "img2dataset" else None)
                runs[name].append(got)
                print(
                    f"{n_urls} urls, {n_hosts} host(s), run {run + 1}: {name:<12} {got['images']} images in {got['wall']:5.1f}s "
                    f"= {got['images'] / got['wall']:6.0f} images/s, {1000 * got['cpu'] / max(got['images'], 1):.2f} ms CPU/image "
                    f"(machine busy: {1000 * got['busy'] / max(got['images'], 1):.2f})",
                    flush=True,
                )
    i2d, pc = describe("img2dataset", runs["img2dataset"]), describe("paircurate", runs["paircurate"])
    return {
        "urls": n_urls,
        "hosts": n_hosts,
        "img2dataset_settings": {"processes": processes, "threads": args.i2d_threads, "shard_size": shard},
        "paircurate_args": extra,
        "img2dataset": i2d,
        "paircurate": pc,
        "wall_ratio": round(pc["median_images_per_s"] / i2d["median_images_per_s"], 2),
        "cpu_ratio": round(pc["median_cpu_ms_per_image"] / i2d["median_cpu_ms_per_image"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, nargs="+", default=[3000, 20000])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--img2dataset-python", default="/tmp/i2d/bin/python")
    parser.add_argument("--i2d-processes", type=int, default=0, help="0: one per core")
    parser.add_argument("--i2d-threads", type=int, default=32)
    parser.add_argument("--i2d-shard-size", type=int, default=0, help="0: ceil(urls / (4 x processes)), at most 1,000")
    parser.add_argument("--paircurate-args", default="--per-domain-concurrency 32", help="extra `paircurate run` arguments, one string")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "run_img2dataset.py")
        with open(script, "w") as fh:
            fh.write(I2D_SCRIPT)
        for n_urls in args.urls:
            for n_hosts in args.hosts:
                result = compare(args, n_urls, n_hosts, tmp, script)
                results.append(result)
                print(
                    f"== {n_urls} URLs on {n_hosts} host(s): img2dataset {result['img2dataset']['median_images_per_s']} images/s "
                    f"{result['img2dataset']['median_cpu_ms_per_image']} ms CPU/image; paircurate {result['paircurate']['median_images_per_s']} "
                    f"images/s {result['paircurate']['median_cpu_ms_per_image']} ms CPU/image; wall ratio {result['wall_ratio']}x, "
                    f"CPU ratio {result['cpu_ratio']}x",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
