"""Dedup at scale on the Dask runner: synthetic key records straight into FindDuplicates, no download.

Each row is what dedup sees of a downloaded sample: uid, shard, URL, CLIP
score, sha256, 64-bit pHash and a 512-d float16 image embedding. Rows are
generated on the workers, 10,000 per chunk (one shard), from the chunk's
seed, so the driver holds nothing. Planted copies (``--dup-fraction`` of the
rows, a third each): exact (same sha256, pHash and embedding), perceptual
(pHash 1-4 bits away, embedding at cosine 0.96-0.995) and semantic (new
pHash, embedding at cosine 0.96-0.995); a copy's source may itself be a copy,
so groups are stars and short chains. Ordinary embeddings lie around 1,024
shared centres, two of one centre at cosine ~0.8: only planted pairs are
duplicates.

Measured, per size, on a ``LocalCluster`` of ``--workers`` single-threaded
worker processes on 127.0.0.1:

- wall time of the pipeline run (cluster start-up excluded), CPU seconds of
  the worker processes (psutil), and task seconds per dedup stage from dask's
  task stream (dask fuses steps: a fused task counts for its first step);
- peak RSS per worker process (psutil, sampled every 0.2 s);
- bytes per input row entering each shuffle (GroupByKey, CoGroupByKey,
  the shuffles inside combines) and each side input gathered on one
  worker, encoded as a Beam runner's shuffle would (key: FastPrimitivesCoder;
  value: WindowedValueCoder on the global window; numpy arrays are pickled),
  from a 1-in-``--sample`` sample of the elements; and the bytes dask actually
  moved between the two workers (``transfer_outgoing_bytes_total``: pickled
  partitions, about half of all shuffled data with two workers).

    python bench/scale.py --rows 100000 1000000
    python bench/scale.py --rows 1000000 --no-semantic --json out.json
    python bench/scale.py --rows --planning-rows 1000000     # only the driver's planning
    python bench/scale.py --extrapolate out.json --to 100000000 5000000000
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections import defaultdict

import numpy as np

DIM = 512
CHUNK_ROWS = 10_000
N_CENTRES = 1024
CENTRE_SPREAD = 0.5  # per-coordinate noise * sqrt(DIM): cosine ~1/(1+0.25) = 0.8 between two points of a centre


# --- data ------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _near(rng: np.random.Generator, e: np.ndarray, cos_low: float, cos_high: float) -> np.ndarray:
    """A unit vector at a cosine drawn from [cos_low, cos_high] to unit vector ``e``."""
    c = rng.uniform(cos_low, cos_high)
    u = rng.standard_normal(e.shape).astype(np.float32)
    u = _unit(u - (u @ e) * e)
    return (c * e + np.sqrt(1 - c * c) * u).astype(np.float32)


def synthetic_chunk(chunk: int, seed: int, dup_fraction: float, embeddings: bool = True):
    """The key records of one chunk (CHUNK_ROWS rows); deterministic for (chunk, seed).

    Without ``embeddings`` the records carry none, as in a run without CLIP.
    """
    from paircurate.schemas import records as R
    from paircurate.schemas.identity import make_uid

    centres = _unit(np.random.default_rng(seed).standard_normal((N_CENTRES, DIM), dtype=np.float32))
    rng = np.random.default_rng([seed, chunk])
    m = CHUNK_ROWS
    emb = _unit(centres[rng.integers(N_CENTRES, size=m)] + rng.standard_normal((m, DIM), dtype=np.float32) * (CENTRE_SPREAD / np.sqrt(DIM)))
    phashes = rng.integers(0, 2**63, size=m, dtype=np.int64).astype(np.uint64) * 2 + rng.integers(0, 2, size=m).astype(np.uint64)
    first = chunk * m
    sha = [hashlib.sha256(f"{seed}/{first + i}".encode()).hexdigest() for i in range(m)]
    planted = np.flatnonzero(rng.random(m) < dup_fraction)
    planted = planted[planted > 0]
    for i in planted:
        src = int(rng.integers(0, i))  # an earlier row, possibly itself a copy: stars and chains
        kind = int(rng.integers(3))
        if kind == 0:  # exact
            sha[i], phashes[i], emb[i] = sha[src], phashes[src], emb[src]
        elif kind == 1:  # perceptual
            bits = rng.choice(64, size=int(rng.integers(1, 5)), replace=False)
            phashes[i] = phashes[src] ^ np.uint64(sum(1 << int(b) for b in bits))
            emb[i] = _near(rng, emb[src], 0.96, 0.995)
        else:  # semantic
            emb[i] = _near(rng, emb[src], 0.96, 0.995)
    emb16 = emb.astype(np.float16)
    scores = rng.uniform(0.15, 0.4, size=m)
    for i in range(m):
        url = f"http://img{(first + i) % 997}.example.com/{first + i}.jpg"
        yield {
            R.UID: make_uid(url, f"caption {first + i}"),
            R.SHARD: chunk,
            R.URL: url,
            R.CLIP_SCORE: float(scores[i]),
            R.SHA256: sha[i],
            R.PHASH: format(int(phashes[i]), "016x"),
            R.IMAGE_EMBEDDING: emb16[i] if embeddings else None,
        }


def planted_count(rows: int, seed: int, dup_fraction: float) -> int:
    n = 0
    for chunk in range(rows // CHUNK_ROWS):
        rng = np.random.default_rng([seed, chunk])
        rng.integers(N_CENTRES, size=CHUNK_ROWS)
        rng.standard_normal((CHUNK_ROWS, DIM), dtype=np.float32)
        rng.integers(0, 2**63, size=CHUNK_ROWS, dtype=np.int64)
        rng.integers(0, 2, size=CHUNK_ROWS)
        planted = np.flatnonzero(rng.random(CHUNK_ROWS) < dup_fraction)
        n += int((planted > 0).sum())
    return n


# --- measuring ------------------------------------------------------------------------------


def _measure_partition(items, label: str, where: str, every: int):
    """Passes a partition on unchanged; writes the encoded size of a sample of it to ``where``.

    A shuffle element is (key, value in its window): encoded as a runner's
    shuffle would, the key with FastPrimitivesCoder and the value with a
    WindowedValueCoder over the global window (~10 bytes of window metadata).
    """
    from apache_beam.coders.coders import FastPrimitivesCoder, GlobalWindowCoder, WindowedValueCoder
    from apache_beam.utils.windowed_value import WindowedValue

    coder = FastPrimitivesCoder()
    windowed = WindowedValueCoder(coder, GlobalWindowCoder())
    sampled = encoded = 0
    items = list(items)
    for item in items[::every]:
        sampled += 1
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], WindowedValue):
            encoded += len(coder.encode(item[0])) + len(windowed.encode(item[1]))
        else:
            encoded += len(coder.encode(item))
    with open(os.path.join(where, f"{uuid.uuid4().hex}.json"), "w") as fh:
        json.dump({"label": label, "elements": len(items), "sampled": sampled, "sampled_bytes": encoded}, fh)
    return items


def _measure_list(values, label: str, where: str, every: int):
    return _measure_partition(values, label, where, every)


def measuring_runner(where: str, every: int):
    """The project's PatchedDaskRunner, with every shuffle input and side input measured."""
    import dask
    from apache_beam.runners.dask import transform_evaluator as te

    from paircurate.runners.dask import PatchedDaskRunner

    class MeasuringDaskRunner(PatchedDaskRunner):
        @staticmethod
        def to_dask_bag_visitor(bag_kwargs=None, min_partitions: int = 1):
            visitor = PatchedDaskRunner.to_dask_bag_visitor(bag_kwargs, min_partitions)
            visit, group, side = visitor.visit_transform, visitor.group_by_key, visitor.side_list
            current = {}

            def visit_transform(node):
                current["label"] = node.full_label
                return visit(node)

            def group_by_key(input_bag):
                label = current["label"]
                measured = input_bag.map_partitions(_measure_partition, label, where, every, token="measure-" + label.replace("/", "."))
                return group(measured)

            def side_list(pcoll):
                key = (pcoll.producer, pcoll.tag)
                if key in visitor.side_lists:
                    return visitor.side_lists[key]
                whole = side(pcoll)
                visitor.side_lists[key] = dask.delayed(_measure_list)(whole, "side input: " + pcoll.producer.full_label, where, every)
                return visitor.side_lists[key]

            visitor.visit_transform, visitor.group_by_key, visitor.side_list = visit_transform, group_by_key, side_list
            assert te.GroupByKey  # the visitor routes GroupByKey through group_by_key (paircurate/runners/dask.py)
            return visitor

    return MeasuringDaskRunner()


class PeakRss:
    """Samples the RSS of some processes in a thread; ``peaks`` per name."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peaks = {name: 0 for name in pids}
        self.cpu_s = {name: 0.0 for name in pids}  # user + system seconds while sampling: contention does not inflate it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._interval = interval

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self._procs.items():
                try:
                    self.peaks[name] = max(self.peaks[name], proc.memory_info().rss)
                except Exception:
                    pass
            self._stop.wait(self._interval)

    def _cpu(self) -> dict[str, float]:
        return {name: sum(proc.cpu_times()[:2]) for name, proc in self._procs.items()}

    def __enter__(self):
        self._cpu_start = self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        end = self._cpu()
        self.cpu_s = {name: end[name] - self._cpu_start[name] for name in end}


# Beam steps by the part of dedup they belong to; dask fuses consecutive steps
# into one task, which counts for the stage of the first step it names.
_STAGES = [
    ("generate (bench only)", ("Chunks", "SpreadChunks", "Generate")),
    ("count removals (bench only)", ("ByReason", "CountReasons", "Report")),
    ("measure (bench only)", ("measure-",)),
    ("keys", ("Dedup/Keys",)),
    ("exact", ("Exact",)),
    ("pHash", ("PhashBands", "GroupBands", "PhashPairs")),
    ("semantic", ("HasEmbedding", "Count", "TrainingSample", "Embeddings", "KMeans", "BatchForAssign", "AssignClusters", "GroupClusters", "SemanticPairs")),
    ("components", ("AllPairs", "PairEnds", "KeyInfo", "JoinEnds", "Involved", "Resolve", "AllRemovals")),
]


def stage_of(name: str) -> str:
    """The dedup stage of a dask task (by its key) or of a Beam label."""
    name = name.replace(".", "/")
    hits = [(name.find(w), stage) for stage, words in _STAGES for w in (word.replace(".", "/") for word in words) if w in name]
    return min(hits)[1] if hits else "dask shuffle tasks"


def _task_name(key) -> str:
    return key[0] if isinstance(key, tuple) else str(key)


def _strip_label(label: str) -> str:
    return label.replace("FindDuplicates/", "").replace("Dedup/", "")


# --- one run -------------------------------------------------------------------------------


def run_once(rows: int, args) -> dict:
    import apache_beam as beam
    import distributed
    from apache_beam.options.pipeline_options import PipelineOptions

    from paircurate.pipeline.dedup import FindDuplicates
    from paircurate.schemas.config import DedupConfig, ImageConfig

    chunks = rows // CHUNK_ROWS
    where = tempfile.mkdtemp(prefix="scale-measure-")
    with distributed.LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, memory_limit=args.worker_memory,
    ) as cluster, distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        options = PipelineOptions(["--dask_client_address", cluster.scheduler_address])
        cfg = DedupConfig(semantic=args.semantic)
        p = beam.Pipeline(runner=measuring_runner(where, args.sample), options=options)
        removals = (
            p
            | "Chunks" >> beam.Create([(c, None) for c in range(chunks)])
            | "SpreadChunks" >> beam.GroupByKey()  # Create makes one partition; a shuffle spreads the chunks
            | "Generate" >> beam.FlatMap(lambda kv: synthetic_chunk(kv[0], args.seed, args.dup_fraction, args.semantic))
            | "Dedup" >> FindDuplicates(cfg, ImageConfig(), semantic=args.semantic)
        )
        counted = (
            removals
            | "ByReason" >> beam.Map(lambda r: (r["reason"], 1))
            | "CountReasons" >> beam.CombinePerKey(sum)
            | "Report" >> beam.Map(lambda kv, where: open(os.path.join(where, f"count-{kv[0]}.txt"), "w").write(str(kv[1])), where)
        )
        del counted
        sent_before = sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())
        with distributed.get_task_stream(client=client) as stream, PeakRss(pids) as rss:
            start = time.perf_counter()
            p.run().wait_until_finish()
            wall = time.perf_counter() - start
        sent = sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values()) - sent_before
        tasks = stream.data

    compute = defaultdict(float)
    for task in tasks:
        for ss in task.get("startstops", ()):
            if ss.get("action") == "compute":
                compute[stage_of(_task_name(task["key"]))] += ss["stop"] - ss["start"]
    shuffles = defaultdict(lambda: {"elements": 0, "sampled": 0, "sampled_bytes": 0})
    for path in glob.glob(os.path.join(where, "*.json")):
        with open(path) as fh:
            m = json.load(fh)
        s = shuffles[_strip_label(m["label"])]
        for k in ("elements", "sampled", "sampled_bytes"):
            s[k] += m[k]
    removed = {os.path.basename(p)[6:-4]: int(open(p).read()) for p in glob.glob(os.path.join(where, "count-*.txt"))}
    return {
        "rows": rows,
        "workers": args.workers,
        "semantic": args.semantic,
        "wall_s": round(wall, 1),
        "peak_rss_mib": {k: round(v / 2**20) for k, v in sorted(rss.peaks.items())},
        "worker_cpu_s": round(sum(rss.cpu_s.values()), 1),
        "tasks": len(tasks),
        "dask_bytes_between_workers_per_row": round(sent / rows, 1),
        "removed": removed,
        "planted": planted_count(rows, args.seed, args.dup_fraction),
        "compute_s": {k: round(v, 1) for k, v in sorted(compute.items(), key=lambda kv: -kv[1])},
        "shuffle": {
            label: {
                "stage": stage_of(label),
                "elements": s["elements"],
                "bytes_per_row": round(s["sampled_bytes"] / max(s["sampled"], 1) * s["elements"] / rows, 1),
            }
            for label, s in sorted(shuffles.items(), key=lambda kv: (stage_of(kv[0]), kv[0]))
        },
    }


def measure_planning(rows: int) -> dict:
    """Seconds the driver spends planning (``plan_inputs`` counts every row) for one Parquet list of ``rows`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from paircurate.pipeline.read import plan_inputs
    from paircurate.schemas.config import InputConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "list.parquet")
        ids = np.arange(rows)
        table = pa.table({
            "url": pa.array([f"http://img{i % 997}.example.com/{i}.jpg" for i in ids]),
            "caption": pa.array([f"a photo number {i} of something" for i in ids]),
        })
        pq.write_table(table, path, row_group_size=100_000)
        start = time.perf_counter()
        (planned,) = plan_inputs(InputConfig(paths=(path,)))
        seconds = time.perf_counter() - start
        assert planned.num_rows == rows
        return {"planning_rows": rows, "planning_s": round(seconds, 2), "planning_rows_per_s": round(rows / seconds)}


# --- extrapolation -----------------------------------------------------------------------------
#
# CPU(n) = (linear part per row, measured) * n + the three kernels whose work
# grows faster than n, each timed here on one thread:
#   pHash:    within each LSH bucket all pairs are compared; band b has 2^w_b
#             buckets of n / 2^w_b random hashes: sum_b n^2 / 2^(w_b + 1) pairs;
#   semantic: k = min(sqrt n, training sample) clusters of m = n / k members,
#             each also probed by ~m queries (nprobe 2): ~1.5 * n * m dot products;
#   assign:   n * k dot products against the centroids (FAISS IndexFlatIP).

KMEANS_SAMPLE = 50_000  # paircurate.pipeline.dedup.KMEANS_TRAINING_POINTS


def kernel_rates() -> dict:
    """Comparisons per second of one thread for the pHash, semantic and assignment kernels."""
    import faiss

    from paircurate.dedup.perceptual import pairs_within
    from paircurate.dedup.semantic import cluster_pairs, nearest_clusters

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    b = 6000
    items = [(f"u{i}", format(int(h), "016x")) for i, h in enumerate(rng.integers(0, 2**63, size=b, dtype=np.int64))]
    start = time.perf_counter()
    pairs_within(items, 4, band=0)
    phash_rate = b * (b - 1) / 2 / (time.perf_counter() - start)

    m = 3000
    x = _unit(rng.standard_normal((2 * m, DIM), dtype=np.float32))
    clusters = np.array([[0, 1]] * m + [[1, 0]] * m)
    start = time.perf_counter()
    cluster_pairs(0, [f"u{i:05d}" for i in range(2 * m)], x, clusters, 0.95)
    semantic_rate = 1.5 * m * m / (time.perf_counter() - start)

    centroids = _unit(rng.standard_normal((4096, DIM), dtype=np.float32))
    batch = _unit(rng.standard_normal((8192, DIM), dtype=np.float32))
    start = time.perf_counter()
    nearest_clusters(batch, centroids, k=2)
    assign_rate = len(batch) * len(centroids) / (time.perf_counter() - start)
    return {"phash_pairs_per_s": phash_rate, "semantic_dots_per_s": semantic_rate, "assign_dots_per_s": assign_rate}


def kernel_work(n: int) -> dict:
    from paircurate.dedup.perceptual import band_layout

    k = min(max(1, round(np.sqrt(n))), KMEANS_SAMPLE)
    return {
        "phash_pairs": sum(n * n / 2 ** (w + 1) for _, w in band_layout(4)),
        "semantic_dots": 1.5 * n * (n / k),
        "assign_dots": n * k,
        "k": k,
        "largest_phash_bucket": n / 2**12,
        "semantic_group_rows": 2 * n / k,
    }


def kernel_cpu_s(n: int, rates: dict, semantic: bool = True) -> dict:
    work = kernel_work(n)
    out = {"pHash": work["phash_pairs"] / rates["phash_pairs_per_s"]}
    if semantic:
        out["semantic"] = work["semantic_dots"] / rates["semantic_dots_per_s"] + work["assign_dots"] / rates["assign_dots_per_s"]
    return out


def extrapolate(results: list[dict], sizes: list[int]) -> None:
    """Per-row shuffle bytes and linear CPU from the largest measured runs, plus the kernels, at ``sizes``."""
    rates = kernel_rates()
    print("\nkernel rates, one thread on this (shared) machine: " + ", ".join(f"{k} {v:.3g}" for k, v in rates.items()))
    runs = [r for r in results if "rows" in r]
    with_sem = max((r for r in runs if r["semantic"]), key=lambda r: r["rows"])
    without = max((r for r in runs if not r["semantic"]), key=lambda r: r["rows"], default=with_sem)
    bench_only = ("generate (bench only)", "count removals (bench only)", "measure (bench only)")

    def linear_cpu_per_row(run: dict) -> float:
        # Worker CPU of the run, less the bench-only stages (by their share of task time), less the kernels.
        # Runs without worker_cpu_s (older JSON) fall back to task time: an upper bound on a shared machine.
        total = sum(run["compute_s"].values())
        dedup = sum(v for k, v in run["compute_s"].items() if k not in bench_only)
        cpu = run["worker_cpu_s"] * dedup / total if "worker_cpu_s" in run else dedup
        kernels = sum(kernel_cpu_s(run["rows"], rates, run["semantic"]).values())
        return max(cpu - kernels, 0.0) / run["rows"]

    def fixed(label: str) -> bool:
        # The k-means sample (~100,000 rows) and the side inputs do not grow with n.
        return label.startswith("side input") or "TrainingSample" in label

    def stage_bytes(run: dict) -> dict:
        totals = defaultdict(float)
        for label, s in run["shuffle"].items():
            if s["stage"] not in bench_only and not fixed(label):
                totals[s["stage"]] += s["bytes_per_row"]
        return totals

    for label, s in with_sem["shuffle"].items():
        if fixed(label) and s["bytes_per_row"]:
            print(f"gathered on one worker whatever n: {label}: {s['bytes_per_row'] * with_sem['rows'] / 2**20:.0f} MiB at {with_sem['rows']:,} rows")

    lin_sem, lin_plain = linear_cpu_per_row(with_sem), linear_cpu_per_row(without)
    bytes_sem, bytes_plain = stage_bytes(with_sem), stage_bytes(without)
    print(f"linear CPU per row: {lin_plain * 1e3:.2f} ms without embeddings ({without['rows']:,}-row run), "
          f"{lin_sem * 1e3:.2f} ms with ({with_sem['rows']:,}-row run)")
    print("\n| rows | k clusters | pHash pairs compared | semantic dot products | CPU core-hours: linear / pHash / semantic | shuffled TB: exact / pHash / semantic / components |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        work, kern = kernel_work(n), kernel_cpu_s(n, rates)
        # Exact and pHash keys do not depend on embeddings; components and semantic come
        # from the run with embeddings, whose pairs include the semantic ones.
        b = {stage: bytes_plain.get(stage, 0.0) for stage in ("exact", "pHash")}
        b.update({stage: bytes_sem.get(stage, 0.0) for stage in ("semantic", "components")})
        print(f"| {n:,} | {work['k']:,} | {work['phash_pairs']:.2g} | {work['semantic_dots'] + work['assign_dots']:.2g} | "
              f"{lin_sem * n / 3600:,.1f} / {kern['pHash'] / 3600:,.1f} / {kern['semantic'] / 3600:,.1f} | "
              f"{b['exact'] * n / 1e12:.3g} / {b['pHash'] * n / 1e12:.3g} / {b['semantic'] * n / 1e12:.3g} / {b['components'] * n / 1e12:.3g} |")


def print_table(result: dict) -> None:
    print(f"\n## {result['rows']:,} rows, {result['workers']} workers, semantic={result['semantic']}: "
          f"{result['wall_s']} s, {result['worker_cpu_s']} worker CPU s, {result['tasks']} dask tasks, peak RSS per worker {result['peak_rss_mib']} MiB, "
          f"dask moved {result['dask_bytes_between_workers_per_row']} B/row between workers; "
          f"removed {result['removed']} (planted {result['planted']})")
    print("\n| stage | shuffle or side input | elements | bytes per input row |\n|---|---|---|---|")
    for label, s in result["shuffle"].items():
        print(f"| {s['stage']} | {label} | {s['elements']:,} | {s['bytes_per_row']} |")
    totals = defaultdict(float)
    for s in result["shuffle"].values():
        totals[s["stage"]] += s["bytes_per_row"]
    print("\n| stage | compute s (both workers) | shuffled + gathered bytes per row |\n|---|---|---|")
    for stage in sorted(set(result["compute_s"]) | set(totals)):
        print(f"| {stage} | {result['compute_s'].get(stage, 0.0)} | {round(totals.get(stage, 0.0), 1)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=[100_000], help="sizes to run (multiples of 10,000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-memory", default="8GiB", help="dask memory_limit per worker")
    ap.add_argument("--dup-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=16, help="encode 1 in N elements to estimate shuffle bytes")
    ap.add_argument("--no-semantic", dest="semantic", action="store_false", help="records without embeddings (a run without CLIP)")
    ap.add_argument("--json", help="append results to this JSON-lines file")
    ap.add_argument("--planning-rows", type=int, default=0, help="also time the driver's planning of a Parquet list of this many rows")
    ap.add_argument("--extrapolate", metavar="JSON", help="no runs: extrapolate the results in this JSON-lines file to --to sizes")
    ap.add_argument("--to", type=int, nargs="+", default=[1_000_000, 100_000_000, 5_000_000_000])
    args = ap.parse_args()
    if args.extrapolate:
        with open(args.extrapolate) as fh:
            extrapolate([json.loads(line) for line in fh if line.strip()], args.to)
        return
    if args.planning_rows:
        result = measure_planning(args.planning_rows)
        print(f"\ndriver planning (plan_inputs) of {result['planning_rows']:,} rows: {result['planning_s']} s, {result['planning_rows_per_s']:,} rows/s")
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(result) + "\n")
    for rows in args.rows:
        if rows % CHUNK_ROWS:
            ap.error(f"--rows {rows}: must be a multiple of {CHUNK_ROWS}")
        result = run_once(rows, args)
        print_table(result)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
