"""Every byte paircurate reads or writes outside a worker's memory goes through here: one filesystem abstraction.

    >>> write_bytes("s3://bucket/out/_plan.json", b"{}")      # also gs://, memory://, /local/path
    >>> with atomic_writer("gs://bucket/out/00012.tar") as fh: fh.write(tar_bytes)
    >>> names("s3://bucket/out")                               # ['00000.tar', '00000_stats.json', ...]

The abstraction is fsspec (why not Beam's ``FileSystems``: see README "Object
storage"). A path is a path: local paths stay plain ``os`` paths (renamed
temporaries, as before), anything with a ``scheme://`` goes to the fsspec
implementation of that scheme (s3fs, gcsfs, the in-memory one), which takes
credentials and endpoints from the store's own environment and config files.

Object stores have no rename, so an object must appear complete or not at
all: ``atomic_writer`` stages the bytes in a local temporary file and uploads
them with one call (one PUT, or a multipart upload that is completed only
after the last part); an exception before that uploads nothing.

Errors name the operation and the URL (``PUT s3://bucket/out/00012.tar:
AccessDenied``). Transient ones (connection reset, timeouts, 5xx/throttling
the client library gave up on) are retried with exponential backoff;
permanent ones (no such bucket, access denied) raise ``StorageError``, a
``UserError``: one line, no traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from typing import Callable, Iterator, TypeVar

import fsspec

from paircurate.schemas.config import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRIES = 5
BACKOFF_S = 0.5  # first wait; doubled per attempt (0.5, 1, 2, 4 s)
_PERMANENT = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError, ValueError, TypeError)
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed", "Throttling", "503", "500", "429"}
# botocore's network failures are not OSErrors; they are worth another attempt.
_TRANSIENT_CLASSES = {
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "ProxyConnectionError", "ResponseStreamingError", "IncompleteReadError", "FSTimeoutError",
}
_LABELS = {FileNotFoundError: "NotFound", PermissionError: "AccessDenied"}
_BEAM_SUFFIX = re.compile(r" \[while running .*$", re.S)


class StorageError(UserError):
    """A store refused an operation for good: ``OP URL: reason``."""


def is_remote(path: str) -> bool:
    """True for ``scheme://...`` other than ``file://``: the object-store code path."""
    return "://" in path and not path.startswith("file://")


def join(base: str, *names: str) -> str:
    if not is_remote(base):
        return os.path.join(base, *names)
    return "/".join([base.rstrip("/"), *names])


def url_to_fs(path: str):
    """(fsspec filesystem, path as that filesystem spells it)."""
    return fsspec.core.url_to_fs(path)


# --- errors and retries ------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """The store's own error code when the client library kept it (``AccessDenied``), else the message."""
    seen = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return str(response["Error"]["Code"])
        code = getattr(seen, "code", None)
        if isinstance(code, int) and getattr(seen, "message", None):  # gcsfs HttpError
            return f"{code} {seen.message}"
        seen = seen.__cause__ or seen.__context__
    for kind, label in _LABELS.items():  # the client kept no code, and its message is just the URL
        if isinstance(exc, kind):
            return label
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _is_transient(exc: BaseException) -> bool:
    reason = _reason(exc)
    if reason.split(" ")[0] in _TRANSIENT_CODES:
        return True
    if isinstance(exc, _PERMANENT):
        return False
    seen = exc
    while seen is not None:  # the network failure may sit under the client library's own exception
        if type(seen).__name__ in _TRANSIENT_CLASSES or type(seen).__module__.startswith("aiohttp"):
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, (OSError, TimeoutError))


def call(op: str, path: str, fn: Callable[[], T]) -> T:
    """``fn()``, retried with backoff while the store fails transiently; StorageError naming op and URL otherwise."""
    if not is_remote(path):
        return fn()  # local errors are not transient; they keep their own message
    for attempt in range(RETRIES):
        try:
            return fn()
        except Exception as exc:
            if not _is_transient(exc):
                raise StorageError(f"{op} {path}: {_reason(exc)}") from exc
            if attempt == RETRIES - 1:
                raise StorageError(f"{op} {path}: {_reason(exc)} (after {RETRIES} attempts)") from exc
            wait = BACKOFF_S * 2**attempt
            log.warning("%s %s: %s; retrying in %.1fs", op, path, _reason(exc), wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def storage_error_line(exc: BaseException) -> str | None:
    """The one line of a StorageError anywhere in ``exc``'s chain (a runner may have wrapped it), else None."""
    seen, visited = exc, set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, StorageError):
            return _BEAM_SUFFIX.sub("", str(seen)).strip()
        match = re.search(r"StorageError: ((?:PUT|GET|LIST|DELETE|HEAD) \S+: [^\n\[]+)", str(seen))
        if match:
            return match.group(1).strip()
        seen = seen.__cause__ or seen.__context__
    return None


# --- reading -----------------------------------------------------------------------------------------


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    fs, p = url_to_fs(path)
    return call("HEAD", path, lambda: fs.exists(p))


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    fs, p = url_to_fs(path)
    fs.invalidate_cache(p)
    return call("LIST", path, lambda: fs.isdir(p))


def names(folder: str) -> list[str]:
    """Names directly under ``folder`` (files and sub-folders), sorted; [] if it does not exist."""
    if not is_remote(folder):
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    fs, p = url_to_fs(folder)
    fs.invalidate_cache(p)  # another process (a worker) may have written since this one last listed

    def ls():
        try:
            return fs.ls(p, detail=False)
        except FileNotFoundError:
            return []

    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in call("LIST", folder, ls))


def find(folder: str) -> list[str]:
    """Every file under ``folder``, recursively, as full paths in ``folder``'s spelling; sorted."""
    if not is_remote(folder):
        return sorted(os.path.join(root, n) for root, _, files in os.walk(folder) for n in files)
    fs, p = url_to_fs(folder)
    fs.invalidate_cache(p)
    found = call("LIST", folder, lambda: fs.find(p))
    return sorted(join(folder, f[len(p.rstrip("/")) + 1 :]) for f in found)


def glob(pattern: str) -> list[str]:
    """Paths matching ``pattern`` (``*``, ``?``, ``[...]``, ``**``), sorted, with the pattern's scheme."""
    if not is_remote(pattern):
        import glob as _glob

        return sorted(_glob.glob(pattern, recursive=True))
    fs, p = url_to_fs(pattern)
    return sorted(fs.unstrip_protocol(m) for m in call("LIST", pattern, lambda: fs.glob(p)))


def has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as fh:
            return fh.read()
    fs, p = url_to_fs(path)
    return call("GET", path, lambda: fs.cat_file(p))


def read_range(path: str, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``: one ranged GET on a store."""
    if not is_remote(path):
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)
    fs, p = url_to_fs(path)
    return call("GET", path, lambda: fs.cat_file(p, start=offset, end=offset + length))


def read_ranges(ranges: list[tuple[str, int, int]]) -> list[bytes]:
    """``(path, offset, length)`` each; on a store all requested at once (concurrent ranged GETs)."""
    if not ranges:
        return []
    first = ranges[0][0]
    if not is_remote(first):
        return [read_range(path, offset, length) for path, offset, length in ranges]
    fs, _ = url_to_fs(first)
    paths = [url_to_fs(path)[1] for path, _, _ in ranges]
    starts = [offset for _, offset, _ in ranges]
    ends = [offset + length for _, offset, length in ranges]

    def fetch():
        out = fs.cat_ranges(paths, starts, ends, on_error="return")
        for got in out:
            if isinstance(got, BaseException):
                raise got
        return out

    return call("GET", first if len({p for p, _, _ in ranges}) == 1 else f"{first} (+{len(ranges) - 1} ranges)", fetch)


def open_read(path: str):
    """A seekable binary file (a context manager); pyarrow, tarfile and numpy read from it."""
    if not is_remote(path):
        return open(path, "rb")
    fs, p = url_to_fs(path)
    return call("GET", path, lambda: fs.open(p, "rb"))


def open_input(path: str):
    """A store's object as a binary stream, decompressed by its extension (``.gz``, ``.bz2``, ``.zst``)."""
    return call("GET", path, lambda: fsspec.open(path, "rb", compression="infer").open())


def size(path: str) -> int:
    if not is_remote(path):
        return os.path.getsize(path)
    fs, p = url_to_fs(path)
    return call("HEAD", path, lambda: fs.size(p))


@contextlib.contextmanager
def local_copy(folder: str, wanted: Callable[[str], bool]) -> Iterator[str]:
    """A local folder holding the files of ``folder`` whose name passes ``wanted``; the folder itself if local."""
    if not is_remote(folder):
        yield folder
        return
    tmp = tempfile.mkdtemp(prefix="paircurate-copy-")
    try:
        fs, _ = url_to_fs(folder)
        for name in names(folder):
            if wanted(name):
                src = url_to_fs(join(folder, name))[1]
                call("GET", join(folder, name), lambda s=src, n=name: fs.get_file(s, os.path.join(tmp, n)))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- writing -----------------------------------------------------------------------------------------


def makedirs(folder: str) -> None:
    """Local folders only: a store has no folders, a prefix exists once an object is under it."""
    if not is_remote(folder):
        os.makedirs(folder, exist_ok=True)


@contextlib.contextmanager
def atomic_writer(path: str):
    """A binary file handle whose content appears at ``path`` only if the block completes.

    Local: a hidden temporary next to ``path``, fsynced and renamed. Store: a
    local temporary file uploaded in one call when the block completes.
    """
    if not is_remote(path):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return
    fs, p = url_to_fs(path)
    with tempfile.NamedTemporaryFile(prefix="paircurate-upload-") as fh:
        yield fh
        fh.flush()
        call("PUT", path, lambda: fs.put_file(fh.name, p))


def write_bytes(path: str, data: bytes) -> None:
    """``data`` at ``path`` in one piece (renamed temporary, or a single PUT)."""
    if not is_remote(path):
        with atomic_writer(path) as fh:
            fh.write(data)
        return
    fs, p = url_to_fs(path)
    call("PUT", path, lambda: fs.pipe_file(p, data))


def remove(path: str, recursive: bool = False) -> None:
    """Delete a file, or a folder/prefix with ``recursive``; nothing there is fine."""
    if not is_remote(path):
        if os.path.isdir(path):
            if recursive:
                shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
        return
    fs, p = url_to_fs(path)
    fs.invalidate_cache(p)

    def rm():
        try:
            fs.rm(p, recursive=recursive)
        except FileNotFoundError:
            pass

    call("DELETE", path, rm)
