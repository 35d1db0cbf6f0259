"""Which metadata entries a caption names: MetaCLIP's substring matching, with Aho-Corasick.

    >>> m = EntryMatcher(["dog", "hot dog", "cat"])
    >>> m.match("A Hot Dog stand")
    ['dog', 'hot dog']
    >>> EntryMatcher(["cat"], whole_words=True).match("a catalogue")
    []

MetaCLIP counts an entry for a caption when the entry is a substring of the
lower-cased caption; so does this matcher by default (``"cat"`` matches
"catalogue"). ``whole_words=True`` only counts occurrences bounded by
non-alphanumeric characters or the ends of the caption. Whitespace runs count
as one space on both sides, so "hot  dog" names "hot dog".

One automaton (pyahocorasick) finds every entry in one scan of the caption,
so the cost is linear in the caption's length whatever the number of entries
(bench/balance.py measures it with 500,000 entries).
"""

from __future__ import annotations

from typing import Iterable

import ahocorasick


def normalize_text(text: str) -> str:
    """Lower-cased, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.lower().split())


class EntryMatcher:
    """Finds the entries a caption contains; build once per worker (building is the costly part)."""

    def __init__(self, entries: Iterable[str], whole_words: bool = False) -> None:
        self._whole_words = whole_words
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
        self.entries: list[str] = []
        for entry in entries:
            key = normalize_text(entry)
            if key and key not in self._automaton:
                self._automaton.add_word(key, (len(self.entries), len(key)))
                self.entries.append(key)
        if self.entries:
            self._automaton.make_automaton()

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, caption: str | None) -> list[str]:
        """The distinct entries found in ``caption``, in the order of the entry list."""
        if not caption or not self.entries:
            return []
        text = normalize_text(caption)
        found: set[int] = set()
        for end, (index, length) in self._automaton.iter(text):
            if self._whole_words and not _bounded(text, end - length + 1, end):
                continue
            found.add(index)
        return [self.entries[i] for i in sorted(found)]


def _bounded(text: str, start: int, end: int) -> bool:
    """``text[start:end + 1]`` is not glued to a letter or digit on either side."""
    before = text[start - 1] if start > 0 else " "
    after = text[end + 1] if end + 1 < len(text) else " "
    return not before.isalnum() and not after.isalnum()
