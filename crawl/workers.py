"""Download and prepare images on every core: worker processes, each with its own threads.

Per image the work is a few milliseconds of Pillow (decode, resize, encode:
~3.5 ms on the benchmark photos, mostly outside the GIL) plus ~1 ms of
GIL-holding Python in the HTTP client. Threads in one process contend for the
GIL: on two cores one process of 32 threads did 246 images/s, two processes
of 16 threads 328 images/s (bench/README.md). So a Beam worker can hand its
batches to ``processes`` children, each with its own connection pool, host
limits and thread pool; ``processes=1`` keeps everything in the calling
process (what a cluster runner with one SDK worker per core wants).

    with FetchWorkers(download_cfg, image_cfg, processes=2) as workers:
        results = workers.map(records)   # same order; each a prepared record or a reject row

No Beam here: the children import only what fetching and Pillow need, through
a ``forkserver`` so they never inherit the runner's threads or sockets.

Limits that the config states per worker (``per_domain_concurrency``,
``per_domain_rps``, ``threads``) are divided between the processes, so the
worker as a whole keeps them; a per-host concurrency below the number of
processes cannot be divided, so then every host's URLs go to one process
(chosen by a hash of the host name) with the host's whole limit. Each
process reads robots.txt once per origin. The count of failed attempts per
host (``host_failure_limit``) is one table in shared memory for all of them
(crawl/health.py), since a dead host's URLs land in every process.

A child that dies (killed for memory, a crash in a native decoder) does not
take its batch with it: the batch is retried one record per task in a fresh
pool, and only a record that kills a child again is rejected, as
``internal_error``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor

from paircurate.crawl.client import FetchContext, download_image, host_key, make_pool
from paircurate.crawl.health import HostHealth
from paircurate.dedup.perceptual import phash_of_encoded
from paircurate.imaging.budget import PixelBudget, decode_budget_pixels, return_freed_pixels_to_the_system
from paircurate.imaging.prepare import prepare_image
from paircurate.schemas import records as R
from paircurate.schemas.config import DownloadConfig, ImageConfig
from paircurate.schemas.outcomes import Reason, RejectError, Stage

log = logging.getLogger(__name__)


def fetch_and_prepare(
    record: dict,
    download_cfg: DownloadConfig,
    image_cfg: ImageConfig,
    ctx: FetchContext,
    with_phash: bool = False,
    budget: PixelBudget | None = None,
) -> dict:
    """One record through download and image preparation.

    Returns the enriched record, or a reject row (it has a ``reason`` field).
    ``budget``: the process's decoded-pixel budget, shared by its threads.
    """
    try:
        fetched = download_image(record[R.URL], download_cfg, ctx)
    except RejectError as err:
        return R.make_reject(record, Stage.DOWNLOAD, err.reason, err.detail)
    except Exception as exc:
        log.exception("unexpected download failure for %s", record.get(R.URL))
        return R.make_reject(record, Stage.DOWNLOAD, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    try:
        image = prepare_image(fetched.data, image_cfg, budget)
    except RejectError as err:
        return R.make_reject(record, Stage.IMAGE, err.reason, err.detail)
    except Exception as exc:
        log.exception("unexpected image failure for %s", record.get(R.URL))
        return R.make_reject(record, Stage.IMAGE, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    image_hash = None
    if with_phash:
        try:
            # Hashed from the stored image, so copies at other resolutions compare alike.
            image_hash = phash_of_encoded(image.data, budget)
        except Exception as exc:  # noqa: BLE001 - a hash that cannot be taken rejects this image, not the run
            return R.make_reject(record, Stage.IMAGE, Reason.DECODE_ERROR, f"perceptual hash: {type(exc).__name__}: {exc}")
    out = dict(record)
    out.update(
        {
            R.PHASH: image_hash,
            R.IMAGE: image.data,
            R.IMAGE_FORMAT: image.format,
            R.WIDTH: image.width,
            R.HEIGHT: image.height,
            R.ORIGINAL_WIDTH: image.original_width,
            R.ORIGINAL_HEIGHT: image.original_height,
            R.SHA256: image.sha256,
            R.MD5: hashlib.md5(fetched.data, usedforsecurity=False).hexdigest(),
            R.BYTE_SIZE: len(image.data),
            R.CONTENT_TYPE: fetched.content_type,
            R.HTTP_STATUS: fetched.status,
            R.DOWNLOAD_SECONDS: fetched.seconds,
        }
    )
    return out


def routes_by_host(cfg: DownloadConfig, processes: int) -> bool:
    """Whether each host must stay in one process: its concurrency limit cannot be split."""
    return 1 < processes and cfg.per_domain_concurrency < processes


def per_process_config(cfg: DownloadConfig, processes: int) -> DownloadConfig:
    """The share of the worker's limits that one of ``processes`` children gets."""
    if processes <= 1:
        return cfg
    threads = max(1, -(-cfg.threads // processes))
    if routes_by_host(cfg, processes):  # a host's requests all go to one child: it keeps the host's whole limits
        return dataclasses.replace(cfg, threads=threads)
    return dataclasses.replace(
        cfg,
        threads=threads,
        per_domain_concurrency=cfg.per_domain_concurrency // processes,
        per_domain_rps=cfg.per_domain_rps / processes,
    )


def _host_of(record: dict) -> str:
    # The fetcher's own host key: ``example.com.`` must not get a process
    # (and so a per-host limit) of its own beside ``example.com``.
    url = record.get(R.URL)
    return host_key(url) if isinstance(url, str) else ""


class _Fetcher:
    """Threads + connection pool of one process; the unit both modes run."""

    def __init__(self, download_cfg: DownloadConfig, image_cfg: ImageConfig, with_phash: bool, health: HostHealth) -> None:
        self.download_cfg = download_cfg
        self.image_cfg = image_cfg
        self.with_phash = with_phash
        self.ctx = make_pool(download_cfg, health)
        # The threads of this process decode at most this many pixels at once,
        # and what they free goes back to the system, not to per-thread heaps.
        self.budget = PixelBudget(decode_budget_pixels(image_cfg))
        return_freed_pixels_to_the_system()
        self.threads = ThreadPoolExecutor(max_workers=download_cfg.threads, thread_name_prefix="fetch")

    def submit(self, record: dict) -> Future:
        return self.threads.submit(fetch_and_prepare, record, self.download_cfg, self.image_cfg, self.ctx, self.with_phash, self.budget)

    def map(self, records: list[dict]) -> list[dict]:
        return [future.result() for future in [self.submit(r) for r in records]]

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.ctx.clear()


_CHILD: _Fetcher | None = None


def _init_child(download_cfg: DownloadConfig, image_cfg: ImageConfig, with_phash: bool, health: HostHealth, owner_pid: int) -> None:
    global _CHILD
    _CHILD = _Fetcher(download_cfg, image_cfg, with_phash, health)
    threading.Thread(target=_exit_without_owner, args=(owner_pid,), name="owner-watch", daemon=True).start()


def _exit_without_owner(owner_pid: int, interval: float = 1.0) -> None:
    """Exit once the process that started the pool is gone.

    A child's parent is the fork server, not the pipeline, and a worker
    waiting for its next batch would wait forever: without this, a pipeline
    killed with SIGKILL (or by the OOM killer) would leave its download
    processes and the fork server behind.
    """
    while _alive(owner_pid):
        time.sleep(interval)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a killed owner not yet reaped is gone too
    except OSError:
        return True  # no /proc: trust kill()


def _child_map(records: list[dict]) -> list[dict]:
    return _CHILD.map(records)


def _child_ready(_: int) -> int:
    return os.getpid()


def default_processes() -> int:
    """One process per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class PendingBatch:
    """A submitted batch; ``result()`` waits for it and returns one result per record, in order."""

    def __init__(self, workers: "FetchWorkers", records: list[dict], futures: list[Future] | None, slices: list[list[int]] | None) -> None:
        self._workers = workers
        self._records = records
        self._futures = futures
        self._slices = slices  # None: one future per record; else the record indices of each future

    def result(self) -> list[dict]:
        if self._slices is None:
            return [future.result() for future in self._futures]
        try:
            if self._futures is None:
                raise BrokenProcessPool("the pool was broken when the batch was submitted")
            results: list[dict | None] = [None] * len(self._records)
            for indices, future in zip(self._slices, self._futures):
                for i, result in zip(indices, future.result()):
                    results[i] = result
            return results
        except BrokenProcessPool:
            log.warning("a download process died; retrying its batch of %d records one per task", len(self._records))
            return self._workers._isolate(self._records)  # noqa: SLF001 - the pool's own recovery


class FetchWorkers:
    """``fetch_and_prepare`` over lists of records on ``processes`` processes (1: this one)."""

    def __init__(self, download_cfg: DownloadConfig, image_cfg: ImageConfig, with_phash: bool = False, processes: int = 1) -> None:
        self._download_cfg = download_cfg
        self._image_cfg = image_cfg
        self._with_phash = with_phash
        self.processes = max(1, processes)
        self._by_host = routes_by_host(download_cfg, self.processes)
        # One failure count per host for the whole worker: a dead host's URLs
        # are spread over every process (see crawl/health.py).
        self._health = HostHealth(download_cfg.host_failure_limit, shared=self.processes > 1)
        self._local: _Fetcher | None = None
        self._pool: ProcessPoolExecutor | None = None
        if self.processes > 1:
            try:
                self._pool = self._start_pool()
            except (OSError, AssertionError, BrokenProcessPool) as exc:
                # e.g. inside a daemonic worker process (Dask), which may not have
                # children, or a script without a main guard that the children re-run.
                log.warning(
                    "cannot start %d download processes (%s: %s); downloading with threads in this process. "
                    "A script that calls paircurate.run() needs `if __name__ == \"__main__\":`",
                    self.processes, type(exc).__name__, exc,
                )
                self.processes, self._by_host = 1, False
        if self._pool is None:
            self._local = _Fetcher(download_cfg, image_cfg, with_phash, self._health)

    def _start_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("forkserver")
        # The fork server imports this module once; every child forks from it
        # with Pillow, urllib3 and numpy already loaded, and without Beam. (The
        # CLI may have started it already: see start_forkserver_early.)
        ctx.set_forkserver_preload([__name__])
        pool = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=ctx,
            initializer=_init_child,
            initargs=(per_process_config(self._download_cfg, self.processes), self._image_cfg, self._with_phash, self._health, os.getpid()),
        )
        # Start every child now: a failure to start shows here, not mid-batch.
        list(pool.map(_child_ready, range(self.processes)))
        return pool

    def worker_pids(self) -> list[int]:
        """Process ids of the children (empty in single-process mode)."""
        return sorted(self._pool._processes) if self._pool is not None else []  # noqa: SLF001 - no public accessor

    def map(self, records: list[dict]) -> list[dict]:
        """Fetch and prepare ``records``; results in the same order."""
        return self.submit(records).result()

    def submit(self, records: list[dict]) -> "PendingBatch":
        """Start on ``records`` without waiting, so the caller can feed the next batch meanwhile."""
        if self._local is not None:
            return PendingBatch(self, records, [self._local.submit(r) for r in records], None)
        slices = self._split(records)
        self._restart_pool()  # after a child died, new work goes to a fresh pool
        try:
            futures = [self._pool.submit(_child_map, [records[i] for i in indices]) for indices in slices]
        except BrokenProcessPool:  # a child died just now; result() recovers
            futures = None
        return PendingBatch(self, records, futures, slices)

    def _split(self, records: list[dict]) -> list[list[int]]:
        """Indices of the records each child gets: equal contiguous slices, or by host when it must."""
        if self._by_host:
            slices: list[list[int]] = [[] for _ in range(self.processes)]
            for i, record in enumerate(records):
                slices[zlib.crc32(_host_of(record).encode()) % self.processes].append(i)
            return [indices for indices in slices if indices]
        size = -(-len(records) // self.processes)
        return [list(range(i, min(i + size, len(records)))) for i in range(0, len(records), size)]

    def _isolate(self, records: list[dict]) -> list[dict]:
        """Each record as its own task, so a record that kills a child is found."""
        self._restart_pool()
        futures = [self._pool.submit(_child_map, [record]) for record in records]
        results = []
        for record, future in zip(records, futures):
            try:
                results.append(future.result()[0])
            except BrokenProcessPool:  # this record, or another one, killed a child
                results.append(self._alone(record))
        return results

    def _alone(self, record: dict) -> dict:
        self._restart_pool()
        try:
            return self._pool.submit(_child_map, [record]).result()[0]
        except BrokenProcessPool:
            self._restart_pool()
            return R.make_reject(record, Stage.IMAGE, Reason.INTERNAL_ERROR, "a worker process died twice while fetching or decoding this image")

    def _restart_pool(self) -> None:
        if self._pool is not None and not self._pool._broken:  # noqa: SLF001 - no public accessor
            return
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._start_pool()

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "FetchWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
