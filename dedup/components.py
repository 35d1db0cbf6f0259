"""Duplicate edges and one keeper per group: the step every detector feeds.

Every detector (exact, perceptual, semantic) produces :class:`DuplicatePair`
edges; :func:`resolve_duplicates` joins all of them into connected components
and picks one keeper per component, so a record is removed at most once, with
one reason, whatever the number of detectors that flagged it.

    >>> removed = resolve_duplicates(pairs, scores={"a1": 0.31, "b2": 0.28})
    >>> removed["b2"]
    Removal(reason=<Reason.DUPLICATE_PHASH: 'duplicate_phash'>, duplicate_of='a1', similarity=0.96875)
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Collection, Iterable, Mapping

from paircurate.schemas.outcomes import Reason

# When one record is linked by several kinds of edge, the most certain kind
# names the reason: byte-identical beats "looks the same" beats "means the same".
KIND_PRIORITY: dict[Reason, int] = {
    Reason.DUPLICATE_EXACT: 0,
    Reason.DUPLICATE_PHASH: 1,
    Reason.DUPLICATE_SEMANTIC: 2,
}


@dataclass(frozen=True)
class DuplicatePair:
    """An undirected duplicate edge between two uids, stored with ``a < b``.

    >>> DuplicatePair.of("f0", "0a", Reason.DUPLICATE_EXACT, 1.0)
    DuplicatePair(a='0a', b='f0', kind=<Reason.DUPLICATE_EXACT: 'duplicate_exact'>, similarity=1.0)
    """

    a: str
    b: str
    kind: Reason
    similarity: float

    def __post_init__(self) -> None:
        # One orientation per edge keeps pair sets comparable and lets the
        # pipeline deduplicate pairs found by several buckets by value.
        if not self.a < self.b:
            raise ValueError(f"DuplicatePair needs a < b, got a={self.a!r}, b={self.b!r}")
        if self.kind not in KIND_PRIORITY:
            raise ValueError(f"DuplicatePair.kind must be one of {[k.value for k in KIND_PRIORITY]}, got {self.kind!r}")

    @classmethod
    def of(cls, u: str, v: str, kind: Reason, similarity: float) -> "DuplicatePair":
        """Build a pair from two uids in any order."""
        return cls(u, v, kind, float(similarity)) if u < v else cls(v, u, kind, float(similarity))


@dataclass(frozen=True)
class Removal:
    """Why a record leaves the dataset, and which kept record it duplicates."""

    reason: Reason
    duplicate_of: str
    similarity: float


def exact_pairs(uids: Iterable[str]) -> list[DuplicatePair]:
    """Exact-duplicate pairs for one group of records sharing a sha256 or URL.

    A star to the smallest uid: enough for the connected components, and
    linear in the group size.
    """
    members = sorted(set(uids))
    return [DuplicatePair(members[0], other, Reason.DUPLICATE_EXACT, 1.0) for other in members[1:]]


def resolve_duplicates(
    pairs: Iterable[DuplicatePair],
    scores: Mapping[str, float | None],
    pinned: Collection[str] = (),
) -> dict[str, Removal]:
    """Join all duplicate edges into groups and decide who leaves each group.

    The keeper of a group is the record with the highest score (None, NaN or a
    uid missing from ``scores`` count as lowest), ties going to the smallest
    uid. ``pinned`` uids (for example an earlier run's records, already
    published) win over any score and are never removed. Every other member is
    removed with the kind and similarity of its best edge into the group (kind
    first: exact > phash > semantic; then the highest similarity). The result
    depends only on the set of edges, not on their order.

    >>> resolve_duplicates([DuplicatePair.of("b", "a", Reason.DUPLICATE_PHASH, 0.95)], {"a": 0.2, "b": 0.3})
    {'a': Removal(reason=<Reason.DUPLICATE_PHASH: 'duplicate_phash'>, duplicate_of='b', similarity=0.95)}
    """
    parent: dict[str, str] = {}
    best: dict[str, tuple[int, float]] = {}

    def find(x: str) -> str:
        root = parent.setdefault(x, x)
        while root != parent[root]:
            parent[root] = parent[parent[root]]  # path halving keeps later finds short
            root = parent[root]
        return root

    for pair in pairs:
        ra, rb = find(pair.a), find(pair.b)
        if ra != rb:
            # Which root wins does not matter: only the membership of a
            # component is used, and that is the same for any edge order.
            parent[ra] = rb
        edge = best_edge_rank(pair)
        for uid in (pair.a, pair.b):
            if uid not in best or edge < best[uid]:
                best[uid] = edge

    groups: dict[str, list[str]] = defaultdict(list)
    for uid in parent:
        groups[find(uid)].append(uid)

    pinned_set = frozenset(pinned)
    removed: dict[str, Removal] = {}
    for members in groups.values():
        keeper = min(members, key=lambda uid: keeper_rank(uid, scores.get(uid), uid in pinned_set))
        for uid in members:
            if uid == keeper or uid in pinned_set:
                continue
            removed[uid] = removal_for(best[uid], keeper)
    return removed


def keeper_rank(uid: str, score: float | None, is_pinned: bool) -> tuple:
    """Sort key of a group member: the smallest rank is the group's keeper.

    Pinned first, then scored before unscored (None, NaN), then highest
    score, then smallest uid (so two members never tie).
    """
    has_score = score is not None and not math.isnan(score)
    return (not is_pinned, not has_score, -score if has_score else 0.0, uid)


def best_edge_rank(pair: DuplicatePair) -> tuple[int, float]:
    """How strongly one edge names its endpoints' reason: smaller is stronger (kind, then similarity)."""
    return (KIND_PRIORITY[pair.kind], -pair.similarity)


def removal_for(best: tuple[int, float], keeper: str) -> Removal:
    """The removal of a non-keeper whose strongest edge is ``best`` (a :func:`best_edge_rank`)."""
    priority, neg_sim = best
    return Removal(reason=_KIND_OF_PRIORITY[priority], duplicate_of=keeper, similarity=-neg_sim)


_KIND_OF_PRIORITY = {priority: kind for kind, priority in KIND_PRIORITY.items()}


# --- Connected components by rounds of local steps ----------------------------
#
# The pipeline cannot hold every edge on one worker at scale, so it finds the
# components with the "alternating large-star / small-star" algorithm of
# Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014):
# each step groups the edges by one node and rewrites that node's
# neighbourhood; no step adds edges, components are kept, and after O(log^2 n)
# rounds (O(log n) in practice) every component is a star around its smallest
# node. After a fixed number of rounds, :func:`residual_edges` lists the edges
# that still disagree on a label, and :func:`merge_labels` finishes those with
# union-find on one worker: the result is exact for any number of rounds, and
# the rounds only make that residual small. Nodes are uids, ordered as strings.


def large_star(node: str, neighbours: Iterable[str]) -> list[tuple[str, str]]:
    """Large-star step at ``node``: every larger neighbour is linked to the smallest of the neighbourhood.

    >>> large_star("c", ["a", "d", "e"])
    [('d', 'a'), ('e', 'a')]
    """
    neighbours = set(neighbours)
    smallest = min(neighbours | {node})
    return [(v, smallest) for v in sorted(neighbours) if v > node]


def small_star(node: str, smaller_neighbours: Iterable[str]) -> list[tuple[str, str]]:
    """Small-star step at ``node`` (given its neighbours smaller than itself): all of them, and
    ``node``, are linked to the smallest one.

    >>> small_star("d", ["b", "a"])
    [('b', 'a'), ('d', 'a')]
    """
    members = set(smaller_neighbours) | {node}
    smallest = min(members)
    return [(v, smallest) for v in sorted(members) if v != smallest]


def residual_edges(label: str, neighbour_labels: Iterable[str]) -> list[tuple[str, str]]:
    """Label pairs a node still has to merge: its own label against each different label of a neighbour.

    ``label`` is the smallest node of the node's closed neighbourhood; when
    every edge joins two nodes of the same label, each label is its
    component's smallest node and nothing is left to merge.

    >>> residual_edges("b", ["b", "a", "c"])
    [('a', 'b'), ('b', 'c')]
    """
    # Smaller label first, so the same pair seen from both sides is one value to deduplicate.
    return [(min(label, other), max(label, other)) for other in sorted(set(neighbour_labels)) if other != label]


def merge_labels(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Union-find over the residual label edges: each label seen -> the smallest label of its group."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = parent.setdefault(x, x)
        while root != parent[root]:
            parent[root] = parent[parent[root]]
            root = parent[root]
        return root

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            # The smaller root wins, so each root is its group's smallest label.
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def pair_order(pair: DuplicatePair) -> tuple[str, str]:
    return (pair.a, pair.b)
