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
        edge = (KIND_PRIORITY[pair.kind], -pair.similarity)
        for uid in (pair.a, pair.b):
            if uid not in best or edge < best[uid]:
                best[uid] = edge

    groups: dict[str, list[str]] = defaultdict(list)
    for uid in parent:
        groups[find(uid)].append(uid)

    pinned_set = frozenset(pinned)
    kinds = {priority: kind for kind, priority in KIND_PRIORITY.items()}
    removed: dict[str, Removal] = {}
    for members in groups.values():
        keeper = min(members, key=lambda uid: _keeper_rank(uid, scores.get(uid), uid in pinned_set))
        for uid in members:
            if uid == keeper or uid in pinned_set:
                continue
            priority, neg_sim = best[uid]
            removed[uid] = Removal(reason=kinds[priority], duplicate_of=keeper, similarity=-neg_sim)
    return removed


def _keeper_rank(uid: str, score: float | None, is_pinned: bool) -> tuple:
    has_score = score is not None and not math.isnan(score)
    return (not is_pinned, not has_score, -score if has_score else 0.0, uid)


def pair_order(pair: DuplicatePair) -> tuple[str, str]:
    return (pair.a, pair.b)
