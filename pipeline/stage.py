"""What every stage shares: its two outputs, its counters, and per-row isolation.

Per-row isolation is the one mechanism that keeps a run alive through a row
nobody anticipated: every per-record step of every stage runs its records
through ``RowIsolation.run`` (DoFns by deriving from ``IsolatedDoFn``, the
shard writer by calling it directly), in the shape of Beam's
``with_exception_handling`` and datatrove's base filter. Any exception a step
raises for a record becomes that record's reject with reason
``internal_error``, the exception type and message in ``detail``, and a
counter; the run goes on. ``--max-error-rate`` decides afterwards whether so
many internal errors make the run a failure (``paircurate.api``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Callable, Iterable, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from paircurate.schemas import records as R
from paircurate.schemas.outcomes import Reason, Stage

log = logging.getLogger(__name__)

REJECTED = "rejected"
METRICS_NAMESPACE = "paircurate"
WALL_US, CPU_US = "wall_us", "cpu_us"  # suffixes of the stage timing counters
_DETAIL_CHARS = 500  # enough for a type and a message; a reject row is not a log file
_LOGGED_PER_STEP = 10  # warnings per step instance; the rest are in the rejects (and at debug level)


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


class StageTimer:
    """Beam counters of the time a stage's steps take: wall and CPU, in microseconds.

    CPU is the process's CPU while the step ran (``time.process_time``), so it
    includes the threads a step runs on (torch's, for CLIP on CPU); the
    download stage adds its worker processes' CPU itself.
    """

    def __init__(self, stage: Stage) -> None:
        self._wall = Metrics.counter(METRICS_NAMESPACE, f"{stage.value}.{WALL_US}")
        self._cpu = Metrics.counter(METRICS_NAMESPACE, f"{stage.value}.{CPU_US}")

    def add(self, wall_seconds: float, cpu_seconds: float) -> None:
        self._wall.inc(int(wall_seconds * 1e6))
        self._cpu.inc(int(cpu_seconds * 1e6))


def stage_seconds(counters: Iterable[tuple[str, int]]) -> dict[str, dict[str, float]]:
    """``{stage: {"wall": s, "cpu": s}}`` from (counter name, value) pairs of a run's metrics."""
    found: dict[str, dict[str, float]] = {}
    for name, value in counters:
        stage, _, kind = name.rpartition(".")
        if kind in (WALL_US, CPU_US) and stage:
            entry = found.setdefault(stage, {"wall": 0.0, "cpu": 0.0})
            entry["wall" if kind == WALL_US else "cpu"] += value / 1e6
    order = [s.value for s in Stage]
    return {k: {kind: round(v, 4) for kind, v in found[k].items()} for k in sorted(found, key=lambda s: order.index(s) if s in order else len(order))}


def internal_error_detail(exc: BaseException) -> str:
    """``"TypeName: message"``: the run summary groups internal errors by the part before the colon."""
    return f"{type(exc).__name__}: {exc}"[:_DETAIL_CHARS]


def internal_error_type(detail: str | None) -> str:
    """The exception type named by an ``internal_error`` reject's detail."""
    return (detail or "").split(":", 1)[0] or "unknown"


def internal_error_reject(record: Any, stage: Stage, detail: str) -> dict:
    """A reject row for ``record``, even one that never became a complete record."""
    record = record if isinstance(record, dict) else {}
    row = R.make_reject(record, stage, Reason.INTERNAL_ERROR, detail)
    if not row.get(R.UID):  # every reject row is addressable; the row's position identifies it
        where = f"{row.get(R.SOURCE_FILE)}\x00{row.get(R.SOURCE_ROW)}"
        row[R.UID] = hashlib.sha256(where.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return row


class RowIsolation:
    """Runs one step over one record (or a batch of them); an exception rejects those records.

        isolation = RowIsolation(Stage.CAPTION)
        outputs = isolation.run(record, step, record)   # step's outputs, or the record's reject

    A step's outputs are collected before any is passed on, so a record that
    fails halfway leaves nothing downstream but its reject: each input row
    still ends up exactly once in kept or rejected. ``to_output`` turns the
    reject row into what the step's consumer expects (by default a tagged
    output on ``REJECTED``).
    """

    def __init__(self, stage: Stage, to_output: Callable[[dict], Any] | None = None) -> None:
        self.stage = stage
        self._to_output = to_output or (lambda row: beam.pvalue.TaggedOutput(REJECTED, row))
        self._counters: StageCounters | None = None
        self._timer: StageTimer | None = None
        self._depth = 0  # steps isolated inside a step are timed with it, not again
        self._failures = 0

    def run(self, records: dict | list[dict], step: Callable[..., Iterable], *args, **kwargs) -> list:
        outermost = self._depth == 0
        self._depth += 1
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return list(step(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - the point of isolation: recorded, never swallowed
            return self.rejects(records, exc)
        finally:
            self._depth -= 1
            if outermost:
                if self._timer is None:
                    self._timer = StageTimer(self.stage)
                self._timer.add(time.perf_counter() - wall, time.process_time() - cpu)

    def rejects(self, records: Any, exc: BaseException) -> list:
        batch = records if isinstance(records, list) else [records]
        detail = internal_error_detail(exc)
        self._failures += 1
        level = logging.WARNING if self._failures <= _LOGGED_PER_STEP else logging.DEBUG
        log.log(level, "%s: internal_error on %d record(s): %s", self.stage.value, len(batch), detail, exc_info=log.isEnabledFor(logging.DEBUG))
        if self._counters is None:
            self._counters = StageCounters(self.stage)
        outputs = []
        for record in batch:
            self._counters.rejected(Reason.INTERNAL_ERROR)
            outputs.append(self._to_output(internal_error_reject(record, self.stage, detail)))
        return outputs


class IsolatedDoFn(beam.DoFn):
    """Base of every per-record DoFn: subclasses set ``STAGE`` and write ``process_record``.

    ``process_record(element, ...)`` yields outputs as a DoFn's ``process``
    would; the element is a record or a batch (list) of records, and an
    exception rejects all of them as ``internal_error``. Steps that also need
    isolation at a finer grain (a row inside a file, a record inside a batch)
    call ``self.isolate(records, step, *args)`` themselves.
    """

    STAGE: Stage

    def process(self, element, *args, **kwargs):
        return self.isolate(element, self.process_record, element, *args, **kwargs)

    def process_record(self, element, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def isolate(self, records, step: Callable[..., Iterable], *args, **kwargs) -> list:
        isolation = getattr(self, "_isolation", None)
        if isolation is None:
            isolation = self._isolation = self.make_isolation()
        return isolation.run(records, step, *args, **kwargs)

    def make_isolation(self) -> RowIsolation:
        return RowIsolation(self.STAGE)
