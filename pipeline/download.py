"""Download stage: fetch, decode, validate and resize images, many URLs at a time.

Batches of records go to ``FetchWorkers``: worker processes with a thread
pool each, so HTTP and Pillow keep every core busy (or threads in this
process with ``download.processes = 1``).
"""

from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from paircurate.crawl.workers import FetchWorkers
from paircurate.pipeline.progress import ProgressReporter
from paircurate.pipeline.stage import (
    CPU_US,
    METRICS_NAMESPACE,
    REJECTED,
    IsolatedDoFn,
    StageCounters,
    StageOutputs,
)
from paircurate.schemas import records as R
from paircurate.schemas.config import DownloadConfig, ImageConfig
from paircurate.schemas.outcomes import Stage


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux ``/proc``); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def _in_global_window(output):
    """finish_bundle has no input element to take a window from; this stage runs in the global one."""
    if isinstance(output, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(output.tag, _in_global_window(output.value))
    return GlobalWindows.windowed_value_at_end_of_window(output)  # where BatchElements puts its batches too


class _FetchBatchFn(IsolatedDoFn):
    STAGE = Stage.DOWNLOAD

    def __init__(self, download_cfg: DownloadConfig, image_cfg: ImageConfig, progress_dir: str | None, with_phash: bool) -> None:
        self._download_cfg = download_cfg
        self._image_cfg = image_cfg
        self._progress_dir = progress_dir
        self._with_phash = with_phash

    def setup(self) -> None:
        self._workers = FetchWorkers(self._download_cfg, self._image_cfg, self._with_phash, self._download_cfg.processes)
        self._download = StageCounters(Stage.DOWNLOAD)
        self._image = StageCounters(Stage.IMAGE)
        self._progress = ProgressReporter(self._progress_dir)
        self._children_cpu = Metrics.counter(METRICS_NAMESPACE, f"{Stage.DOWNLOAD.value}.{CPU_US}")
        self._children_cpu_seen: dict[int, float] = {}

    def start_bundle(self) -> None:
        self._in_flight = None  # (batch, future of its results)

    def process(self, batch: list[dict]):
        # One batch stays in flight: the workers download it while this
        # thread passes the previous batch's results downstream and the
        # runner assembles the next batch.
        submitted = self.isolate(batch, self._submit, batch)
        if self._in_flight is not None:
            yield from self._finish(*self._in_flight)
            self._in_flight = None
        if submitted and not isinstance(submitted[0], beam.pvalue.TaggedOutput):
            self._in_flight = (batch, submitted[0])
        else:
            yield from submitted  # the batch could not even be handed to the workers

    def finish_bundle(self):
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            for output in self._finish(*in_flight):
                yield _in_global_window(output)
        self._progress.flush()
        self._count_children_cpu()

    def _count_children_cpu(self) -> None:
        """Add the download processes' CPU since the last call to the stage's CPU time."""
        for pid in self._workers.worker_pids():
            used = process_cpu_seconds(pid)
            if used is not None:
                self._children_cpu.inc(int((used - self._children_cpu_seen.get(pid, 0.0)) * 1e6))
                self._children_cpu_seen[pid] = used

    def _submit(self, batch: list[dict]):
        yield self._workers.submit(batch)

    def _finish(self, batch: list[dict], pending) -> list:
        # Isolated with the batch it belongs to: a failure while collecting
        # results rejects that batch's records, not the one being submitted.
        return self.isolate(batch, self._emit, pending)

    def _emit(self, pending):
        for result in pending.result():
            self._progress.add(1)
            if R.REASON in result:
                (self._download if result[R.STAGE] == Stage.DOWNLOAD.value else self._image).rejected(result[R.REASON])
                yield beam.pvalue.TaggedOutput(REJECTED, result)
            else:
                self._download.kept()
                self._image.kept()
                yield result

    def teardown(self) -> None:
        self._workers.close()
        self._progress.flush()


class DownloadImages(beam.PTransform):
    """Pairs -> pairs with encoded image bytes and image metadata.

    Rejects carry stage ``download`` (HTTP: ``timeout``, ``http_404``, ...) or
    ``image`` (``decode_error``, ``image_too_small``, ...).
    """

    def __init__(self, download_cfg: DownloadConfig, image_cfg: ImageConfig, progress_dir: str | None = None, with_phash: bool = False) -> None:
        super().__init__()
        self._download_cfg = download_cfg
        self._image_cfg = image_cfg
        self._progress_dir = progress_dir
        self._with_phash = with_phash

    def expand(self, pairs) -> StageOutputs:
        size = self._download_cfg.batch_size
        out = (
            pairs
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "FetchAndPrepare" >> beam.ParDo(_FetchBatchFn(self._download_cfg, self._image_cfg, self._progress_dir, self._with_phash)).with_outputs(REJECTED, main="kept")
        )
        return StageOutputs(out.kept, out[REJECTED])
