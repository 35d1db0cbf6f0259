"""Blocklists: URLs, URL prefixes, domains, byte hashes and perceptual hashes that must not be in a dataset.

A list is a text file, one entry a line (``#`` starts a comment, blank lines are skipped)::

    url:https://images.example.com/a/123.jpg
    prefix:https://cdn.example.org/private/
    domain:example.net                # the host and every subdomain
    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    md5:d41d8cd98f00b204e9800998ecf8427e
    phash:c3c3e1e1f0f0383c 6          # Hamming distance (of 64 bits); default 4

or a Parquet file with any of the columns ``url``, ``prefix``, ``domain``, ``sha256``,
``md5``, ``phash`` (and ``distance`` for the pHash of the same row); nulls are skipped.

    >>> lists = load_blocklists(["csam-hashes.txt", "takedowns.parquet"])
    >>> lists.match_url("https://sub.example.net/x.jpg")
    BlocklistMatch(list_name='takedowns.parquet', kind='domain')

URL entries are compared in the normalized form that sample identity uses
(``schemas.identity.normalize_url``: scheme and host lower-cased, default port
and fragment dropped); hashes are compared as lower-case hex. No Beam here.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from paircurate.dedup.perceptual import HASH_BITS, PhashIndex
from paircurate.schemas.config import UserError
from paircurate.schemas.identity import normalize_url

KINDS = ("url", "prefix", "domain", "sha256", "md5", "phash")
URL_KINDS = ("url", "prefix", "domain")
HASH_KINDS = ("sha256", "md5", "phash")
DEFAULT_PHASH_DISTANCE = 4
_HEX_LENGTH = {"sha256": 64, "md5": 32, "phash": HASH_BITS // 4}
_HEX = re.compile(r"[0-9a-f]+")
# A DNS name (labels of letters, digits, hyphens, underscores) or an IPv4 address.
_HOST = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
_FORMAT_HINT = "expected KIND:VALUE with KIND one of url, prefix, domain, sha256, md5, phash (phash:<16 hex> [distance])"


class BlocklistError(UserError):
    """A blocklist file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class BlocklistMatch:
    list_name: str
    kind: str

    def detail(self) -> str:
        """The reject row's detail: which list and which kind of entry, never the matched URL or hash."""
        return f"blocklist {self.list_name}: {self.kind} entry"

    @classmethod
    def from_detail(cls, detail: str | None) -> "BlocklistMatch | None":
        """Read back what :meth:`detail` wrote (a list name may itself hold ': ')."""
        if not detail or not detail.startswith("blocklist ") or not detail.endswith(" entry"):
            return None
        name, sep, kind = detail[len("blocklist ") : -len(" entry")].rpartition(": ")
        return cls(name, kind) if sep and kind in KINDS else None


@dataclass
class Blocklist:
    """The entries of one file, normalized for matching."""

    name: str
    urls: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)
    domains: set[str] = field(default_factory=set)
    sha256: set[str] = field(default_factory=set)
    md5: set[str] = field(default_factory=set)
    phashes: list[tuple[str, int]] = field(default_factory=list)

    def add(self, kind: str, value: str, distance: int | None = None) -> None:
        """Add one entry; ValueError (without the file position) when it is malformed."""
        if kind not in KINDS:
            raise ValueError(f"unknown entry kind {kind!r}; {_FORMAT_HINT}")
        if kind == "phash":
            self.phashes.append((parse_hex(value, "phash"), DEFAULT_PHASH_DISTANCE if distance is None else parse_distance(distance)))
            return
        if distance is not None:
            raise ValueError(f"only phash entries take a distance, not {kind}")
        if kind in ("sha256", "md5"):
            getattr(self, kind).add(parse_hex(value, kind))
        elif kind == "domain":
            self.domains.add(parse_domain(value))
        elif kind == "url":
            self.urls.add(parse_url(value))
        else:
            self.prefixes.add(parse_url(value))

    def counts(self) -> dict[str, int]:
        """Entries per kind (what the report and datasheet show about a list)."""
        return {
            "url": len(self.urls), "prefix": len(self.prefixes), "domain": len(self.domains),
            "sha256": len(self.sha256), "md5": len(self.md5), "phash": len(self.phashes),
        }


def reject_row(record: dict, match: BlocklistMatch) -> dict:
    """The ledger row of a blocklisted record: identity, provenance and which list, nothing of its content.

    URL entries reject at the download stage (nothing was fetched), hash
    entries at the image stage (after the bytes arrived); a release must not
    redistribute the URL, caption or extra columns of what it removed.
    """
    from paircurate.schemas import records as R
    from paircurate.schemas.outcomes import Reason, Stage

    stage = Stage.DOWNLOAD if match.kind in URL_KINDS else Stage.IMAGE
    row = R.make_reject(record, stage, Reason.BLOCKLISTED, match.detail())
    row[R.URL] = row[R.CAPTION] = None
    row[R.EXTRA] = {}
    return row


def parse_hex(value: str, kind: str) -> str:
    text = value.strip().lower()
    if text.startswith("0x") and kind == "phash":
        text = text[2:]
    want = _HEX_LENGTH[kind]
    if len(text) != want or not _HEX.fullmatch(text):
        raise ValueError(f"{kind} must be {want} hex digits, got {value.strip()[:80]!r}")
    return text


def parse_distance(value) -> int:
    try:
        distance = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"phash distance must be a whole number of bits, got {str(value)[:40]!r}") from None
    if not 0 <= distance < HASH_BITS:
        raise ValueError(f"phash distance must be in 0..{HASH_BITS - 1}, got {distance}")
    return distance


def parse_domain(value: str) -> str:
    text = value.strip().lower().rstrip(".")
    if text.startswith("*."):  # "*.example.com" means what "example.com" means here: the host and its subdomains
        text = text[2:]
    try:
        text = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        raise ValueError(f"domain {value.strip()[:80]!r} is not a valid host name") from None
    if not _HOST.fullmatch(text):
        raise ValueError(f"domain {value.strip()[:80]!r} is not a host name (no scheme, path or port)")
    return text


def parse_url(value: str) -> str:
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"malformed url {text[:200]!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url {text[:200]!r} needs an http(s) scheme and a host")
    return normalize_url(text)


def parse_line(line: str) -> tuple[str, str, int | None] | None:
    """``(kind, value, distance)`` of one text line, or None for a blank or comment line.

    ``#`` at the start of a line, or after whitespace, starts a comment (a URL
    holds no whitespace, so its own ``#`` fragment is never taken for one).
    """
    text = re.split(r"\s#", line.strip(), maxsplit=1)[0].strip()
    if not text or text.startswith("#"):
        return None
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise ValueError(_FORMAT_HINT)
    parts = rest.split(maxsplit=1)
    value, tail = (parts[0] if parts else ""), (parts[1].strip() if len(parts) > 1 else "")
    if tail and kind != "phash":
        raise ValueError(f"unexpected text after the {kind} value: {tail[:80]!r}")
    return kind, value, parse_distance(tail) if tail else None


def load_blocklist(path: str, kinds: tuple[str, ...] = KINDS) -> Blocklist:
    """Read one list (text, or Parquet by its extension); BlocklistError naming file and line on bad input.

    Entries of other ``kinds`` are skipped unchecked: a pipeline gate loads
    only what it matches (the run checks every entry once, at the start).
    """
    blocklist = Blocklist(name=path)
    if path.lower().endswith((".parquet", ".pq")):
        _read_parquet(path, blocklist, kinds)
        return blocklist
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    entry = parse_line(line)
                    if entry is not None and entry[0] in kinds:
                        blocklist.add(*entry)
                except ValueError as exc:
                    raise BlocklistError(f"blocklist {path} line {number}: {exc}") from None
    except OSError as exc:
        raise BlocklistError(f"cannot read blocklist {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BlocklistError(f"blocklist {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); give text lines or a .parquet file") from None
    return blocklist


def _read_parquet(path: str, blocklist: Blocklist, kinds: tuple[str, ...] = KINDS) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise BlocklistError(f"cannot read blocklist {path} as Parquet: {exc}") from None
    columns = [c for c in KINDS if c in table.column_names]
    if not columns:
        raise BlocklistError(f"blocklist {path} has none of the columns {list(KINDS)} (columns: {table.column_names})")
    distances = table.column("distance").to_pylist() if "distance" in table.column_names else None
    for kind in (c for c in columns if c in kinds):
        for row, value in enumerate(table.column(kind).to_pylist()):
            if value is None:
                continue
            distance = distances[row] if kind == "phash" and distances is not None else None
            try:
                blocklist.add(kind, str(value), distance)
            except ValueError as exc:
                raise BlocklistError(f"blocklist {path} row {row} column {kind!r}: {exc}") from None


class Blocklists:
    """Several lists matched together.

    Entry kinds are tried most specific first (url, prefix, domain; sha256,
    md5, phash); an entry found in several lists is credited to the first list given.

    Small enough to pickle to workers: sets of strings and one pHash index per
    (list, distance).
    """

    def __init__(self, lists: list[Blocklist]) -> None:
        self.names = [b.name for b in lists]
        self.entry_counts = {b.name: b.counts() for b in lists}
        self._urls: dict[str, str] = {}
        self._prefixes: dict[str, list[tuple[str, str]]] = {}  # origin -> (prefix, list)
        self._domains: dict[str, str] = {}
        self._sha256: dict[str, str] = {}
        self._md5: dict[str, str] = {}
        self._phash: list[tuple[str, PhashIndex]] = []
        for b in lists:
            for url in b.urls:
                self._urls.setdefault(url, b.name)
            for prefix in sorted(b.prefixes):
                self._prefixes.setdefault(_origin(prefix), []).append((prefix, b.name))
            for domain in b.domains:
                self._domains.setdefault(domain, b.name)
            for digest in b.sha256:
                self._sha256.setdefault(digest, b.name)
            for digest in b.md5:
                self._md5.setdefault(digest, b.name)
            by_distance: dict[int, list[str]] = {}
            for value, distance in b.phashes:
                by_distance.setdefault(distance, []).append(value)
            for distance, values in sorted(by_distance.items()):
                self._phash.append((b.name, PhashIndex([(str(i), v) for i, v in enumerate(dict.fromkeys(values))], distance)))

    def __bool__(self) -> bool:
        return bool(self.names)

    @property
    def has_url_entries(self) -> bool:
        return bool(self._urls or self._prefixes or self._domains)

    @property
    def has_hash_entries(self) -> bool:
        return bool(self._sha256 or self._md5 or self._phash)

    @property
    def needs_md5(self) -> bool:
        return bool(self._md5)

    @property
    def needs_phash(self) -> bool:
        return bool(self._phash)

    def match_url(self, url: str | None) -> BlocklistMatch | None:
        """The list whose url, prefix or domain entry covers ``url``; None for no match or an unparsable URL."""
        if not url or not self.has_url_entries:
            return None
        try:
            normalized = normalize_url(url)
            host = (urlsplit(normalized).hostname or "").rstrip(".")
        except ValueError:
            return None
        name = self._urls.get(normalized)
        if name is not None:
            return BlocklistMatch(name, "url")
        for prefix, name in self._prefixes.get(_origin(normalized), ()):
            if normalized.startswith(prefix):
                return BlocklistMatch(name, "prefix")
        if self._domains:
            labels = host.split(".")
            for i in range(len(labels)):  # the host itself, then each parent domain
                name = self._domains.get(".".join(labels[i:]))
                if name is not None:
                    return BlocklistMatch(name, "domain")
        return None

    def match_digests(self, sha256: str | None, md5: str | None) -> BlocklistMatch | None:
        """The list holding the SHA-256 or MD5 (hex, of the bytes as downloaded)."""
        if sha256 and sha256 in self._sha256:
            return BlocklistMatch(self._sha256[sha256], "sha256")
        if md5 and md5 in self._md5:
            return BlocklistMatch(self._md5[md5], "md5")
        return None

    def match_bytes(self, data: bytes) -> BlocklistMatch | None:
        return self.match_digests(
            hashlib.sha256(data).hexdigest() if self._sha256 else None,
            hashlib.md5(data, usedforsecurity=False).hexdigest() if self._md5 else None,
        )

    def match_phash(self, phash_hex: str | None) -> BlocklistMatch | None:
        """The list with a pHash entry within that entry's distance of ``phash_hex``."""
        if not phash_hex:
            return None
        for name, index in self._phash:
            if index.matches(phash_hex):
                return BlocklistMatch(name, "phash")
        return None


def _origin(normalized_url: str) -> str:
    """``scheme://host[:port]`` of a normalized URL: prefixes are looked up per origin, not scanned."""
    parts = urlsplit(normalized_url)
    return f"{parts.scheme}://{parts.netloc}"


def load_blocklists(paths, kinds: tuple[str, ...] = KINDS) -> Blocklists:
    """Every list in ``paths`` (entries of ``kinds``); BlocklistError naming the file for a missing or malformed one."""
    lists = []
    for path in paths:
        if not os.path.isfile(path):
            raise BlocklistError(f"blocklist {path}: no such file; give text or Parquet blocklists to --blocklist")
        lists.append(load_blocklist(path, kinds))
    return Blocklists(lists)
