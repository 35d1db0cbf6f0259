"""MetaCLIP's balancing as plain functions: keep probability, deterministic draw, decision, summaries.

MetaCLIP (Xu et al. 2023, "Demystifying CLIP Data", and its metaclip/balancing.py)
counts, over the whole pool, how many samples match each metadata entry, and
keeps a sample with probability ``t / max(count, t)`` for each of its entries,
keeping it if any entry keeps it. Rare entries (count <= t) keep everything;
an entry with ``count`` samples ends with about ``t`` of them plus those kept
through another entry. MetaCLIP drops samples that match no entry.

MetaCLIP draws with ``random.random()``; here the draw for (sample, entry)
comes from a hash of the sample's uid and the entry, so a rerun, a resumed
run, a shuffled input and another runner decide every sample the same way.

    >>> decide(uid, ["dog"], {"dog": 200_000}, cap=20_000)      # kept with p = 0.1
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from paircurate.schemas.outcomes import Decision, Reason

_DRAW_SCALE = float(1 << 64)


def keep_probability(count: int, cap: int) -> float:
    """``cap / max(count, cap)``: 1 for entries at or below the cap."""
    return cap / max(count, cap)


def draw(uid: str, entry: str) -> float:
    """A uniform number in [0, 1) fixed by (uid, entry): the same on every run and runner."""
    digest = hashlib.blake2b(f"{uid}\x1f{entry}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _DRAW_SCALE


def decide(uid: str, entries: Sequence[str], counts: Mapping[str, int], cap: int, drop_unmatched: bool = False) -> Decision:
    """Keep or reject one sample given the run's entry counts.

    Rejects are ``over_represented`` (detail: the sample's most frequent entry
    and its count) and, with ``drop_unmatched``, ``no_entry_match``.
    """
    if not entries:
        return Decision.reject(Reason.NO_ENTRY_MATCH, "the caption names no entry") if drop_unmatched else Decision.accept()
    for entry in entries:
        if draw(uid, entry) < keep_probability(counts.get(entry, 0), cap):
            return Decision.accept()
    top = max(entries, key=lambda e: (counts.get(e, 0), e))
    return Decision.reject(Reason.OVER_REPRESENTED, f"entry {top!r}: {counts.get(top, 0)} samples, cap {cap}")


@dataclass
class CountSummary:
    """A streaming summary of entry counts: memory is the ``top`` heap, not the entries.

        s = CountSummary(cap=20_000); s.add("dog", 5); s.merge(other); s.as_dict()
    """

    cap: int
    top: int = 20
    entries: int = 0
    samples: int = 0  # sum of counts: (sample, entry) matches
    sum_c_log_c: float = 0.0
    at_cap: int = 0  # count >= cap
    over_cap: int = 0  # count > cap: subsampled
    heap: list[tuple[int, str]] = field(default_factory=list)  # (count, entry), smallest first

    def add(self, entry: str, count: int) -> None:
        if count <= 0:
            return
        self.entries += 1
        self.samples += count
        self.sum_c_log_c += count * math.log2(count)
        self.at_cap += count >= self.cap
        self.over_cap += count > self.cap
        item = (count, _neg_key(entry))
        if len(self.heap) < self.top:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def merge(self, other: "CountSummary") -> None:
        self.entries += other.entries
        self.samples += other.samples
        self.sum_c_log_c += other.sum_c_log_c
        self.at_cap += other.at_cap
        self.over_cap += other.over_cap
        for item in other.heap:
            if len(self.heap) < self.top:
                heapq.heappush(self.heap, item)
            elif item > self.heap[0]:
                heapq.heapreplace(self.heap, item)

    def entropy_bits(self) -> float:
        """Shannon entropy of the entry distribution: log2(N) - sum(c log2 c) / N."""
        if not self.samples:
            return 0.0
        return max(0.0, math.log2(self.samples) - self.sum_c_log_c / self.samples)

    def as_dict(self) -> dict:
        entropy = self.entropy_bits()
        flatness = entropy / math.log2(self.entries) if self.entries > 1 else 1.0
        ranked = sorted(self.heap, reverse=True)
        return {
            "entries": self.entries,
            "matches": self.samples,
            "entropy_bits": round(entropy, 4),
            "flatness": round(flatness, 4),  # entropy / log2(entries): 1 = every entry equally frequent
            "entries_at_cap": self.at_cap,
            "entries_over_cap": self.over_cap,
            "top": [[_from_neg_key(key), count] for count, key in ranked],
        }


def summarize(counts: Iterable[tuple[str, int]], cap: int, top: int = 20) -> dict:
    s = CountSummary(cap=cap, top=top)
    for entry, count in counts:
        s.add(entry, count)
    return s.as_dict()


# Ties in the top list go to the alphabetically first entry: store entries so
# that a larger tuple means an earlier string.
def _neg_key(entry: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in entry) + (1,)


def _from_neg_key(key: tuple[int, ...]) -> str:
    return "".join(chr(-c) for c in key[:-1])
