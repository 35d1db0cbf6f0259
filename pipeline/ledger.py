"""Facts about a whole output folder, read back from its shards: where rows were lost, and to which lists.

Computed from what the shards hold (kept Parquet and ``rejected/`` Parquet
both carry ``url`` and, for rejects, ``stage``/``reason``/``detail``), never
from driver state, so the figures are the same after a resume, a retry or a
``paircurate remove``, and for a folder written by any runner.

    >>> hosts = host_stats("out")          # stats.json "hosts"
    >>> hosts["top_by_failures"][0]
    {'host': 'img.example.com', 'attempts': 120, 'kept': 31, 'failed': 89, 'filtered': 0, 'failures': {'http_403': 89}}
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from paircurate.inspection import read_table
from paircurate.storage.layout import OutputLayout
from paircurate.schemas import records as R
from paircurate.schemas.outcomes import Reason, Stage

TOP_HOSTS = 20
NO_HOST = "(no host)"
# Failure classes, in the order the report lists them. "filters" are rows the
# host served fine that a filter or dedup then dropped: not the host's fault.
FAILURE_CLASSES = (
    "dns", "connect", "tls", "timeout", "redirect", "http_403", "http_404", "http_4xx", "http_429", "http_5xx",
    "opt_out", "blocked_address", "content", "decode", "other",
)
FILTERS = "filters"
_REASON_CLASS = {
    Reason.TIMEOUT: "timeout",
    Reason.TOO_MANY_REDIRECTS: "redirect",
    Reason.REDIRECT_LOOP: "redirect",
    Reason.HTTP_404: "http_404",
    Reason.HTTP_429: "http_429",
    Reason.HTTP_5XX: "http_5xx",
    Reason.OPTED_OUT: "opt_out",
    Reason.BLOCKED_ADDRESS: "blocked_address",
    Reason.TOO_LARGE: "content",
    Reason.TRUNCATED: "content",
    Reason.NOT_AN_IMAGE: "content",
    Reason.DECODE_ERROR: "decode",
    Reason.DECOMPRESSION_BOMB: "decode",
}
# Stages whose rejects were at least sent to the host (read and caption rejects never were).
_ATTEMPTED_STAGES = (Stage.DOWNLOAD.value, Stage.IMAGE.value, Stage.CLIP.value, Stage.DEDUP.value)
_FETCH_STAGES = (Stage.DOWNLOAD.value, Stage.IMAGE.value)
# connection_error covers DNS, TCP and TLS: the exception named in the detail tells them apart.
_DNS = re.compile(r"NameResolution|getaddrinfo|Name or service not known|name resolution|nodename nor servname|No address associated", re.I)
_TLS = re.compile(r"SSL|TLS|certificate", re.I)
_HOST = r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]/]*\]|[^:/?#]*)"


def failure_class(stage: str, reason: str, detail: str | None) -> str | None:
    """The class a reject counts under for its host; None for rows that never reached a host."""
    if stage not in _ATTEMPTED_STAGES:
        return None
    if stage not in _FETCH_STAGES:
        return FILTERS
    try:
        code = Reason(reason)
    except ValueError:
        return "other"
    if code is Reason.CONNECTION_ERROR:
        text = detail or ""
        return "dns" if _DNS.search(text) else "tls" if _TLS.search(text) else "connect"
    if code is Reason.HTTP_4XX:
        return "http_403" if (detail or "").startswith("HTTP 403") else "http_4xx"
    if code in (Reason.IMAGE_TOO_SMALL, Reason.BAD_ASPECT_RATIO):
        return FILTERS
    return _REASON_CLASS.get(code, "other")


def hosts_of(urls: pa.Array) -> pa.Array:
    """Lower-cased host of each URL (null where there is none), computed in Arrow, not per row in Python."""
    found = pc.extract_regex(pc.fill_null(urls.cast(pa.string()), ""), _HOST)
    return pc.utf8_lower(pc.struct_field(found, "host"))


def host_stats(out_dir: str, top: int = TOP_HOSTS) -> dict:
    """stats.json "hosts": per host attempts, kept, failures per class, for the top hosts by volume and by failures."""
    kept: Counter = Counter()
    classes: dict[str, Counter] = defaultdict(Counter)
    for path in OutputLayout(out_dir).shard_files("parquet"):
        urls = read_table(path, columns=[R.URL]).column(R.URL)
        for host, n in _value_counts(hosts_of(urls.combine_chunks())):
            kept[host or NO_HOST] += n
    for path in OutputLayout(out_dir).reject_files():
        table = read_table(path, columns=[R.URL, R.STAGE, R.REASON, R.DETAIL])
        table = table.filter(pc.is_in(table.column(R.STAGE), pa.array(_ATTEMPTED_STAGES)))
        if not table.num_rows:
            continue
        hosts = hosts_of(table.column(R.URL).combine_chunks()).to_pylist()
        for host, stage, reason, detail in zip(hosts, table.column(R.STAGE).to_pylist(), table.column(R.REASON).to_pylist(), table.column(R.DETAIL).to_pylist(), strict=True):
            if reason == Reason.BLOCKLISTED.value:
                continue  # which hosts a blocklist names is not published
            classes[host or NO_HOST][failure_class(stage, reason, detail)] += 1

    rows = []
    for host in set(kept) | set(classes):
        failures = {c: n for c, n in sorted(classes[host].items()) if c != FILTERS}
        failed = sum(failures.values())
        filtered = classes[host].get(FILTERS, 0)
        rows.append({"host": host, "attempts": kept[host] + failed + filtered, "kept": kept[host], "failed": failed, "filtered": filtered, "failures": failures})
    by_class: Counter = Counter()
    for row in rows:
        by_class.update(row["failures"])
    section = {
        "hosts": len(rows),
        "attempts": sum(r["attempts"] for r in rows),
        "failed": sum(r["failed"] for r in rows),
        "failures_by_class": {c: by_class[c] for c in FAILURE_CLASSES if by_class[c]},
        "top_by_volume": sorted(rows, key=lambda r: (-r["attempts"], r["host"]))[:top],
        "top_by_failures": [r for r in sorted(rows, key=lambda r: (-r["failed"], r["host"])) if r["failed"]][:top],
    }
    section["diagnosis"] = diagnose(section)
    return section


def _value_counts(values: pa.Array):
    for item in pc.value_counts(values).to_pylist():
        yield item["values"], item["counts"]


_CLASS_WORDS = {
    "dns": ("DNS lookups that failed", "the hosts no longer exist or the names are wrong; a retry rarely helps"),
    "connect": ("connections refused or reset", "hosts down or refusing this crawler; --retry-failed later may recover some"),
    "tls": ("TLS handshakes that failed", "expired or invalid certificates; a retry will not help"),
    "timeout": ("timeouts", "slow or overloaded hosts; --retry-failed, or a longer --deadline, may recover them"),
    "http_403": ("HTTP 403 Forbidden answers", "the hosts refuse crawlers (or hotlinking); a retry will not help"),
    "http_404": ("HTTP 404 Not Found answers", "link rot: the images were removed"),
    "http_429": ("HTTP 429 Too Many Requests answers", "the crawl was too fast for these hosts: lower --per-domain-rps and --retry-failed"),
    "http_5xx": ("HTTP 5xx server errors", "server trouble, often temporary: --retry-failed may recover them"),
    "opt_out": ("opt-outs (X-Robots-Tag / robots.txt)", "the publishers asked not to be used; they must stay out"),
    "content": ("responses that were not images or too large", "pages instead of images, or files above --max-bytes"),
    "decode": ("images that did not decode", "broken or unsupported files"),
}
_MIN_FAILURES = 10  # below this, a "pattern" is noise


def diagnose(section: dict) -> list[str]:
    """Short plain sentences for the patterns that are plain; empty when none is."""
    failed = section["failed"]
    if failed < _MIN_FAILURES:
        return []
    out = []
    worst = section["top_by_failures"][0] if section["top_by_failures"] else None
    if worst and worst["failed"] * 2 >= failed:
        main_class = max(worst["failures"].items(), key=lambda kv: kv[1])[0]
        out.append(
            f"One host holds most failures: {worst['host']} ({worst['failed']} of {failed}, "
            f"{100 * worst['failed'] / failed:.0f} %), mostly {main_class}."
        )
    if section["failures_by_class"]:
        cls, n = max(section["failures_by_class"].items(), key=lambda kv: kv[1])
        if n * 2 >= failed and cls in _CLASS_WORDS:
            what, why = _CLASS_WORDS[cls]
            hosts = [r["host"] for r in section["top_by_failures"] if r["failures"].get(cls)]
            few = f" from {len(hosts)} host{'s' if len(hosts) != 1 else ''} ({', '.join(hosts[:3])})" if len(hosts) <= 3 else ""
            out.append(f"Most failures are {what}{few}: {n} of {failed} ({100 * n / failed:.0f} %); {why}.")
    return out


def blocklist_counts(out_dir: str, list_names: list[str] | tuple[str, ...] = ()) -> dict[str, dict]:
    """Rows each list removed, by entry kind, from the ledger's ``blocklisted`` rows. Counts only."""
    from paircurate.filters.blocklist import BlocklistMatch

    counts: dict[str, Counter] = {name: Counter() for name in list_names}
    for path in OutputLayout(out_dir).reject_files():
        table = read_table(path, columns=[R.REASON, R.DETAIL])
        table = table.filter(pc.equal(table.column(R.REASON), Reason.BLOCKLISTED.value))
        for detail in table.column(R.DETAIL).to_pylist():
            match = BlocklistMatch.from_detail(detail)
            if match is not None:
                counts.setdefault(match.list_name, Counter())[match.kind] += 1
    return {name: {"rows": sum(c.values()), "by_kind": dict(sorted(c.items()))} for name, c in counts.items()}
