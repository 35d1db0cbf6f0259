"""Console progress that works on any runner with a shared output folder.

Workers may be threads of this process, other processes or other machines, so
they cannot update the driver's progress bar directly. Each DoFn instance
writes its running count to a small file under ``OUT/_progress/`` at most once
a second (every ``_REMOTE_WRITE_INTERVAL_S`` on an object store, where each
write is a PUT); the driver sums the files and moves a tqdm bar.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from tqdm import tqdm

from paircurate import storage

_WRITE_INTERVAL_S = 1.0
_REMOTE_WRITE_INTERVAL_S = 5.0


class ProgressReporter:
    def __init__(self, progress_dir: str | None) -> None:
        self._dir = progress_dir
        self._count = 0
        self._last_write = 0.0
        self._path = None
        self._interval = _WRITE_INTERVAL_S
        if progress_dir:
            self._path = storage.join(progress_dir, f"{os.getpid()}-{uuid.uuid4().hex[:12]}.count")
            self._interval = _REMOTE_WRITE_INTERVAL_S if storage.is_remote(progress_dir) else _WRITE_INTERVAL_S

    def add(self, n: int) -> None:
        self._count += n
        if self._path and time.monotonic() - self._last_write >= self._interval:
            self.flush()

    def flush(self) -> None:
        if not self._path:
            return
        try:
            storage.write_bytes(self._path, str(self._count).encode())
        except (OSError, storage.StorageError):
            pass  # progress is cosmetic; a full disk or a refusing store shows up in the real writes
        self._last_write = time.monotonic()


class ProgressMonitor:
    """Driver side: a background thread that polls the counts into a tqdm bar."""

    def __init__(self, progress_dir: str, total: int, enabled: bool = True, desc: str = "download") -> None:
        self._dir = progress_dir
        self._total = total
        self._enabled = enabled
        self._desc = desc
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: tqdm | None = None

    def __enter__(self) -> "ProgressMonitor":
        if self._enabled:
            self._bar = tqdm(total=self._total, desc=self._desc, unit="url", dynamic_ncols=True)
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._bar:
            self._update()
            self._bar.close()

    def _poll(self) -> None:
        while not self._stop.wait(2.0 if storage.is_remote(self._dir) else 0.5):
            self._update()

    def _update(self) -> None:
        total = 0
        try:
            for name in storage.names(self._dir):
                if name.endswith(".count"):
                    total += int(storage.read_bytes(storage.join(self._dir, name)) or 0)
        except (OSError, ValueError, storage.StorageError):
            return
        if self._bar is not None and total > self._bar.n:
            self._bar.update(min(total, self._total) - self._bar.n)
