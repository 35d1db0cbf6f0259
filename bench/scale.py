"""Dedup at scale on the Dask runner: synthetic key records straight into FindDuplicates, no download.

Each row is what dedup sees of a downloaded sample: uid, shard, URL, CLIP
score, sha256, 64-bit pHash and a 512-d float16 image embedding. Rows are
generated on the workers, 10,000 per chunk (one shard), from the chunk's
seed, so the driver holds nothing. Planted copies (``--dup-fraction`` of the
rows, a third each): exact (same sha256, pHash and embedding), perceptual
(pHash 1-4 bits away, embedding at cosine 0.96-0.995) and semantic (new
pHash, embedding at cosine 0.96-0.995); a copy's source may itself be a copy,
so groups are stars and short chains. Ordinary embeddings lie around 1,024
shared centres at cosine ~0.8 from each other: only planted pairs are
duplicates.

Measured, per size, on a ``LocalCluster`` of ``--workers`` single-threaded
worker processes on 127.0.0.1:

- wall time of the pipeline run (cluster start-up excluded) and compute
  seconds per Beam step, from dask's task stream;
- peak RSS per worker process (psutil, sampled every 0.2 s);
- bytes per input row entering each shuffle (GroupByKey, CoGroupByKey,
  the shuffles inside combines) and each side input gathered on one
  worker, as Beam's ``FastPrimitivesCoder`` encodes the elements (what a
  Dataflow / Flink / Spark runner would move; numpy arrays are pickled), from
  a 1-in-``--sample`` sample of the elements; and the bytes dask actually
  moved between the two workers (``transfer_outgoing_bytes_total``).

    python bench/scale.py --rows 100000 1000000
    python bench/scale.py --rows 1000000 --no-semantic --json out.json
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
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


def synthetic_chunk(chunk: int, seed: int, dup_fraction: float):
    """The key records of one chunk (CHUNK_ROWS rows); deterministic for (chunk, seed)."""
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
            R.IMAGE_EMBEDDING: emb16[i],
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
    """Passes a partition on unchanged; writes the encoded size of a sample of it to ``where``."""
    from apache_beam.coders.coders import FastPrimitivesCoder

    coder = FastPrimitivesCoder()
    sampled = encoded = 0
    items = list(items)
    for item in items[::every]:
        sampled += 1
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

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


_HEX_SUFFIX = re.compile(r"-[0-9a-f]{8,}$")


def _step_of(key) -> str:
    name = key[0] if isinstance(key, tuple) else str(key)
    name = _HEX_SUFFIX.sub("", name)
    name = _HEX_SUFFIX.sub("", name)
    if name.startswith("measure-"):
        return "measuring (bench only)"
    if "." in name or name[:1].isupper():
        return name.replace(".", "/")
    return "dask: " + name.split("-")[0]  # groupby / shuffle / concat tasks of dask itself


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
            | "Generate" >> beam.FlatMap(lambda kv: synthetic_chunk(kv[0], args.seed, args.dup_fraction))
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
                compute[_step_of(task["key"])] += ss["stop"] - ss["start"]
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
        "dask_bytes_between_workers_per_row": round(sent / rows, 1),
        "removed": removed,
        "planted": planted_count(rows, args.seed, args.dup_fraction),
        "compute_s": {k: round(v, 1) for k, v in sorted(compute.items(), key=lambda kv: -kv[1])},
        "shuffle": {
            label: {
                "elements": s["elements"],
                "bytes_per_row": round(s["sampled_bytes"] / max(s["sampled"], 1) * s["elements"] / rows, 1),
            }
            for label, s in sorted(shuffles.items())
        },
    }


def print_table(result: dict) -> None:
    print(f"\n## {result['rows']:,} rows, {result['workers']} workers, semantic={result['semantic']}: "
          f"{result['wall_s']} s, peak RSS per worker {result['peak_rss_mib']} MiB, "
          f"dask moved {result['dask_bytes_between_workers_per_row']} B/row between workers; "
          f"removed {result['removed']} (planted {result['planted']})")
    print("\n| shuffle or side input | elements | bytes per input row |\n|---|---|---|")
    for label, s in result["shuffle"].items():
        print(f"| {label} | {s['elements']:,} | {s['bytes_per_row']} |")
    print("\n| step | compute s |\n|---|---|")
    for step, sec in result["compute_s"].items():
        print(f"| {step} | {sec} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000], help="sizes to run (multiples of 10,000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-memory", default="8GiB", help="dask memory_limit per worker")
    ap.add_argument("--dup-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=16, help="encode 1 in N elements to estimate shuffle bytes")
    ap.add_argument("--no-semantic", dest="semantic", action="store_false")
    ap.add_argument("--json", help="append results to this JSON-lines file")
    args = ap.parse_args()
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
