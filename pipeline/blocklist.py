"""Blocklist stage: rows whose URL or image a blocklist names leave as ``blocklisted``.

Two gates, one mechanism: ``RejectBlocklisted(paths, BEFORE_DOWNLOAD)`` sits
before the download stage and matches url / prefix / domain entries, so a
listed URL is never requested; ``RejectBlocklisted(paths, AFTER_DOWNLOAD)``
sits after it and matches sha256 / md5 (of the bytes as downloaded) and pHash
entries. The lists are parsed once per worker in ``setup``.

A blocklisted row keeps its place in the ledger (uid, source file and row,
which list matched), but its URL, caption and extra columns are not written
anywhere in the output: a release must not redistribute what it removed.
"""

from __future__ import annotations

import apache_beam as beam

from paircurate.filters.blocklist import HASH_KINDS, URL_KINDS, BlocklistMatch, Blocklists, load_blocklists, reject_row
from paircurate.pipeline.stage import REJECTED, IsolatedDoFn, StageCounters, StageOutputs
from paircurate.schemas import records as R
from paircurate.schemas.outcomes import Reason, Stage

BEFORE_DOWNLOAD = "url"
AFTER_DOWNLOAD = "image"
_STAGE = {BEFORE_DOWNLOAD: Stage.DOWNLOAD, AFTER_DOWNLOAD: Stage.IMAGE}
_KINDS = {BEFORE_DOWNLOAD: URL_KINDS, AFTER_DOWNLOAD: HASH_KINDS}


def match_record(record: dict, lists: Blocklists, gate: str) -> BlocklistMatch | None:
    """Which list (if any) names this record at ``gate``."""
    if gate == BEFORE_DOWNLOAD:
        return lists.match_url(record.get(R.URL))
    return lists.match_digests(record.get(R.SHA256), record.get(R.MD5)) or lists.match_phash(record.get(R.PHASH))


class _BlocklistFn(IsolatedDoFn):
    def __init__(self, paths: tuple[str, ...], gate: str) -> None:
        self._paths = paths
        self._gate = gate
        self.STAGE = _STAGE[gate]

    def setup(self) -> None:
        self._lists = load_blocklists(self._paths, _KINDS[self._gate])  # only the entries this gate matches
        self._stage = _STAGE[self._gate]
        self._counters = StageCounters(self._stage)

    def process_record(self, record: dict):
        match = match_record(record, self._lists, self._gate)
        if match is None:
            yield record
        else:
            self._counters.rejected(Reason.BLOCKLISTED)
            yield beam.pvalue.TaggedOutput(REJECTED, reject_row(record, match))


class RejectBlocklisted(beam.PTransform):
    """Records -> those no list names, and ``blocklisted`` rejects (stage download before the fetch, image after)."""

    def __init__(self, paths: tuple[str, ...], gate: str) -> None:
        super().__init__()
        if gate not in _STAGE:
            raise ValueError(f"gate must be {BEFORE_DOWNLOAD!r} or {AFTER_DOWNLOAD!r}, got {gate!r}")
        self._paths = tuple(paths)
        self._gate = gate

    def expand(self, records) -> StageOutputs:
        out = records | "Match" >> beam.ParDo(_BlocklistFn(self._paths, self._gate)).with_outputs(REJECTED, main="kept")
        return StageOutputs(out.kept, out[REJECTED])
