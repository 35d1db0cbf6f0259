"""Deduplication algorithms: pHash and its LSH bands, keeper resolution, SemDeDup, FAISS helpers."""

from __future__ import annotations

import io
import itertools
import random
from collections import defaultdict

import numpy as np
import pytest
from helpers import brighter, crop_border, encode, half_size, photo
from paircurate.dedup.components import (
    DuplicatePair,
    Removal,
    exact_pairs,
    resolve_duplicates,
)
from paircurate.dedup.perceptual import (
    Match,
    PhashIndex,
    band_layout,
    hamming,
    pairs_within,
    phash,
    phash_bands,
)
from paircurate.dedup.semantic import (
    assign_clusters,
    cluster_pairs,
    nearest_clusters,
    normalize,
    semantic_pairs,
    semdedup,
    semdedup_indices,
    train_kmeans,
)
from paircurate.schemas.outcomes import Reason
from PIL import Image

THRESHOLD = 4  # DedupConfig.phash_threshold default
EXACT, PHASH, SEMANTIC = Reason.DUPLICATE_EXACT, Reason.DUPLICATE_PHASH, Reason.DUPLICATE_SEMANTIC


# --- generated photo-like images (tests/helpers.py) --------------------------


def jpeg_q60(img: Image.Image) -> Image.Image:
    return Image.open(io.BytesIO(encode(img, quality=60)))


COPIES = {"jpeg_q60": jpeg_q60, "half_size": half_size, "brightness_+5%": brighter, "crop_0.5%": lambda im: crop_border(im, 0.005)}
SEEDS = range(8)


@pytest.fixture(scope="module")
def photo_hashes():
    """uid -> hash for originals ('o3') and their copies ('o3-jpeg_q60')."""
    hashes = {}
    for seed in SEEDS:
        original = photo(seed)
        hashes[f"o{seed}"] = phash(original)
        for name, make in COPIES.items():
            hashes[f"o{seed}-{name}"] = phash(make(original))
    return hashes


# --- pHash ---------------------------------------------------------------------


def test_phash_is_64_bits_as_16_hex_and_hamming_counts_bits():
    h = phash(photo(0))
    assert len(h) == 16 and int(h, 16) >= 0
    assert hamming(h, h) == 0
    flipped = format(int(h, 16) ^ 0b1011, "016x")
    assert hamming(h, flipped) == 3
    with pytest.raises(ValueError, match="16 hex"):
        hamming(h, "abc")


def test_phash_accepts_grey_and_transparent_images():
    img = photo(1)
    assert hamming(phash(img), phash(img.convert("L"))) <= 2
    assert len(phash(img.convert("RGBA"))) == 16


@pytest.mark.parametrize("copy", COPIES)
def test_injected_copies_stay_within_threshold(photo_hashes, copy):
    distances = [hamming(photo_hashes[f"o{s}"], photo_hashes[f"o{s}-{copy}"]) for s in SEEDS]
    assert max(distances) <= THRESHOLD, distances


def test_distinct_photos_are_far_apart(photo_hashes):
    originals = [photo_hashes[f"o{s}"] for s in SEEDS]
    distances = [hamming(a, b) for a, b in itertools.combinations(originals, 2)]
    assert min(distances) > 2 * THRESHOLD, sorted(distances)[:5]


def test_five_percent_crop_is_beyond_phash_reach():
    # A limitation, pinned down so nobody relies on pHash for crops: the DCT
    # of a 5 %-cropped image moves 4-20 bits (real photos too). Semantic
    # dedup is what catches crops.
    distances = [hamming(phash(photo(s)), phash(crop_border(photo(s), 0.05))) for s in SEEDS]
    assert np.median(distances) > THRESHOLD, distances


# --- LSH bands ----------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0, 1, 4, 7, 10, 63])
def test_band_layout_covers_64_bits_in_nearly_equal_bands(threshold):
    layout = band_layout(threshold)
    assert len(layout) == threshold + 1
    assert sum(w for _, w in layout) == 64
    assert max(w for _, w in layout) - min(w for _, w in layout) <= 1
    assert [s for s, _ in layout] == list(itertools.accumulate([0] + [w for _, w in layout][:-1]))


def test_band_layout_rejects_thresholds_bands_cannot_cover():
    with pytest.raises(ValueError, match="0..63"):
        band_layout(64)


def test_phash_bands_example_and_pigeonhole_on_random_hashes():
    assert phash_bands("ffff0000ffff0000", 3) == [(0, "ffff"), (1, "0"), (2, "ffff"), (3, "0")]
    rng = random.Random(0)
    for threshold in (2, 4, 8):
        for _ in range(300):
            h = rng.getrandbits(64)
            flipped = h
            for bit in rng.sample(range(64), rng.randint(0, threshold)):
                flipped ^= 1 << bit
            a, b = format(h, "016x"), format(flipped, "016x")
            assert set(phash_bands(a, threshold)) & set(phash_bands(b, threshold))


def lsh_pairs(hashes: dict[str, str], threshold: int, per_band: bool = True) -> list[DuplicatePair]:
    """What the pipeline does: group by band key, then pairs within each bucket."""
    buckets = defaultdict(list)
    for uid, h in hashes.items():
        for key in phash_bands(h, threshold):
            buckets[key].append((uid, h))
    pairs = []
    for (band, _), items in buckets.items():
        pairs.extend(pairs_within(items, threshold, band=band if per_band else None))
    return pairs


def test_band_buckets_find_every_injected_copy_once(photo_hashes):
    pairs = lsh_pairs(photo_hashes, THRESHOLD)
    keys = [(p.a, p.b) for p in pairs]
    assert len(keys) == len(set(keys)), "a pair came out of more than one bucket"
    for p in pairs:
        assert p.a.split("-")[0] == p.b.split("-")[0], f"distinct photos paired: {p}"
        assert p.kind is PHASH and p.similarity == 1 - hamming(photo_hashes[p.a], photo_hashes[p.b]) / 64
    # No scores: the smallest uid, the original, keeps; every copy joins its group.
    removed = resolve_duplicates(pairs, {})
    assert set(removed) == {u for u in photo_hashes if "-" in u}
    assert all(r.duplicate_of == uid.split("-")[0] for uid, r in removed.items())


def test_lsh_buckets_equal_brute_force_on_random_near_hashes():
    rng = random.Random(1)
    hashes = {}
    for c in range(60):
        centre = rng.getrandbits(64)
        for k in range(5):
            h = centre
            for bit in rng.sample(range(64), rng.randint(0, 6)):
                h ^= 1 << bit
            hashes[f"{c:03x}{k}"] = format(h, "016x")
    # Records sharing a hash are represented by their smallest uid.
    rep = {}
    for uid in sorted(hashes):
        rep.setdefault(hashes[uid], uid)
    truth = {
        (a, b)
        for a, b in itertools.combinations(sorted(rep.values()), 2)
        if hamming(hashes[a], hashes[b]) <= THRESHOLD
    }
    pairs = lsh_pairs(hashes, THRESHOLD)
    assert {(p.a, p.b) for p in pairs if p.similarity < 1.0} == truth
    assert {(p.a, p.b) for p in pairs if p.similarity == 1.0} == {(rep[h], u) for u, h in hashes.items() if rep[h] != u}
    # Same groups as linking every pair within the threshold.
    all_pairs = [
        DuplicatePair(a, b, PHASH, 1.0)
        for a, b in itertools.combinations(sorted(hashes), 2)
        if hamming(hashes[a], hashes[b]) <= THRESHOLD
    ]
    groups = lambda removed: {(u, r.duplicate_of) for u, r in removed.items()}  # noqa: E731
    assert groups(resolve_duplicates(pairs, {})) == groups(resolve_duplicates(all_pairs, {}))
    without_band = lsh_pairs(hashes, THRESHOLD, per_band=False)
    assert {(p.a, p.b) for p in without_band} == {(p.a, p.b) for p in pairs}


def test_pairs_within_links_identical_hashes_as_a_star():
    items = [(f"u{i:04d}", "8000000000000000") for i in range(1000)] + [("zz", "8000000000000001")]
    pairs = pairs_within(items, THRESHOLD)
    assert len(pairs) == 1000  # 999 star edges + one between the two distinct hashes
    assert all(p.a == "u0000" for p in pairs)
    assert DuplicatePair("u0000", "zz", PHASH, 1 - 1 / 64) in pairs
    assert pairs_within(items, THRESHOLD, band=1) == []  # identical hashes belong to band 0's bucket


# --- exact pairs and keepers -------------------------------------------------


def test_duplicate_pair_is_ordered_and_validated():
    assert DuplicatePair.of("f0", "0a", EXACT, 1.0) == DuplicatePair("0a", "f0", EXACT, 1.0)
    with pytest.raises(ValueError, match="a < b"):
        DuplicatePair("f0", "0a", EXACT, 1.0)
    with pytest.raises(ValueError, match="a < b"):
        DuplicatePair.of("aa", "aa", EXACT, 1.0)
    with pytest.raises(ValueError, match="kind"):
        DuplicatePair("0a", "f0", Reason.EVAL_CONTAMINATION, 1.0)


def test_exact_pairs_is_a_star_on_the_smallest_uid():
    assert exact_pairs(["c", "a", "b", "a"]) == [DuplicatePair("a", "b", EXACT, 1.0), DuplicatePair("a", "c", EXACT, 1.0)]
    assert exact_pairs(["a"]) == []


def test_keeper_is_highest_score_then_smallest_uid():
    pairs = [DuplicatePair("a", "b", PHASH, 0.95), DuplicatePair("b", "c", PHASH, 0.97)]
    removed = resolve_duplicates(pairs, {"a": 0.2, "b": 0.3, "c": 0.25})
    assert set(removed) == {"a", "c"}
    assert removed["a"] == Removal(PHASH, "b", 0.95)
    assert removed["c"] == Removal(PHASH, "b", 0.97)
    tie = resolve_duplicates(pairs, {"a": 0.3, "b": 0.3, "c": 0.3})
    assert set(tie) == {"b", "c"} and tie["c"].duplicate_of == "a"


def test_missing_none_and_nan_scores_count_as_lowest():
    pairs = [DuplicatePair("a", "b", EXACT, 1.0), DuplicatePair("b", "c", EXACT, 1.0)]
    assert set(resolve_duplicates(pairs, {"a": None, "b": float("nan"), "c": -5.0})) == {"a", "b"}
    assert set(resolve_duplicates(pairs, {})) == {"b", "c"}  # no scores at all: smallest uid keeps


def test_transitive_groups_get_one_keeper_even_if_linked_through_removed_members():
    # a~b (exact), b~c (phash), c~d (semantic): one group, d kept for its score
    pairs = [DuplicatePair("a", "b", EXACT, 1.0), DuplicatePair("b", "c", PHASH, 0.9375), DuplicatePair("c", "d", SEMANTIC, 0.96)]
    removed = resolve_duplicates(pairs, {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4})
    assert set(removed) == {"a", "b", "c"}
    assert {r.duplicate_of for r in removed.values()} == {"d"}
    assert removed["a"] == Removal(EXACT, "d", 1.0)
    assert removed["b"] == Removal(EXACT, "d", 1.0)  # exact beats its phash edge
    assert removed["c"] == Removal(PHASH, "d", 0.9375)  # phash beats its (closer) semantic edge


def test_reason_priority_and_best_similarity_within_a_kind():
    pairs = [
        DuplicatePair("a", "k", SEMANTIC, 0.99),
        DuplicatePair("a", "k", PHASH, 0.90625),
        DuplicatePair("b", "k", SEMANTIC, 0.96),
        DuplicatePair("b", "c", SEMANTIC, 0.98),
    ]
    removed = resolve_duplicates(pairs, {"k": 1.0})
    assert removed["a"] == Removal(PHASH, "k", 0.90625)
    assert removed["b"] == Removal(SEMANTIC, "k", 0.98)
    assert removed["c"] == Removal(SEMANTIC, "k", 0.98)


def test_resolution_does_not_depend_on_pair_order():
    rng = random.Random(7)
    uids = [f"{i:04x}" for i in range(120)]
    kinds = [EXACT, PHASH, SEMANTIC]
    pairs = []
    for _ in range(150):
        a, b = rng.sample(uids, 2)
        pairs.append(DuplicatePair.of(a, b, rng.choice(kinds), round(rng.uniform(0.9, 1.0), 3)))
    scores = {u: (None if rng.random() < 0.2 else rng.choice([0.1, 0.2, 0.3])) for u in uids}
    expected = resolve_duplicates(pairs, scores)
    for _ in range(20):
        rng.shuffle(pairs)
        assert resolve_duplicates(iter(pairs), scores) == expected
    kept = {u for p in pairs for u in (p.a, p.b)} - set(expected)
    assert all(r.duplicate_of in kept for r in expected.values())


def test_pinned_records_win_and_are_never_removed():
    pairs = [DuplicatePair("a", "b", SEMANTIC, 0.97), DuplicatePair("b", "z", SEMANTIC, 0.96), DuplicatePair("y", "z", PHASH, 1.0)]
    removed = resolve_duplicates(pairs, {"a": 0.9, "b": 0.1}, pinned={"z", "y"})
    assert set(removed) == {"a", "b"}
    assert removed["a"].duplicate_of == "y"  # best pinned member: no score, so smallest uid


# --- reference matching (decontamination) ------------------------------------


def test_phash_index_ranks_matches_and_refuses_wider_queries():
    index = PhashIndex([("b", "0000000000000003"), ("a", "0000000000000003"), ("c", "0000000000000000")], threshold=4)
    assert index.matches("0000000000000001") == [("a", 1), ("b", 1), ("c", 1)]
    assert index.best("0000000000000002") == Match("a", 1 - 1 / 64)
    assert index.best("ffffffffffffffff") is None
    assert index.matches("0000000000000003", threshold=0) == [("a", 0), ("b", 0)]
    with pytest.raises(ValueError, match="exceeds"):
        index.matches("0000000000000003", threshold=5)


# --- embeddings: normalisation, k-means, exact semantic pairs ----------------


def planted(n: int, dim: int = 64, n_dups: int = 40, seed: int = 0) -> np.ndarray:
    """Random unit vectors plus near-copies at cosines spread around 0.95."""
    rng = np.random.default_rng(seed)
    x = normalize(rng.standard_normal((n, dim)))
    src = rng.choice(n, n_dups, replace=False)
    cos = rng.uniform(0.9, 1.0, n_dups)
    u = rng.standard_normal((n_dups, dim))
    u -= np.sum(u * x[src], axis=1, keepdims=True) * x[src]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    copies = cos[:, None] * x[src] + np.sqrt(1 - cos**2)[:, None] * u
    return normalize(np.vstack([x, copies]))


def brute_force(x: np.ndarray, threshold: float) -> tuple[set, set]:
    """(pairs at or above threshold, pairs within a rounding step of it), in float64."""
    x64 = x.astype(np.float64)
    x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), k=1)
    s = (x64 @ x64.T)[i, j]
    sure = {(a, b) for a, b, v in zip(i.tolist(), j.tolist(), s) if v >= threshold + 1e-9}
    near = {(a, b) for a, b, v in zip(i.tolist(), j.tolist(), s) if abs(v - threshold) < 1e-9}
    return sure, near


def test_normalize_makes_unit_float32_rows_and_keeps_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    already = out[:1].copy()
    assert normalize(already) is already  # no 2 GB copy for CLIP output that is already unit norm
    with pytest.raises(ValueError, match="row 1"):
        normalize(np.array([[1.0, 0.0], [np.nan, 1.0]]))


def test_semantic_pairs_is_exact_against_brute_force():
    x = planted(600, n_dups=60)
    uids = [f"{i:05x}" for i in range(len(x))]
    sure, near = brute_force(x, 0.95)
    assert len(sure) > 20
    found = {(int(p.a, 16), int(p.b, 16)) for p in semantic_pairs(uids, x, 0.95)}
    assert sure <= found <= sure | near
    for p in semantic_pairs(uids, x, 0.95):
        assert p.kind is SEMANTIC and 0.95 - 1e-6 <= p.similarity <= 1.0
        assert p.similarity == pytest.approx(float(x[int(p.a, 16)] @ x[int(p.b, 16)]), abs=1e-5)


def test_semantic_pairs_handles_identical_vectors_and_blocks(monkeypatch):
    import paircurate.dedup.semantic as index_module

    x = planted(300, n_dups=30)
    x = np.vstack([x, x[:5]])  # exact copies, cosine 1 (clipped, never above)
    uids = [f"{i:05x}" for i in range(len(x))]
    whole = semantic_pairs(uids, x, 0.95)
    monkeypatch.setattr(index_module, "_TRIANGLE_ROWS", 7)  # many small blocks: same answer
    monkeypatch.setattr(index_module, "_QUERY_BATCH", 50)
    assert semantic_pairs(uids, x, 0.95) == whole
    assert max(p.similarity for p in whole) == 1.0
    assert {(f"{i:05x}", f"{300 + 30 + i:05x}") for i in range(5)} <= {(p.a, p.b) for p in whole}
    assert {(p.a, p.b) for p in semantic_pairs(uids, x, 1.0)} == {(f"{i:05x}", f"{330 + i:05x}") for i in range(5)}


def test_semantic_pairs_do_not_depend_on_record_order():
    # Beam hands a group's records over in any order; similarities must not move in the last bit.
    x = planted(800, n_dups=80, seed=4)
    uids = [f"{i:05x}" for i in range(len(x))]
    order = np.random.default_rng(0).permutation(len(x))
    assert semantic_pairs([uids[i] for i in order], x[order], 0.95) == semantic_pairs(uids, x, 0.95)


def test_train_kmeans_is_deterministic_for_a_seed():
    x = planted(3000, n_dups=0)
    a = train_kmeans(x, 12, seed=3, max_points_per_centroid=100)  # subsamples 1200 of 3000
    b = train_kmeans(x, 12, seed=3, max_points_per_centroid=100)
    c = train_kmeans(x, 12, seed=4, max_points_per_centroid=100)
    assert a.shape == (12, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert train_kmeans(x[:5], 12, gpu=False).shape == (5, 64)  # never more clusters than points


def test_assign_clusters_picks_the_nearest_centroid():
    x = planted(500, n_dups=0)
    centroids = train_kmeans(x, 8, seed=0)
    labels = assign_clusters(x, centroids)
    np.testing.assert_array_equal(labels, np.argmax(x @ centroids.T, axis=1))
    sims, top = nearest_clusters(x, centroids, k=3)
    assert top.shape == (500, 3) and (top[:, 0] == labels).all()
    assert (np.diff(sims, axis=1) <= 1e-6).all()


def test_semdedup_reports_each_pair_once_and_is_exact_when_probing_every_cluster():
    x = planted(2000, n_dups=150, seed=5)
    uids = [f"{i:05x}" for i in range(len(x))]
    sure, near = brute_force(x, 0.95)
    everywhere = semdedup(uids, x, 0.95, n_clusters=10, nprobe=10)
    keys = [(int(p.a, 16), int(p.b, 16)) for p in everywhere]
    assert len(keys) == len(set(keys))
    assert sure <= set(keys) <= sure | near
    stats = {}
    i, j, _ = semdedup_indices(x, 0.95, n_clusters=10, nprobe=2, stats=stats)
    found = set(zip(i.tolist(), j.tolist()))
    assert len(found) == len(i) and (i < j).all()
    assert found <= sure | near
    assert stats["n_clusters"] == 10 and stats["nprobe"] == 2
    plain = set(zip(*semdedup_indices(x, 0.95, n_clusters=10, nprobe=1)[:2]))
    assert len(plain & sure) <= len(found & sure)  # probing a second cluster never loses pairs


def test_cluster_pairs_per_group_matches_semdedup():
    # The pipeline's path: key each record by its top-2 clusters, group, call cluster_pairs per group.
    x = planted(1500, n_dups=120, seed=9)
    uids = [f"{i:05x}" for i in range(len(x))]
    centroids = train_kmeans(x, 8, seed=0)
    _, top = nearest_clusters(x, centroids, k=2)
    groups = defaultdict(list)
    for row, clusters in enumerate(top):
        for c in clusters:
            groups[int(c)].append(row)
    pairs = []
    for c, rows in groups.items():
        pairs.extend(cluster_pairs(c, [uids[r] for r in rows], x[rows], top[rows], 0.95))
    keys = [(p.a, p.b) for p in pairs]
    assert len(keys) == len(set(keys)), "a pair was reported by two clusters"
    direct = semdedup(uids, x, 0.95, n_clusters=8, nprobe=2, seed=0)
    assert sorted(pairs, key=lambda p: (p.a, p.b)) == direct
    with pytest.raises(ValueError, match="grouped under cluster"):
        cluster_pairs(99, uids[:2], x[:2], top[:2], 0.95)
