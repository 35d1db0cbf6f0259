"""What every stage shares: its two outputs and how a reject row is made."""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from paircurate.filters.decision import Reason, Stage
from paircurate.schemas import records as R

REJECTED = "rejected"
METRICS_NAMESPACE = "paircurate"

# Fields copied from an in-flight record into its reject row.
_REJECT_KEEP_FIELDS = (R.UID, R.URL, R.CAPTION, R.SOURCE_FILE, R.SOURCE_ROW, R.SHARD, R.CLIP_SCORE, R.EXTRA)


class StageOutputs(NamedTuple):
    kept: beam.PCollection
    rejected: beam.PCollection


def make_reject(record: dict, stage: Stage, reason: Reason, detail: str = "", **fields) -> dict:
    """A reject row for ``record``: identity and provenance plus why it left."""
    row = {k: record.get(k) for k in _REJECT_KEEP_FIELDS}
    row[R.STAGE] = stage.value
    row[R.REASON] = reason.value
    row[R.DETAIL] = detail[:2000]
    row.update(fields)
    return row


class StageCounters:
    """Beam counters for one stage: records kept and rejected per reason."""

    def __init__(self, stage: Stage) -> None:
        self._stage = stage
        self._kept = Metrics.counter(METRICS_NAMESPACE, f"{stage.value}.kept")
        self._rejected: dict[str, object] = {}

    def kept(self, n: int = 1) -> None:
        self._kept.inc(n)

    def rejected(self, reason: Reason | str) -> None:
        code = reason.value if isinstance(reason, Reason) else reason
        counter = self._rejected.get(code)
        if counter is None:
            counter = Metrics.counter(METRICS_NAMESPACE, f"{self._stage.value}.rejected.{code}")
            self._rejected[code] = counter
        counter.inc()
