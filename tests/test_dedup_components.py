"""Distributed connected components (ResolveComponents) against one-worker union-find (resolve_duplicates).

Random duplicate graphs, long chains (the worst case for label propagation)
and stars (the usual shape of a copy group), with tied and missing scores,
pinned records and every kind of edge: the Beam transform must name exactly
the removals resolve_duplicates names, for any number of rounds (0 rounds
means the residual merge on one worker does all the work).
"""

from __future__ import annotations

import random
from collections import defaultdict

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paircurate.dedup.components import (
    DuplicatePair,
    large_star,
    merge_labels,
    residual_edges,
    resolve_duplicates,
    small_star,
)
from paircurate.pipeline.dedup import ResolveComponents
from paircurate.schemas import records as R
from paircurate.schemas.outcomes import Reason

KINDS = [Reason.DUPLICATE_EXACT, Reason.DUPLICATE_PHASH, Reason.DUPLICATE_SEMANTIC]
# Few distinct similarities and scores, so ties on both are common.
SIMILARITIES = [1.0, 0.96875, 0.95, 0.9375]
SCORES = [None, float("nan"), -1.0, 0.0, 0.25, 0.3]


def uid(i: int) -> str:
    return f"{i * 7919 % 100_003:06x}"  # not in the order of i, so chains zig-zag in uid order


def edges_to_pairs(edges, rng: random.Random) -> list[DuplicatePair]:
    return [DuplicatePair.of(uid(a), uid(b), rng.choice(KINDS), rng.choice(SIMILARITIES)) for a, b in edges if a != b]


def chain(n: int, rng: random.Random) -> list[tuple[int, int]]:
    order = list(range(n))
    rng.shuffle(order)
    return list(zip(order, order[1:]))


def star(n: int, rng: random.Random) -> list[tuple[int, int]]:
    centre = rng.randrange(n)
    return [(centre, i) for i in range(n) if i != centre]


def graph_case(draw_edges, rng: random.Random):
    pairs = edges_to_pairs(draw_edges, rng)
    nodes = sorted({u for p in pairs for u in (p.a, p.b)})
    scores = {u: rng.choice(SCORES) for u in nodes if rng.random() < 0.9}  # some uids have no score at all
    pinned = {u for u in nodes if rng.random() < 0.1}
    shards = {u: rng.randrange(4) for u in nodes}
    return pairs, scores, pinned, shards


def expected_removals(pairs, scores, pinned, shards) -> list[dict]:
    removed = resolve_duplicates(pairs, scores, pinned)
    return [
        {R.UID: u, R.SHARD: shards[u], R.REASON: r.reason.value, R.DUPLICATE_OF: r.duplicate_of, R.SIMILARITY: r.similarity}
        for u, r in removed.items()
    ]


def run_components(pairs, scores, pinned, shards, rounds: int) -> None:
    """Runs ResolveComponents on FnApiRunner and asserts it names exactly the removals resolve_duplicates names."""
    infos = [(u, (scores.get(u), shards[u], u in pinned)) for u in shards]
    expected = expected_removals(pairs, scores, pinned, shards)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        removals = (p | "Pairs" >> beam.Create(pairs), p | "Infos" >> beam.Create(infos)) | ResolveComponents(rounds=rounds)
        assert_that(removals, equal_to(expected))


# --- the steps in plain Python: many graphs, fast -------------------------------------


def components_by_rounds(pairs: list[DuplicatePair], rounds: int) -> dict[str, str]:
    """The same steps as ResolveComponents, with dicts for shuffles: uid -> smallest uid of its component."""
    labels, residual = labels_after_rounds(pairs, rounds)
    merged = merge_labels(residual)
    return {node: merged.get(label, label) for node, label in labels.items()}


def labels_after_rounds(pairs: list[DuplicatePair], rounds: int) -> tuple[dict[str, str], list[tuple[str, str]]]:
    edges = {(p.a, p.b) for p in pairs}
    for _ in range(rounds):
        around = defaultdict(set)
        for a, b in edges:
            around[a].add(b)
            around[b].add(a)
        edges = {e for node, ns in around.items() for e in large_star(node, ns)}
        smaller = defaultdict(set)
        for a, b in edges:
            smaller[max(a, b)].add(min(a, b))
        edges = {e for node, ns in smaller.items() for e in small_star(node, ns)}
    around = defaultdict(set)
    for a, b in edges:
        around[a].add(b)
        around[b].add(a)
    labels = {node: min(ns | {node}) for node, ns in around.items()}
    residual = {e for node, ns in around.items() for e in residual_edges(labels[node], [labels[v] for v in ns])}
    return labels, sorted(residual)


def union_find_components(pairs: list[DuplicatePair]) -> dict[str, str]:
    members = defaultdict(set)
    for u, r in resolve_duplicates(pairs, {}).items():  # no scores: the keeper is the smallest uid
        members[r.duplicate_of].add(u)
    return {u: keeper for keeper, us in members.items() for u in us | {keeper}}


edge_lists = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(edges=edge_lists, rounds=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_rounds_and_residual_merge_find_the_components_of_random_graphs(edges, rounds, seed):
    pairs = edges_to_pairs(edges, random.Random(seed))
    assert components_by_rounds(pairs, rounds) == union_find_components(pairs)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 3000), rounds=st.integers(0, 6), seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(["chain", "star"]))
def test_rounds_find_long_chains_and_big_stars(n, rounds, seed, shape):
    rng = random.Random(seed)
    pairs = edges_to_pairs((chain if shape == "chain" else star)(n, rng), rng)
    assert components_by_rounds(pairs, rounds) == union_find_components(pairs)


def test_a_star_converges_in_one_round_and_a_long_chain_leaves_a_small_residual():
    rng = random.Random(0)
    star_pairs = edges_to_pairs(star(500, rng), rng)
    assert labels_after_rounds(star_pairs, 0)[1]  # without rounds the leaves disagree with each other
    labels, residual = labels_after_rounds(star_pairs, 1)
    assert residual == [] and set(labels.values()) == {min(labels)}
    # A chain halves its residual about every round (2,000 nodes: ~1,000 label pairs, then ~170 after 3 rounds).
    chain_pairs = edges_to_pairs(chain(2000, rng), rng)
    before, after = len(labels_after_rounds(chain_pairs, 0)[1]), len(labels_after_rounds(chain_pairs, 3)[1])
    assert after < before / 4, (before, after)


def test_step_examples():
    assert large_star("c", ["a", "d", "e", "d"]) == [("d", "a"), ("e", "a")]
    assert large_star("a", ["c", "b"]) == [("b", "a"), ("c", "a")]
    assert small_star("d", ["b", "a"]) == [("b", "a"), ("d", "a")]
    assert small_star("d", []) == []
    assert residual_edges("a", ["a", "b", "b", "c"]) == [("a", "b"), ("a", "c")]
    assert residual_edges("b", ["b", "a", "c"]) == [("a", "b"), ("b", "c")]
    assert merge_labels([("c", "d"), ("b", "d"), ("x", "y")]) == {"b": "b", "c": "b", "d": "b", "x": "x", "y": "x"}


# --- the Beam transform: the same removals as resolve_duplicates ------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edges=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=60), rounds=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_resolve_components_equals_resolve_duplicates_on_random_graphs(edges, rounds, seed):
    rng = random.Random(seed)
    run_components(*graph_case(edges, rng), rounds=rounds)


def test_resolve_components_on_a_long_chain_a_star_and_duplicate_edges():
    rng = random.Random(7)
    edges = chain(400, rng) + [(400 + a, 400 + b) for a, b in star(300, rng)] + [(1000, 1001), (1001, 1002)]
    pairs = edges_to_pairs(edges, rng)
    # The same uid pair found by two detectors: the stronger kind names the reason.
    pairs += [DuplicatePair.of(uid(1000), uid(1001), Reason.DUPLICATE_EXACT, 1.0), DuplicatePair.of(uid(1000), uid(1001), Reason.DUPLICATE_SEMANTIC, 0.99)]
    nodes = sorted({u for p in pairs for u in (p.a, p.b)})
    scores = {u: rng.choice(SCORES) for u in nodes}
    pinned = {nodes[3], nodes[500]}
    shards = {u: rng.randrange(4) for u in nodes}
    for rounds in (0, 3):
        run_components(pairs, scores, pinned, shards, rounds=rounds)


def test_resolve_components_of_no_pairs_is_nothing():
    run_components([], {}, set(), {}, rounds=3)


# --- the k-means training sample is filtered before it is gathered ---------------------------


def test_sample_range_keeps_the_smallest_uids_and_about_twice_the_sample():
    import hashlib

    from paircurate.pipeline.dedup import in_sample_range

    uids = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(200_000)]
    kept = [u for u in uids if in_sample_range({R.UID: u}, count=len(uids), size=5_000)]
    assert 9_000 < len(kept) < 11_000
    assert set(sorted(uids)[:5_000]) <= set(kept)
    assert all(in_sample_range({R.UID: u}, count=8_000, size=5_000) for u in uids[:100])  # small inputs: everything
    assert in_sample_range({R.UID: "not-hex"}, count=10**9, size=5_000)
