"""Dedup stage: exact, perceptual and semantic near-duplicates, and evaluation-set contamination.

Works on small key records (uid, shard, score, sha256, normalized URL, pHash,
image embedding), never on image bytes:

    keys --(sha256 | URL)--------- GroupByKey -> exact pairs
         --(pHash band)----------- GroupByKey -> pHash pairs (pigeonhole LSH: no all-pairs)
         --(nearest centroids)---- GroupByKey -> semantic pairs (SemDeDup, FAISS k-means)
    all pairs + the scores of their endpoints -> connected components -> one keeper per group
                                                  (rounds of per-node steps: no worker holds all pairs)

The keeper of a group is the highest CLIP score, then the smallest uid, so the
same input gives the same output on any runner and in any order. The output
is one removal per removed uid, keyed by shard; the shard writer turns those
samples into reject rows (``duplicate_exact`` / ``duplicate_phash`` /
``duplicate_semantic`` / ``eval_contamination``) with ``duplicate_of`` and
``similarity``.
"""

from __future__ import annotations

import hashlib
import logging

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from paircurate import storage
from paircurate.dedup.components import (
    best_edge_rank,
    exact_pairs,
    keeper_rank,
    large_star,
    merge_labels,
    removal_for,
    residual_edges,
    small_star,
)
from paircurate.dedup.perceptual import PhashIndex, pairs_within, phash_bands, phash_of_encoded
from paircurate.imaging.prepare import prepare_image
from paircurate.pipeline.stage import REJECTED, IsolatedDoFn, RowIsolation
from paircurate.schemas import records as R
from paircurate.schemas.config import DedupConfig, ImageConfig
from paircurate.schemas.identity import normalize_url
from paircurate.schemas.outcomes import Reason, Stage
from paircurate.storage.layout import OutputLayout, embeddings_beside

log = logging.getLogger(__name__)

PINNED = "pinned"  # a record of an earlier release: it can be a keeper, never removed
KMEANS_TRAINING_POINTS = 50_000
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def dedup_key(record: dict) -> dict:
    """The few fields dedup needs; the embedding is None without CLIP."""
    emb = record.get(R.IMAGE_EMBEDDING)
    return {
        R.UID: record[R.UID],
        R.SHARD: record[R.SHARD],
        R.CLIP_SCORE: record.get(R.CLIP_SCORE),
        R.SHA256: record.get(R.SHA256),
        R.URL: normalize_url(record[R.URL]),
        R.PHASH: record.get(R.PHASH),
        R.IMAGE_EMBEDDING: None if emb is None else np.asarray(emb, dtype=np.float32),
        PINNED: False,
    }


def _removal_of_failed_key(reject: dict) -> dict:
    """A sample dedup could not key leaves through the removals: the shard writer makes it a reject row."""
    return {R.UID: reject[R.UID], R.SHARD: reject[R.SHARD], R.REASON: reject[R.REASON], R.DUPLICATE_OF: None, R.SIMILARITY: None, R.DETAIL: reject[R.DETAIL]}


class _DedupKeyFn(IsolatedDoFn):
    STAGE = Stage.DEDUP

    def make_isolation(self) -> RowIsolation:
        return RowIsolation(Stage.DEDUP, to_output=lambda row: beam.pvalue.TaggedOutput(REJECTED, _removal_of_failed_key(row)))

    def process_record(self, record: dict):
        yield dedup_key(record)


def reference_shards(out_dir: str) -> list[str]:
    """The shard Parquet files of an earlier run (``--dedup-against``), local or on a store."""
    paths = OutputLayout(out_dir).shard_files("parquet")
    if not paths:
        raise FileNotFoundError(f"--dedup-against {out_dir}: no shard Parquet files (NNNNN.parquet) found")
    return paths


def read_reference_keys(path: str):
    """Key records of one shard of an earlier run; read on a worker, not in the driver."""
    with storage.open_read(path) as fh:
        table = pq.read_table(fh, columns=[R.UID, R.URL, R.SHA256, R.PHASH, R.CLIP_SCORE])
    npy = embeddings_beside(path)
    emb = None
    if storage.exists(npy):
        with storage.open_read(npy) as fh:
            emb = np.load(fh).astype(np.float32)
    for i, row in enumerate(table.to_pylist()):
        yield {
            R.UID: row[R.UID], R.SHARD: -1, R.CLIP_SCORE: row[R.CLIP_SCORE], R.SHA256: row[R.SHA256],
            R.URL: normalize_url(row[R.URL]), R.PHASH: row[R.PHASH],
            R.IMAGE_EMBEDDING: None if emb is None else emb[i], PINNED: True,
        }


def load_eval_hashes(source: str, image_cfg: ImageConfig) -> list[tuple[str, str, str]]:
    """(eval id, sha256, pHash) of an evaluation set: a folder of images or a Parquet file.

    Evaluation images go through the same preparation (resize mode, size) as
    the crawled ones before hashing, so both hashes see the same framing.

    A Parquet file needs an ``id`` (or ``uid``) column and either ``phash`` /
    ``sha256`` columns or an ``image`` column of encoded bytes.
    """
    items = []
    if storage.isdir(source):
        for path in storage.find(source):
            if path.lower().endswith(_IMAGE_SUFFIXES):
                data = storage.read_bytes(path)
                items.append((path[len(source.rstrip("/")) + 1 :], *_hashes_of(data, path, image_cfg)))
    else:
        with storage.open_read(source) as fh:
            table = pq.read_table(fh)
        names = table.column_names
        id_col = "id" if "id" in names else "uid"
        if id_col not in names:
            raise ValueError(f"--decontaminate-against {source}: needs an 'id' or 'uid' column (has {names})")
        for row in table.to_pylist():
            if "image" in names and row.get("image") is not None:
                items.append((str(row[id_col]), *_hashes_of(row["image"], f"{source} id {row[id_col]}", image_cfg)))
            else:
                items.append((str(row[id_col]), row.get("sha256"), row.get("phash")))
    if not items:
        raise ValueError(f"--decontaminate-against {source}: no images found")
    return items


def _hashes_of(data: bytes, where: str, image_cfg: ImageConfig) -> tuple[str, str | None]:
    sha = hashlib.sha256(data).hexdigest()
    try:
        return sha, phash_of_encoded(prepare_image(data, image_cfg).data)
    except Exception as exc:  # an unreadable eval image still matches by its bytes
        log.warning("evaluation image %s does not decode (%s); matching it by sha256 only", where, exc)
        return sha, None


class _DecontaminateFn(IsolatedDoFn):
    """Removes keys that match an evaluation image; passes the rest on."""

    STAGE = Stage.DEDUP

    def make_isolation(self) -> RowIsolation:
        return RowIsolation(Stage.DEDUP, to_output=lambda row: beam.pvalue.TaggedOutput("removed", _removal_of_failed_key(row)))

    def __init__(self, source: str, threshold: int, image_cfg: ImageConfig) -> None:
        self._source = source
        self._threshold = threshold
        self._image_cfg = image_cfg

    def setup(self) -> None:
        items = load_eval_hashes(self._source, self._image_cfg)
        self._by_sha = {}
        for eval_id, sha, _ in items:
            if sha:
                self._by_sha.setdefault(sha, eval_id)
        self._index = PhashIndex([(eval_id, ph) for eval_id, _, ph in items if ph], self._threshold)

    def process_record(self, key: dict):
        if key[PINNED]:
            yield key
            return
        eval_id = self._by_sha.get(key[R.SHA256])
        similarity = 1.0
        if eval_id is None and key[R.PHASH]:
            match = self._index.best(key[R.PHASH])
            if match is not None:
                eval_id, similarity = match.ref_id, match.similarity
        if eval_id is None:
            yield key
        else:
            yield beam.pvalue.TaggedOutput("removed", _removal(key, Reason.EVAL_CONTAMINATION, eval_id, similarity))


def _removal(key: dict, reason: Reason, duplicate_of: str, similarity: float) -> dict:
    return {R.UID: key[R.UID], R.SHARD: key[R.SHARD], R.REASON: reason.value, R.DUPLICATE_OF: duplicate_of, R.SIMILARITY: float(similarity)}


def _exact_keys(key: dict):
    if key[R.SHA256]:
        yield ("sha256", key[R.SHA256]), key[R.UID]
    yield ("url", key[R.URL]), key[R.UID]


def _phash_bucket_keys(key: dict, threshold: int):
    if key[R.PHASH]:
        for band, value in phash_bands(key[R.PHASH], threshold):
            yield (band, value), (key[R.UID], key[R.PHASH])


class _AssignClustersFn(beam.DoFn):
    """Keys each record by its ``nprobe`` nearest centroids (SemDeDup with border queries)."""

    def __init__(self, nprobe: int) -> None:
        self._nprobe = nprobe

    def process(self, batch: list[dict], centroids: np.ndarray):
        from paircurate.dedup.semantic import nearest_clusters

        batch = [k for k in batch if k[R.IMAGE_EMBEDDING] is not None]
        if not batch:
            return
        _, clusters = nearest_clusters(np.stack([k[R.IMAGE_EMBEDDING] for k in batch]), centroids, k=self._nprobe)
        for key, row in zip(batch, clusters):
            for cid in row:
                yield int(cid), (key[R.UID], key[R.IMAGE_EMBEDDING], row)


def _cluster_pairs(item, threshold: float):
    from paircurate.dedup.semantic import cluster_pairs

    cid, members = item
    members = sorted(members, key=lambda m: m[0])  # same order on every runner
    uids = [m[0] for m in members]
    return cluster_pairs(cid, uids, np.stack([m[1] for m in members]), np.stack([m[2] for m in members]), threshold)


def in_sample_range(key: dict, count: int, size: int) -> bool:
    """Whether a key's uid lies in the lowest ``2 * size / count`` of the uid space (hex uids)."""
    fraction = 2 * size / max(count, 1)
    if fraction >= 1:
        return True
    try:
        return int(key[R.UID][:12], 16) < fraction * 16**12
    except ValueError:  # not a hex uid: keep it, Top.Of still picks the smallest
        return True


def _train_centroids(sample: list[np.ndarray], count: int, n_clusters: int) -> np.ndarray | None:
    from paircurate.dedup.semantic import default_n_clusters, train_kmeans

    if not sample:
        return None
    k = min(n_clusters or default_n_clusters(count), len(sample))
    return train_kmeans(np.stack(sample), k, seed=0)


def _endpoint_info(item):
    uid, grouped = item
    if grouped["pairs"] and grouped["info"]:
        yield uid, grouped["info"][0]


# Large-star / small-star rounds unrolled in the graph. Dedup graphs are
# mostly stars and small cliques, settled after one round; the rest (long
# chains) shrink fast, and whatever is left after the last round is merged
# exactly on one worker (see ResolveComponents).
COMPONENT_ROUNDS = 3


def _both_directions(edge: tuple[str, str]):
    a, b = edge
    yield a, b
    yield b, a


def _to_larger_end(edge: tuple[str, str]):
    a, b = edge
    yield (a, b) if a > b else (b, a)


def _labels_and_claims(item):
    """Per node: its label (smallest of its closed neighbourhood), and that label as a claim on each neighbour."""
    node, neighbours = item
    neighbours = set(neighbours)
    label = min(neighbours | {node})
    yield beam.pvalue.TaggedOutput("labels", (node, label))
    for v in neighbours:
        yield v, label


def _residual(item):
    _, grouped = item
    (label,) = grouped["label"]
    return residual_edges(label, grouped["claims"])


def _component_of(item, merged: dict):
    node, label = item
    return node, merged.get(label, label)


def _rank_in_component(item):
    """(component, (keeper rank, shard, best edge)) of one uid that takes part in a duplicate pair."""
    uid, grouped = item
    (component,) = grouped["component"]
    (best,) = grouped["best"]
    score, shard, pinned = grouped["info"][0]
    return component, (keeper_rank(uid, score, pinned), shard, best)


def _removals_of_component(item):
    _, grouped = item
    (keeper,) = grouped["keeper"]
    keeper_uid = keeper[-1]
    for rank, shard, best in grouped["members"]:
        uid, pinned = rank[-1], not rank[0]
        if uid == keeper_uid or pinned:
            continue
        r = removal_for(best, keeper_uid)
        yield {R.UID: uid, R.SHARD: shard, R.REASON: r.reason.value, R.DUPLICATE_OF: r.duplicate_of, R.SIMILARITY: r.similarity}


class ResolveComponents(beam.PTransform):
    """(duplicate pairs, ``(uid, (score, shard, pinned))`` of their endpoints) -> removals.

    The same removals as :func:`paircurate.dedup.components.resolve_duplicates`
    on all pairs at once, computed with shuffles keyed by uid or by component:

    1. each uid's strongest edge (kind, then similarity): a combine per uid;
    2. the components: ``rounds`` of large-star then small-star, each a group
       by node of the current edges; then each node's label (the smallest uid
       around it) and the label pairs that still disagree, merged on one worker
       (empty when the rounds converged, which is the usual case);
    3. the keeper of each component (pinned, score, uid): a combine per
       component; then one removal per other, unpinned member.

    A group never holds more than one node's neighbours or one component's
    members, so memory per worker is bounded by the largest duplicate group,
    not by the number of pairs.
    """

    def __init__(self, rounds: int = COMPONENT_ROUNDS) -> None:
        super().__init__()
        self._rounds = rounds

    def expand(self, inputs):
        pairs, infos = inputs
        best = (
            pairs
            | "EdgeStrength" >> beam.FlatMap(lambda p: [(p.a, best_edge_rank(p)), (p.b, best_edge_rank(p))])
            | "StrongestEdge" >> beam.CombinePerKey(min)
        )
        edges = pairs | "Edges" >> beam.Map(lambda p: (p.a, p.b)) | "DistinctEdges" >> beam.Distinct()
        for i in range(self._rounds):
            edges = (
                edges
                | f"LargeStarKeys{i}" >> beam.FlatMap(_both_directions)
                | f"LargeStarGroup{i}" >> beam.GroupByKey()
                | f"LargeStar{i}" >> beam.FlatMapTuple(large_star)
                | f"SmallStarKeys{i}" >> beam.FlatMap(_to_larger_end)
                | f"SmallStarGroup{i}" >> beam.GroupByKey()
                | f"SmallStar{i}" >> beam.FlatMapTuple(small_star)
            )
        neighbourhoods = (
            edges
            | "LabelKeys" >> beam.FlatMap(_both_directions)
            | "Neighbourhoods" >> beam.GroupByKey()
            | "LabelsAndClaims" >> beam.FlatMap(_labels_and_claims).with_outputs("labels", main="claims")
        )
        labels = neighbourhoods.labels
        residual = (
            {"label": labels, "claims": neighbourhoods.claims}
            | "JoinClaims" >> beam.CoGroupByKey()
            | "Residual" >> beam.FlatMap(_residual)
            | "DistinctResidual" >> beam.Distinct()
        )
        # Only the labels still to merge travel to one worker: nothing when the rounds converged.
        merged = (
            pairs.pipeline
            | "MergeOnce" >> beam.Create([None])
            | "MergeResidual" >> beam.FlatMap(lambda _, edges: merge_labels(edges).items(), edges=beam.pvalue.AsList(residual))
        )
        components = labels | "Components" >> beam.Map(_component_of, merged=beam.pvalue.AsDict(merged))
        ranked = (
            {"component": components, "best": best, "info": infos}
            | "JoinPerUid" >> beam.CoGroupByKey()
            | "RankInComponent" >> beam.Map(_rank_in_component)
        )
        keepers = (
            ranked
            | "Ranks" >> beam.Map(lambda kv: (kv[0], kv[1][0]))
            | "Keeper" >> beam.CombinePerKey(min)
        )
        return (
            {"members": ranked, "keeper": keepers}
            | "JoinKeeper" >> beam.CoGroupByKey()
            | "Removals" >> beam.FlatMap(_removals_of_component)
        )


class FindDuplicates(beam.PTransform):
    """Kept samples -> removals ``{uid, shard, reason, duplicate_of, similarity}``.

        >>> removals = kept | FindDuplicates(cfg.dedup, cfg.image, semantic=cfg.clip.enabled)

    ``written_shards``: Parquet files of shards this output folder already
    holds (an earlier pass, or the run being resumed). Like ``--dedup-against``
    shards they are pinned keepers, so a new sample that duplicates a written
    one is removed and nothing written is contradicted.
    """

    def __init__(self, cfg: DedupConfig, image_cfg: ImageConfig, semantic: bool, written_shards: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._cfg = cfg
        self._image_cfg = image_cfg
        self._semantic = semantic and cfg.semantic
        self._nprobe = cfg.semantic_nprobe
        self._written = written_shards

    def expand(self, samples):
        cfg = self._cfg
        if not (cfg.exact or cfg.perceptual or self._semantic or cfg.decontaminate_against):
            return samples.pipeline | "NoRemovals" >> beam.Create([])  # nothing would read the key records
        keyed = samples | "Keys" >> beam.ParDo(_DedupKeyFn()).with_outputs(REJECTED, main="keys")
        keys = keyed.keys
        removals = [keyed[REJECTED]]
        pinned = (reference_shards(cfg.dedup_against) if cfg.dedup_against else []) + list(self._written)
        if pinned and (cfg.exact or cfg.perceptual or self._semantic):
            reference = (
                keys.pipeline
                | "EarlierRunShards" >> beam.Create(pinned)
                | "EarlierRunKeys" >> beam.FlatMap(read_reference_keys)
            )
            keys = (keys, reference) | "WithEarlierRun" >> beam.Flatten()
        if cfg.decontaminate_against:
            split = keys | "Decontaminate" >> beam.ParDo(_DecontaminateFn(cfg.decontaminate_against, cfg.phash_threshold, self._image_cfg)).with_outputs("removed", main="clean")
            keys = split.clean
            removals.append(split.removed)

        pair_sets = []
        if cfg.exact:
            pair_sets.append(
                keys
                | "ExactKeys" >> beam.FlatMap(_exact_keys)
                | "GroupExact" >> beam.GroupByKey()
                | "ExactPairs" >> beam.FlatMap(lambda kv: exact_pairs(kv[1]))
            )
        if cfg.perceptual:
            t = cfg.phash_threshold
            pair_sets.append(
                keys
                | "PhashBands" >> beam.FlatMap(_phash_bucket_keys, t)
                | "GroupBands" >> beam.GroupByKey()
                | "PhashPairs" >> beam.FlatMap(lambda kv: pairs_within(list(kv[1]), t, band=kv[0][0]))
            )
        if self._semantic:
            with_emb = keys | "HasEmbedding" >> beam.Filter(lambda k: k[R.IMAGE_EMBEDDING] is not None)
            count = with_emb | "Count" >> beam.combiners.Count.Globally()
            # The training sample is the smallest uids: uids are hashes, so this
            # is a uniform sample, and the same one on every run and runner.
            # Top.Of alone would send every bundle's candidates (up to the whole
            # input, embeddings included) to one worker; a filter on the uid's
            # value first lets through about twice the sample, which holds the
            # smallest uids unless the uids are not uniform hashes.
            centroids = (
                with_emb
                | "SampleRange" >> beam.Filter(in_sample_range, count=beam.pvalue.AsSingleton(count), size=KMEANS_TRAINING_POINTS)
                | "TrainingSample" >> beam.combiners.Top.Of(KMEANS_TRAINING_POINTS, key=lambda k: k[R.UID], reverse=True)
                | "Embeddings" >> beam.Map(lambda ks: [k[R.IMAGE_EMBEDDING] for k in ks])
                | "KMeans" >> beam.Map(_train_centroids, count=beam.pvalue.AsSingleton(count), n_clusters=cfg.semantic_clusters)
            )
            pair_sets.append(
                with_emb
                | "BatchForAssign" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
                | "AssignClusters" >> beam.ParDo(_AssignClustersFn(self._nprobe), centroids=beam.pvalue.AsSingleton(centroids))
                | "GroupClusters" >> beam.GroupByKey()
                | "SemanticPairs" >> beam.FlatMap(_cluster_pairs, cfg.semantic_threshold)
            )
        if pair_sets:
            pairs = pair_sets | "AllPairs" >> beam.Flatten()
            ends = pairs | "PairEnds" >> beam.FlatMap(lambda p: [(p.a, 1), (p.b, 1)])
            info = keys | "KeyInfo" >> beam.Map(lambda k: (k[R.UID], (k[R.CLIP_SCORE], k[R.SHARD], k[PINNED])))
            involved = {"pairs": ends, "info": info} | "JoinEnds" >> beam.CoGroupByKey() | "Involved" >> beam.FlatMap(_endpoint_info)
            removals.append((pairs, involved) | "Resolve" >> ResolveComponents())
        return removals | "AllRemovals" >> beam.Flatten()
