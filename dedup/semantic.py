"""SemDeDup with FAISS: k-means clusters, then near pairs of CLIP image embeddings within each.

Vectors are L2-normalised first, so inner product means cosine similarity.

SemDeDup in one process (the benchmark, small runs):

    >>> pairs = semdedup(uids, image_embeddings, threshold=0.95)   # list[DuplicatePair]

The same steps as the pipeline runs them, one cluster per group:

    >>> centroids = train_kmeans(sample, n_clusters=default_n_clusters(n), seed=0)
    >>> sims, clusters = nearest_clusters(batch, centroids, k=2)    # per record: primary first
    >>> # key each record by every id in its row of ``clusters``, group by key, then per group:
    >>> pairs = cluster_pairs(cluster_id, uids, embeddings, clusters_of_those_records, 0.95)

Why ``k=2``: plain SemDeDup puts each point in one cluster and compares only
within it, so a pair that straddles a cluster border is never compared. Each
point is therefore also compared, as a *query*, with the members of its next
nearest centroid(s); members of a cluster are the points whose nearest centroid
it is. A pair is still reported exactly once (see :func:`cluster_pairs`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import faiss
import numpy as np
from paircurate.dedup.components import DuplicatePair
from paircurate.schemas.outcomes import Reason

log = logging.getLogger(__name__)

_QUERY_BATCH = 8192
_TRIANGLE_ROWS = 256
# k-means training sample per centroid. Measured on 100k synthetic CLIP-like
# vectors (316 clusters): 64 instead of 256 points cut training from ~20 s to
# ~2 s on 2 cores with the same cluster balance and recall (3,700 vs 3,702
# pairs found at nprobe=2).
POINTS_PER_CENTROID = 64
# float32 dot products of unit 512-d vectors are off by ~1e-6 at most; candidates
# within this margin below the threshold get an exact float64 check.
_CANDIDATE_MARGIN = 1e-4
# Identical vectors have a float64 cosine a rounding step below 1.0: a
# threshold of exactly 1 must still match them.
_COSINE_TOLERANCE = 1e-9


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as C-contiguous float32.

    Returns ``x`` itself when it already is unit-norm float32 (CLIP output
    usually is): copying a million 512-d vectors costs 2 GB. All-zero rows
    stay zero, matching nothing.
    """
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n, dim), got shape {arr.shape}")
    norms = _row_norms(arr)
    if not np.isfinite(norms).all():
        raise ValueError(f"embedding row {int(np.flatnonzero(~np.isfinite(norms))[0])} holds NaN or infinity")
    if arr is x and np.all(np.abs(norms - 1.0) < 1e-4):
        return arr
    out = arr / np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]
    return out.astype(np.float32, copy=False)


def _row_norms(x: np.ndarray, rows: int = 16384) -> np.ndarray:
    # In chunks and in float64: a whole-array x * x would be another copy of
    # x, and float32 squares overflow for large components.
    norms = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), rows):
        chunk = x[start : start + rows].astype(np.float64)
        norms[start : start + rows] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    return norms


def default_n_clusters(n: int) -> int:
    """About sqrt(n) clusters: k-means and per-cluster comparisons then cost about the same."""
    return max(1, int(round(math.sqrt(n))))


def train_kmeans(
    embeddings: np.ndarray,
    n_clusters: int,
    seed: int = 0,
    gpu: bool | None = None,
    niter: int = 20,
    max_points_per_centroid: int = POINTS_PER_CENTROID,
) -> np.ndarray:
    """Spherical k-means centroids (unit norm, float32, shape (k, dim)).

    The same data, seed and thread count give the same centroids. At most
    ``max_points_per_centroid`` points per centroid are used for training,
    drawn with ``seed``: more barely moves the centroids and costs linearly.
    ``gpu=None`` uses a GPU when this FAISS build sees one; ``True`` without
    one falls back to the CPU with a log line.
    """
    return _train_kmeans(normalize(embeddings), n_clusters, seed, gpu, niter, max_points_per_centroid)


def _train_kmeans(
    x: np.ndarray, n_clusters: int, seed: int, gpu: bool | None, niter: int, max_points_per_centroid: int
) -> np.ndarray:
    n, dim = x.shape
    if n == 0:
        raise ValueError("cannot train k-means on zero embeddings")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    k = min(n_clusters, n)
    if k < n_clusters:
        log.info("k-means: %d clusters requested for %d points; using %d", n_clusters, n, k)
    budget = k * max_points_per_centroid
    if n > budget:
        # Our own draw rather than FAISS's: it is seeded the same way on CPU
        # and GPU and avoids FAISS copying the whole array first.
        rows = np.sort(np.random.default_rng(seed).choice(n, size=budget, replace=False))
        x = x[rows]
    kmeans = faiss.Kmeans(
        dim,
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        gpu=_use_gpu(gpu),
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,  # small clusters are fine here; silences FAISS's warning
        verbose=False,
    )
    kmeans.train(x)
    return normalize(np.array(kmeans.centroids, dtype=np.float32).reshape(k, dim))


def nearest_clusters(embeddings: np.ndarray, centroids: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, cluster id) of each row's ``k`` nearest centroids, nearest first; both (n, k)."""
    return _nearest(normalize(embeddings), normalize(centroids), k)


def _nearest(x: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, len(c))
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    sims, ids = index.search(x, k)
    return sims, ids.astype(np.int64, copy=False)


def assign_clusters(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each row, int64 of shape (n,)."""
    return nearest_clusters(embeddings, centroids, k=1)[1][:, 0]


def semantic_pairs(uids: Sequence[str], embeddings: np.ndarray, threshold: float) -> list[DuplicatePair]:
    """Every pair of rows with cosine >= ``threshold``, exactly (blocked matrix products).

    Quadratic in ``len(uids)``: meant for one cluster, not a whole dataset.
    """
    x = _checked(uids, embeddings, threshold)
    clusters = np.zeros((len(x), 1), dtype=np.int64)
    li, lj, sims = _pairs_in_cluster(0, x, clusters, threshold)
    return _to_pairs(uids, li, lj, sims)


def cluster_pairs(
    cluster_id: int,
    uids: Sequence[str],
    embeddings: np.ndarray,
    clusters: np.ndarray,
    threshold: float,
) -> list[DuplicatePair]:
    """Duplicate pairs found in one cluster's group, each pair reported by one cluster only.

    ``clusters`` holds each record's row from :func:`nearest_clusters` (its
    nearest centroids, nearest first); every row must contain ``cluster_id``.
    Records whose nearest centroid is ``cluster_id`` are members and are
    compared with each other; the rest are queries, compared with members
    only. A member-query pair that the query's own cluster also sees (the
    member lists that cluster among its nearest) is left to whichever of the
    two clusters has the smaller id.
    """
    x = _checked(uids, embeddings, threshold)
    topk = np.asarray(clusters, dtype=np.int64).reshape(len(x), -1)
    missing = np.flatnonzero(~(topk == cluster_id).any(axis=1))
    if missing.size:
        i = int(missing[0])
        raise ValueError(f"record {uids[i]!r} is grouped under cluster {cluster_id} but its clusters are {topk[i].tolist()}")
    li, lj, sims = _pairs_in_cluster(cluster_id, x, topk, threshold)
    return _to_pairs(uids, li, lj, sims)


def semdedup_indices(
    embeddings: np.ndarray,
    threshold: float,
    n_clusters: int = 0,
    nprobe: int = 2,
    seed: int = 0,
    gpu: bool | None = None,
    max_points_per_centroid: int = POINTS_PER_CENTROID,
    workers: int = 0,
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SemDeDup over a whole array: (i, j, cosine) arrays with i < j, sorted.

    ``n_clusters=0`` means :func:`default_n_clusters`. ``nprobe`` is how many
    nearest clusters each point is compared in: 1 is plain SemDeDup; 2 finds
    most pairs that straddle a border (see the module docstring) for about
    three times the comparisons. Clusters are processed by ``workers``
    threads (0: one per CPU), each running FAISS single-threaded.
    ``stats``, when given, receives stage timings and cluster sizes.
    """
    x = normalize(embeddings)
    return _semdedup(x, threshold, n_clusters, nprobe, seed, gpu, max_points_per_centroid, workers, stats)


def _semdedup(
    x: np.ndarray,
    threshold: float,
    n_clusters: int,
    nprobe: int,
    seed: int,
    gpu: bool | None,
    max_points_per_centroid: int,
    workers: int,
    stats: dict[str, Any] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _check_threshold(threshold)
    n = len(x)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
    if n < 2:
        return empty
    k = min(n_clusters or default_n_clusters(n), n)
    t0 = time.perf_counter()
    centroids = _train_kmeans(x, k, seed, gpu, 20, max_points_per_centroid)
    t1 = time.perf_counter()
    _, topk = _nearest(x, centroids, max(1, min(nprobe, len(centroids))))
    t2 = time.perf_counter()

    p = topk.shape[1]
    flat = topk.ravel()
    points = np.argsort(flat, kind="stable") // p
    bounds = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=len(centroids)))])
    members_per_cluster = np.bincount(topk[:, 0], minlength=len(centroids))
    group_sizes = np.diff(bounds)
    compared = int(np.sum(members_per_cluster * (members_per_cluster - 1) // 2 + members_per_cluster * (group_sizes - members_per_cluster)))

    def one_cluster(c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = points[bounds[c] : bounds[c + 1]]
        li, lj, sims = _pairs_in_cluster(c, x[idx], topk[idx], threshold)
        return idx[li], idx[lj], sims

    # Largest groups first, so no big cluster is left running alone at the end.
    todo = sorted(np.flatnonzero(members_per_cluster).tolist(), key=lambda c: -int(group_sizes[c]))
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        found = [r for r in pool.map(one_cluster, todo) if r[0].size]
    t3 = time.perf_counter()
    if stats is not None:
        stats.update(
            n_clusters=len(centroids),
            nprobe=p,
            kmeans_s=t1 - t0,
            assign_s=t2 - t1,
            pairs_s=t3 - t2,
            largest_cluster=int(members_per_cluster.max()),
            comparisons=compared,
        )
    if not found:
        return empty
    gi, gj, sims = (np.concatenate(parts) for parts in zip(*found))
    i, j = np.minimum(gi, gj), np.maximum(gi, gj)
    order = np.lexsort((j, i))
    return i[order], j[order], sims[order]


def semdedup(uids: Sequence[str], embeddings: np.ndarray, threshold: float, **options: Any) -> list[DuplicatePair]:
    """SemDeDup end to end: k-means, assignment, per-cluster pairs, as DuplicatePairs.

    ``options`` are those of :func:`semdedup_indices`.
    """
    x = _checked(uids, embeddings, threshold)
    return _to_pairs(uids, *semdedup_indices(x, threshold, **options))


# --- internals ---------------------------------------------------------------


def _use_gpu(gpu: bool | None) -> bool:
    if gpu is False:
        return False
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n_gpus > 0:
        return True
    if gpu:
        log.warning("k-means: GPU requested but this FAISS build sees no GPU; using the CPU")
    return False


def _check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"semantic threshold must be in (0, 1], got {threshold}")


def _checked(uids: Sequence[str], embeddings: np.ndarray, threshold: float) -> np.ndarray:
    _check_threshold(threshold)
    x = normalize(embeddings)
    if len(uids) != len(x):
        raise ValueError(f"{len(uids)} uids for {len(x)} embeddings")
    return x


def _range_radius(threshold: float) -> float:
    # FAISS keeps inner products strictly above the radius; one float32 step
    # down makes it ">= threshold", as everywhere else in this module.
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def _pairs_in_cluster(
    cluster_id: int, x: np.ndarray, topk: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local (i, j, cosine) pairs of one cluster's group; see :func:`cluster_pairs`."""
    # FAISS range searches find candidates a margin below the threshold; the
    # final test uses the float64 cosine of each candidate, which does not
    # depend on how BLAS blocked the product. So the pipeline's per-group
    # calls and semdedup() agree to the last bit, whatever the record order.
    loose = threshold - _CANDIDATE_MARGIN
    is_member = topk[:, 0] == cluster_id
    members = np.flatnonzero(is_member)
    queries = np.flatnonzero(~is_member)
    xm = x[members] if queries.size else x
    m = len(members)
    out_i, out_j = [], []

    with _one_blas_thread():
        # Only the upper triangle is needed: each block of rows is compared
        # with itself and the members after it. Short blocks skip most of the
        # lower triangle (about 60 % of the full square at 1,000 members).
        for start in range(0, m, _TRIANGLE_ROWS):
            r, c = _range_hits(xm[start:], xm[start : start + _TRIANGLE_ROWS], loose)
            upper = c > r
            out_i.append(members[r[upper] + start])
            out_j.append(members[c[upper] + start])

        if queries.size and m:
            r, c = _range_hits(xm, x[queries], loose)
            qi, mj = queries[r], members[c]
            # The query's own cluster also compares this pair when the member
            # lists that cluster among its nearest; the smaller id reports it.
            own = topk[qi, 0]
            seen_there = (topk[mj, 1:] == own[:, None]).any(axis=1) & (own < cluster_id)
            out_i.append(qi[~seen_there])
            out_j.append(mj[~seen_there])

    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    sims = _exact_cosine(x[i], x[j])
    keep = sims >= threshold - _COSINE_TOLERANCE
    return i[keep], j[keep], np.minimum(sims[keep], 1.0)


def _range_hits(base: np.ndarray, queries: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(query row, base row) of every inner product above ``radius``."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    rows, cols = [], []
    # Bounded batches: FAISS holds all hits of a call in memory at once.
    for start in range(0, len(queries), _QUERY_BATCH):
        lims, _, ids = index.range_search(queries[start : start + _QUERY_BATCH], radius)
        rows.append(np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64))) + start)
        cols.append(ids.astype(np.int64))
    return np.concatenate(rows), np.concatenate(cols)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run FAISS single-threaded in the calling thread only.

    A cluster's products are small, and multi-threaded BLAS on small
    products loses badly as soon as the cores are shared (measured here: 18
    vs 57 GFLOPS with another job running). Parallelism comes from
    processing clusters concurrently instead: Beam's workers, or semdedup's
    thread pool. OpenMP's thread count is a per-thread setting, so this
    leaves other threads alone.
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _exact_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dots = np.einsum("ij,ij->i", a64, b64)
    norms = np.sqrt(np.einsum("ij,ij->i", a64, a64) * np.einsum("ij,ij->i", b64, b64))
    return dots / np.where(norms > 0, norms, 1.0)


def _to_pairs(uids: Sequence[str], i: np.ndarray, j: np.ndarray, sims: np.ndarray) -> list[DuplicatePair]:
    pairs = [
        DuplicatePair.of(uids[a], uids[b], Reason.DUPLICATE_SEMANTIC, s)
        for a, b, s in zip(i.tolist(), j.tolist(), sims.tolist())
        if uids[a] != uids[b]
    ]
    return sorted(pairs, key=lambda p: (p.a, p.b))
