"""What every stage shares: its two outputs and its counters."""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from paircurate.schemas.outcomes import Reason, Stage

REJECTED = "rejected"
METRICS_NAMESPACE = "paircurate"


class StageOutputs(NamedTuple):
    kept: beam.PCollection
    rejected: beam.PCollection


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
