"""Writing to an object store: throughput vs local disk, requests and bytes per shard, spool vs shuffle.

Everything on 127.0.0.1: photos served by a LoopbackServer, S3 by moto's
standalone server in this process (it counts every request it answers).

    python bench/object_store.py --urls 1000 --shard-size 250

1. The same list, in-process runner, ``paircurate run`` as a child process:
   local disk -> local disk, and local list -> ``s3://`` output.
2. The S3 run's requests by method, per shard, and bytes per shard.
3. A Dask cluster (2 worker processes, 1 thread each) writing to S3 with
   ``--spool store`` (samples parked in batch objects in the output store,
   read back with ranged GETs) and ``--spool shuffle`` (samples carried
   through Dask's shuffle): wall time, spool requests, peak RSS per worker.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np
from PIL import Image

from paircurate import storage
from paircurate.storage.layout import OutputLayout, parse_shard_file
from paircurate.testing.loopback import LoopbackServer
from paircurate.testing.objectstore import S3Server

BUCKET = "bench"


def photo_jpeg(seed: int) -> bytes:
    """A noisy 400x300 gradient: about the entropy of a photo, so JPEG sizes are photo-like."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:300, 0:400].astype(np.float32)
    base = (x / 400)[..., None] * rng.uniform(0, 255, 3) + (y / 300)[..., None] * rng.uniform(0, 255, 3)
    pixels = (base / 2 + rng.normal(0, 20, (300, 400, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_list(server: LoopbackServer, n: int, path: str) -> None:
    photos = [server.add(f"/p/{i}.jpg", photo_jpeg(i), content_type="image/jpeg") for i in range(100)]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "caption"])
        for i in range(n):
            w.writerow([server.url(f"{photos[i % len(photos)]}?i={i}"), f"a photo number {i}"])


def flags(shard_size: int) -> list[str]:
    return [
        "--image-size", "256", "--shard-size", str(shard_size), "--no-progress", "--no-report",
        "--allow-private-network", "--per-domain-concurrency", "64",
        "--no-dedup-exact", "--no-dedup-perceptual", "--no-dedup-semantic",  # the list repeats 100 photos
    ]


def timed_child(url_list: str, out: str, shard_size: int, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "paircurate.cli", "run", url_list, "-o", out, *flags(shard_size)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def requests_by_method(log: list[tuple[str, str]], marker: str) -> Counter:
    return Counter(m for m, p in log if marker in p)


def dask_run(url_list: str, out: str, shard_size: int, spool: str) -> tuple[float, float, list[float]]:
    """(seconds in all, seconds of the pipeline before the folder's closing files, peak RSS MiB per worker)."""
    import distributed

    from paircurate.cli import main

    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        start = time.perf_counter()
        rc = main(["run", url_list, "-o", out, *flags(shard_size), "--spool", spool, "--runner", "dask", "--dask-address", cluster.scheduler_address])
        elapsed = time.perf_counter() - start
        assert rc == 0
        with distributed.Client(cluster.scheduler_address) as client:
            peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB -> MiB
    pipeline_s = json.loads(storage.read_bytes(OutputLayout(out).run_stats))["wall_seconds"]
    return elapsed, pipeline_s, sorted(peaks.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--urls", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--only-dask", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="paircurate-bench-")
    try:
        with LoopbackServer() as web, S3Server() as s3:
            s3.make_bucket(BUCKET)
            url_list = os.path.join(work, "urls.csv")
            write_list(web, args.urls, url_list)
            env = {**os.environ, **s3.env}
            shards = -(-args.urls // args.shard_size)

            local_t, s3_t = [], []
            for run in range(0 if args.only_dask else args.runs):
                local_out = os.path.join(work, f"local-{run}")
                local_t.append(timed_child(url_list, local_out, args.shard_size, env))
                s3.request_log.clear()
                s3_t.append(timed_child(url_list, f"s3://{BUCKET}/run-{run}", args.shard_size, env))
                run_log = list(s3.request_log)
            print(f"urls={args.urls} shards={shards} runs={args.runs} (2-core machine shared with other agents)")
            if not args.only_dask:
                print(f"in-process, local disk : {min(local_t):.1f}s  ({args.urls / min(local_t):.0f} urls/s)  all: {[round(t, 1) for t in local_t]}")
                print(f"in-process, S3 (moto)  : {min(s3_t):.1f}s  ({args.urls / min(s3_t):.0f} urls/s)  all: {[round(t, 1) for t in s3_t]}")

                out = f"s3://{BUCKET}/run-{args.runs - 1}"
                methods = requests_by_method(run_log, f"/{BUCKET}")
                total = sum(methods.values())
                print(f"S3 requests, whole run : {dict(methods)} = {total}, {total / shards:.1f} per shard")
                objects = storage.find(out)
                sizes = {u: storage.size(u) for u in objects}
                shard_bytes = sum(s for u, s in sizes.items() if u.rsplit("/", 1)[1][:1].isdigit() or "/rejected/" in u)
                local_bytes = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(os.path.join(work, "local-0")) for n in ns)
                print(f"S3 objects             : {len(objects)} ({len(objects) / shards:.1f} per shard incl. run files), "
                      f"{shard_bytes / shards / 1e6:.2f} MB per shard; local folder {local_bytes / 1e6:.2f} MB in all")
                per_kind = Counter()
                for m, p in run_log:
                    name = p.split("?")[0].rsplit("/", 1)[-1]
                    if "_progress" in p:
                        kind = "progress"
                    elif "list-type" in p:
                        kind = "listing"
                    elif parse_shard_file(name):
                        kind = "shard files"
                    else:
                        kind = "run files"  # plan, stats.json, datasheet, shard index, bucket checks
                    per_kind[(m, kind)] += 1
                print("S3 requests by kind    : " + ", ".join(f"{m} {k}={v}" for (m, k), v in sorted(per_kind.items())))

            if not args.skip_dask:
                for spool in ("store", "shuffle"):
                    s3.request_log.clear()
                    elapsed, pipeline_s, peaks = dask_run(url_list, f"s3://{BUCKET}/dask-{spool}", args.shard_size, spool)
                    spool_req = requests_by_method(list(s3.request_log), "/_spool/")
                    print(f"dask 2 workers, --spool {spool:<7}: {elapsed:.1f}s in all, pipeline {pipeline_s:.1f}s ({args.urls / pipeline_s:.0f} urls/s), "
                          f"spool requests {dict(spool_req) or 0}, peak RSS per worker {[round(p) for p in peaks]} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
