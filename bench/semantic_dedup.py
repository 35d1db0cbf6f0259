"""SemDeDup (k-means + per-cluster pairs) against exact brute force, on synthetic CLIP-like embeddings.

For each size the data are generated once (a fresh process writes a .npy),
then every method runs in its own fresh process, so the peak RSS reported is
that method's alone (it includes the loaded data: "extra" is the peak minus
the RSS right after loading).

Data: 512-d unit vectors drawn around Gaussian cluster centres, which are
themselves grouped around "topic" centres (so k-means borders cut through
dense regions, as with real CLIP embeddings), plus planted near-duplicates:
5 % of the points get a copy at a cosine drawn uniformly in [0.93, 1]
(a tenth of them exact copies), so many planted pairs sit just above or
below the 0.95 threshold, where a pair is most likely to straddle a border.

Brute force is FAISS IndexFlatIP range search over all points. Above
--bf-full-max points it runs only a random subset of --bf-queries queries:
its time is scaled up to all n queries, and recall is computed on the pairs
that touch the subset (both marked "est."/"subset" in the table). A second
recall column needs no brute force: it is over every planted pair at or
above the threshold in the whole dataset (at 10k and 100k the brute-force
pairs are exactly the planted ones, so the two agree there).

    python bench/semantic_dedup.py --sizes 10000,100000,1000000
    python bench/semantic_dedup.py --sizes 100000 --nprobe 1,2,3 --bf-full-max 0 --bf-queries 5000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

DIM = 512


# --- data --------------------------------------------------------------------


def generate(n: int, path: str, seed: int = 0, dup_fraction: float = 0.05, chunk: int = 100_000) -> dict:
    """Write n synthetic embeddings to ``path`` (.npy, float32, unit rows), chunk by chunk."""
    rng = np.random.default_rng(seed)
    n_dup = int(round(n * dup_fraction))
    n_base = n - n_dup
    n_centres = int(np.clip(n // 250, 20, 4000))
    n_topics = max(5, n_centres // 40)
    topics = _unit(rng.standard_normal((n_topics, DIM), dtype=np.float32))
    centres = _unit(topics[rng.integers(n_topics, size=n_centres)] + rng.standard_normal((n_centres, DIM), dtype=np.float32) / np.sqrt(DIM))
    # Spread kept wide enough that two ordinary points of one centre sit at
    # cosine ~1/(1+sigma^2) <= 0.89: the pairs above 0.95 are the planted ones.
    sigma = rng.uniform(0.35, 1.0, n_centres).astype(np.float32)
    weights = rng.lognormal(0.0, 1.0, n_centres)  # uneven cluster sizes
    labels = rng.choice(n_centres, size=n_base, p=weights / weights.sum())

    positions = rng.permutation(n)  # copies are scattered, not appended
    base_pos, copy_pos = positions[:n_base], positions[n_base:]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n_base, chunk):
        lab = labels[start : start + chunk]
        noise = rng.standard_normal((len(lab), DIM), dtype=np.float32) * (sigma[lab, None] / np.sqrt(DIM))
        out[base_pos[start : start + chunk]] = _unit(centres[lab] + noise)
    sources = base_pos[rng.choice(n_base, size=n_dup, replace=False)]
    cosines = rng.uniform(0.93, 1.0, n_dup).astype(np.float32)
    cosines[rng.random(n_dup) < 0.1] = 1.0
    for start in range(0, n_dup, chunk):
        src = np.asarray(out[sources[start : start + chunk]])
        cos = cosines[start : start + chunk, None]
        u = rng.standard_normal(src.shape, dtype=np.float32)
        u = _unit(u - np.sum(u * src, axis=1, keepdims=True) * src)
        out[copy_pos[start : start + chunk]] = _unit(cos * src + np.sqrt(np.maximum(0.0, 1.0 - cos * cos)) * u)
    out.flush()
    # The planted pairs give a recall over the whole dataset without brute force.
    np.savez(planted_path(path), i=np.minimum(sources, copy_pos), j=np.maximum(sources, copy_pos))
    return {"n": n, "centres": n_centres, "topics": n_topics, "planted": n_dup}


def planted_path(data: str) -> str:
    return data[: -len(".npy")] + "_planted.npz"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- measured methods (each in its own process) ------------------------------


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB, from /proc (Linux)."""
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb, _ = line.split()
                values[key] = int(kb) / 1024
    if not values:  # not Linux: peak only
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak
    return values["VmRSS:"], values["VmHWM:"]


def run_semdedup(data: str, threshold: float, nprobe: int, out: str) -> dict:
    from paircurate.dedup.semantic import semdedup

    x = np.load(data)
    uids = [format(i, "016x") for i in range(len(x))]
    base_rss, _ = _rss_mb()
    stats: dict = {}
    start = time.perf_counter()
    pairs = semdedup(uids, x, threshold, nprobe=nprobe, stats=stats)
    wall = time.perf_counter() - start
    _, peak = _rss_mb()
    i = np.fromiter((int(p.a, 16) for p in pairs), dtype=np.int64, count=len(pairs))
    j = np.fromiter((int(p.b, 16) for p in pairs), dtype=np.int64, count=len(pairs))
    np.savez(out, i=i, j=j)
    return {"wall_s": wall, "base_rss_mb": base_rss, "peak_rss_mb": peak, "pairs": len(pairs), **stats}


def run_brute(data: str, threshold: float, n_queries: int, out: str, seed: int = 1, batch: int = 4096) -> dict:
    import faiss

    x = np.load(data)
    n = len(x)
    base_rss, _ = _rss_mb()
    queries = np.arange(n) if n_queries >= n else np.sort(np.random.default_rng(seed).choice(n, n_queries, replace=False))
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))  # FAISS keeps > radius; we want >=
    start = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    add_s = time.perf_counter() - start
    found_i, found_j = [], []
    for s in range(0, len(queries), batch):
        q = queries[s : s + batch]
        lims, _, ids = index.range_search(x[q], radius)
        rows = np.repeat(q, np.diff(lims.astype(np.int64)))
        other = ids.astype(np.int64)
        keep = other != rows
        found_i.append(np.minimum(rows[keep], other[keep]))
        found_j.append(np.maximum(rows[keep], other[keep]))
    search_s = time.perf_counter() - start - add_s
    _, peak = _rss_mb()
    keys = np.unique(np.concatenate(found_i) * n + np.concatenate(found_j)) if found_i else np.empty(0, np.int64)
    np.savez(out, keys=keys, queries=queries)
    full = len(queries) == n
    return {
        "wall_s": add_s + search_s if full else add_s + search_s * n / len(queries),
        "measured_s": add_s + search_s,
        "estimated": not full,
        "queries": int(len(queries)),
        "base_rss_mb": base_rss,
        "peak_rss_mb": peak,
        "pairs": int(len(keys)),
    }


# --- orchestration -------------------------------------------------------------


def _child(*args: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "_child", *args]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)  # child errors show on stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Other work on the machine slows both methods: record how busy it was.
    result["load_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    return result


def recall(sem_npz: str, bf_npz: str, n: int, data: str, threshold: float) -> dict:
    sem = np.load(sem_npz)
    bf = np.load(bf_npz)
    truth, queries = bf["keys"], bf["queries"]
    i, j = sem["i"], sem["j"]
    if len(queries) < n:  # only pairs touching the brute-force queries are known
        in_subset = np.zeros(n, dtype=bool)
        in_subset[queries] = True
        touch = in_subset[i] | in_subset[j]
        i, j = i[touch], j[touch]
    found = np.unique(i * n + j)
    hit = np.isin(truth, found)
    extra = found[~np.isin(found, truth)]
    result = {"truth": int(len(truth)), "found": int(len(found)), "recall": float(hit.mean()) if len(truth) else 1.0, "not_in_truth": int(len(extra))}
    x = np.load(data, mmap_mode="r")
    missed = truth[~hit]
    if len(missed):
        result["missed_cos_range"] = [round(float(v), 4) for v in _cosines(x, missed // n, missed % n)[[0, -1]]]
    result.update(planted_recall(sem["i"], sem["j"], n, data, threshold))
    return result


def planted_recall(i: np.ndarray, j: np.ndarray, n: int, data: str, threshold: float) -> dict:
    """Recall over every planted pair at or above the threshold, in the whole dataset."""
    planted = np.load(planted_path(data))
    x = np.load(data, mmap_mode="r")
    cos = _cosines(x, planted["i"], planted["j"], keep_order=True)
    above = cos >= threshold
    keys = planted["i"][above] * n + planted["j"][above]
    hit = np.isin(keys, i * n + j)
    return {"planted_truth": int(above.sum()), "planted_recall": float(hit.mean()) if above.any() else 1.0}


def _cosines(x: np.ndarray, a: np.ndarray, b: np.ndarray, keep_order: bool = False) -> np.ndarray:
    order = np.argsort(a)  # row-sorted reads from the memory map
    sims = np.empty(len(a))
    for s in range(0, len(a), 100_000):
        rows = order[s : s + 100_000]
        xa, xb = np.asarray(x[a[rows]], dtype=np.float64), np.asarray(x[b[rows]], dtype=np.float64)
        sims[rows] = np.einsum("ij,ij->i", xa, xb) / np.sqrt(np.einsum("ij,ij->i", xa, xa) * np.einsum("ij,ij->i", xb, xb))
    return sims if keep_order else np.sort(sims)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated dataset sizes")
    parser.add_argument("--nprobe", default="1,2", help="comma-separated: clusters each point is compared in (1 = plain SemDeDup)")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--bf-full-max", type=int, default=100_000, help="largest n brute-forced with all queries")
    parser.add_argument("--bf-queries", type=int, default=10_000, help="brute-force queries above --bf-full-max")
    parser.add_argument("--workdir", default="", help="where the .npy data go (default: a temporary folder)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    probes = [int(p) for p in args.nprobe.split(",") if p]

    workdir = args.workdir or tempfile.mkdtemp(prefix="semdedup-bench-")
    os.makedirs(workdir, exist_ok=True)
    print(f"cpus: {os.cpu_count()}, threshold {args.threshold}, workdir {workdir}", file=sys.stderr)
    rows = []
    for n in sizes:
        data = os.path.join(workdir, f"emb_{n}.npy")
        t = time.perf_counter()
        info = _child("gen", str(n), data)
        print(f"n={n}: generated in {time.perf_counter() - t:.1f}s {info}", file=sys.stderr)
        n_queries = n if n <= args.bf_full_max else args.bf_queries
        bf_out = os.path.join(workdir, f"bf_{n}.npz")
        bf = _child("brute", data, str(args.threshold), str(n_queries), bf_out)
        print(f"n={n}: brute force {bf}", file=sys.stderr)
        rows.append((n, "brute force (FAISS Flat range search)", bf, None))
        for p in probes:
            sem_out = os.path.join(workdir, f"sem_{n}_{p}.npz")
            sem = _child("semdedup", data, str(args.threshold), str(p), sem_out)
            rec = recall(sem_out, bf_out, n, data, args.threshold)
            print(f"n={n}: semdedup nprobe={p} {sem} {rec}", file=sys.stderr)
            rows.append((n, f"SemDeDup nprobe={p}", sem, rec))
        os.remove(data)
        os.remove(planted_path(data))
    print(_table(rows, args.threshold))


def _table(rows, threshold: float) -> str:
    lines = [
        f"Duplicate pairs at cosine >= {threshold}; {os.cpu_count()} CPU cores; "
        "RSS includes the loaded embeddings (n x 512 x 4 bytes); load = 1-min load average before/after each run.",
        "",
        "| n | method | clusters | time s | k-means / assign / pairs s | peak RSS MB (extra) | pairs | recall vs brute force | recall, all planted pairs | speed-up | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bf_time, bf_subset = {}, {}
    for n, method, res, rec in rows:
        extra = f"{res['peak_rss_mb']:.0f} (+{res['peak_rss_mb'] - res['base_rss_mb']:.0f})"
        if rec is None:
            bf_time[n] = res["wall_s"]
            bf_subset[n] = res["estimated"]
            if res["estimated"]:
                time_s = f"{res['wall_s']:.1f} est. ({res['measured_s']:.1f} for {res['queries']} queries)"
            else:
                time_s = f"{res['wall_s']:.1f}"
            lines.append(f"| {n:,} | {method} | - | {time_s} | - | {extra} | {res['pairs']:,}{' (subset)' if res['estimated'] else ''} | 1 (reference) | - | 1x | {_load(res)} |")
        else:
            stages = f"{res['kmeans_s']:.1f} / {res['assign_s']:.1f} / {res['pairs_s']:.1f}"
            subset = f", pairs touching {res_queries(rows, n):,} queries" if bf_subset[n] else ""
            missed_planted = rec["planted_truth"] - round(rec["planted_recall"] * rec["planted_truth"])
            planted_s = f"{rec['planted_recall']:.4f} ({missed_planted} of {rec['planted_truth']:,} missed)"
            rec_s = f"{rec['recall']:.4f} ({rec['truth'] - round(rec['recall'] * rec['truth'])} of {rec['truth']:,} missed{subset})"
            lines.append(
                f"| {n:,} | {method} | {res['n_clusters']} | {res['wall_s']:.1f} | {stages} | {extra} | {res['pairs']:,} | {rec_s} | {planted_s} | {bf_time[n] / res['wall_s']:.0f}x | {_load(res)} |"
            )
    return "\n".join(lines)


def _load(res: dict) -> str:
    return "/".join(str(v) for v in res.get("load_1min", []))


def res_queries(rows, n: int) -> int:
    return next(res["queries"] for m, _, res, rec in rows if m == n and rec is None)


def _child_main(args: list[str]) -> None:
    kind = args[0]
    if kind == "gen":
        result = generate(int(args[1]), args[2])
    elif kind == "semdedup":
        result = run_semdedup(args[1], float(args[2]), int(args[3]), args[4])
    elif kind == "brute":
        result = run_brute(args[1], float(args[2]), int(args[3]), args[4])
    else:
        raise SystemExit(f"unknown child command {kind!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child_main(sys.argv[2:])
    else:
        main()
