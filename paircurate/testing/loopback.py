"""A real HTTP server on 127.0.0.1 with static routes and misbehaving ones.

    >>> with LoopbackServer() as server:
    ...     server.add("/cat.jpg", jpeg_bytes)
    ...     url = server.url("/cat.jpg")          # http://127.0.0.1:<port>/cat.jpg
    ...     flaky = server.url("/fault/flaky/2/a") # 500, 500, then a PNG
    ...     ...
    ...     server.hits("/fault/flaky/2/a")        # requests seen for that path
    ...     server.max_in_flight("127.0.0.1")      # most requests for that Host at once

``LoopbackServer("::1")`` listens on IPv6 loopback instead.

Used by the tests, ``paircurate demo`` and the benchmarks, so it runs in a
thread of the calling process (no subprocess) and stops quickly even while a
never-ending response is being served.

Fault routes (query parameters in brackets):

=====================================  =============================================================
``/fault/404``, ``/fault/500``         that status, small text body
``/fault/status/<code>``               any status, small text body
``/fault/flaky/<n>/<id>`` [then]       500 for the first n requests of ``id``, then a PNG (or static route ``then``)
``/fault/slow`` [seconds=1]            sleeps, then a PNG
``/fault/drip`` [interval=0.5]         declares 1 MB of image/jpeg, sends one byte per interval, forever
``/fault/drip-status`` [interval=0.5]  the status line ``HTTP/1.1 200 OK`` one byte per interval, then silence
``/fault/drip-headers`` [interval=0.5] a status line, then a header one byte per interval, forever
``/fault/silent``                      reads the request and never answers
``/fault/reset``                       headers + 1000 of 100000 bytes, then a TCP reset (SO_LINGER 0)
``/fault/truncated``                   Content-Length 100000, 1000 bytes, then a clean close
``/fault/html``                        a text/html page
``/fault/large`` [bytes, declare=1,    N bytes of image/jpeg junk; declare=1 sends Content-Length,
chunked=1]                             declare=0 streams chunked, declare=0&chunked=0 ends by closing
``/fault/endless`` [chunk=16384,       chunked image/jpeg that never ends (one chunk per interval)
interval=0.01]
``/fault/redirect-loop``               302 to ``/fault/redirect-loop/b``, which 302s back
``/fault/redirect`` [to, code=302]     redirect to ``to`` (a path or an absolute URL)
``/fault/redirect-chain/<n>``          n hops of 302, then a PNG
``/fault/429`` [retry_after, id,       the first request per ``id``: that status with Retry-After
status=429]                            (omitted when not given); later ones: a PNG
``/fault/noai`` [tag=noai]             a PNG with ``X-Robots-Tag: <tag>`` (e.g. ``otherbot: noai``)
``/fault/bomb`` [side=30000]           a real decompression bomb: a valid black RGB PNG of side x side
                                       pixels (2.7 GB decoded at 30000, about 2.6 MB sent)
``/same/<anything>``                   the same PNG under any number of URLs
=====================================  =============================================================

Static routes take a status too: ``server.add("/robots.txt", b"User-agent: *\nDisallow: /x/\n",
"text/plain")`` or ``server.add("/robots.txt", b"down", "text/plain", status=503)``.
"""

from __future__ import annotations

import functools
import logging
import socket
import socketserver
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

__all__ = ["LoopbackServer", "RecordedRequest", "tiny_png", "png_bomb", "FAULT_IMAGE"]


def tiny_png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A valid solid-colour RGB PNG, built without Pillow so the server needs nothing."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" + bytes(rgb) * width  # filter byte 0 (None) per scanline
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


FAULT_IMAGE = tiny_png()
"""The body fault routes serve once they stop misbehaving."""


@functools.lru_cache(maxsize=4)
def png_bomb(side: int = 30000) -> bytes:
    """A valid black RGB PNG of ``side`` x ``side`` pixels, tiny on the wire.

    Every decoded byte (filter bytes included) is zero, so the IDAT stream is
    one deflated piece of zeros repeated: after a full flush zlib forgets its
    history and compresses the same input to the same bytes, and the Adler-32
    of n zeros is known in closed form. At 30000 it decodes to 2.7 GB from
    about 2.6 MB, and is built in milliseconds.
    """
    row_bytes = 1 + 3 * side
    piece_rows = max(1, (1 << 20) // row_bytes)
    pieces, rest = divmod(side, piece_rows)
    piece = bytes(row_bytes * piece_rows)
    comp = zlib.compressobj(9)
    first = comp.compress(piece) + comp.flush(zlib.Z_FULL_FLUSH)  # carries the zlib header
    repeat = comp.compress(piece) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(bytes(row_bytes * rest)) + comp.flush(zlib.Z_FINISH)
    adler = ((row_bytes * side) % 65521) << 16 | 1  # a = 1, b = n (mod 65521) for n zero bytes
    idat = first + repeat * (pieces - 1) + tail[:-4] + struct.pack(">I", adler)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


_DRIP_DECLARED = 1_000_000
_PARTIAL_DECLARED = 100_000
_PARTIAL_SENT = 1000
_WRITE_PIECE = 64 * 1024
_JUNK = bytes(range(256)) * (_WRITE_PIECE // 256)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    target: str  # path and query as sent
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Route:
    body: bytes
    content_type: str | None
    headers: dict[str, str]
    status: int = 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # Benchmarks open dozens of connections at once; the default backlog of 5
    # drops SYNs and adds 1 s retransmit stalls.
    request_queue_size = 256

    def __init__(self, owner: "LoopbackServer", address: tuple[str, int]) -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which
        # can hang for seconds on machines without a resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - socketserver API
        # Clients hanging up mid-response is routine here (that is what the
        # fault routes provoke); don't print tracebacks for it.
        log.debug("loopback handler error for %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real image hosts
    server_version = "paircurate-loopback/1"
    sys_version = ""
    disable_nagle_algorithm = True  # see shared/HINTS.md: stdlib writes headers and body separately
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._register(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._unregister(self)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("loopback %s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        owner = self.server.owner
        parts = urlsplit(self.path)
        owner._record(RecordedRequest("GET", self.path, parts.path, dict(self.headers.items())))
        self._working_on = _host_name(self.headers.get("Host", ""))
        owner._begin_work(self._working_on)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            route = owner._routes.get(parts.path)
            if route is not None:
                self._send(route.status, route.body, route.content_type, route.headers)
            elif parts.path.startswith("/fault/"):
                self._fault(parts.path[len("/fault/") :], query)
            elif parts.path.startswith("/same/"):
                self._send(200, FAULT_IMAGE, "image/png")
            else:
                self._send(404, b"no such route\n", "text/plain")
        except (ConnectionError, socket.timeout, OSError):
            # The client went away (often on purpose); this connection is done.
            self.close_connection = True
        finally:
            self._end_work()

    def send_response(self, code: int, message: str | None = None) -> None:
        # A request stops counting as in flight when its response starts: the
        # client cannot have finished reading it (and sent its next request)
        # before then, so max_in_flight never counts one client twice.
        self._end_work()
        super().send_response(code, message)

    def _end_work(self) -> None:
        host = getattr(self, "_working_on", None)
        if host is not None:
            self._working_on = None
            self.server.owner._end_work(host)

    # -- responses -------------------------------------------------------

    def _send(
        self, status: int, body: bytes, content_type: str | None = "image/png", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        extra = dict(headers or {})
        if not any(k.lower() == "content-length" for k in extra):
            self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, status: int = 302) -> None:
        self._send(status, b"", None, {"Location": location})

    def _head(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _fault(self, name: str, q: dict[str, str]) -> None:
        """``/fault/KIND[/ARG...]``: look KIND up in ``FAULT_ROUTES`` and answer with it."""
        kind, *args = name.split("/")
        route = FAULT_ROUTES.get(kind)
        if route is None or not route(self, args, q):
            self._send(404, f"unknown fault route {name!r}\n".encode(), "text/plain")

    # Each fault answers one request; it returns False when its arguments do not fit (-> 404).

    def _fault_status(self, args: list[str], q: dict[str, str], status: int | None = None) -> bool:
        if status is None:
            if len(args) != 1 or not args[0].isdigit():
                return False
            status = int(args[0])
        elif args:
            return False
        self._send(status, {404: b"not found\n", 500: b"internal error\n"}.get(status, f"status {status}\n".encode()), "text/plain")
        return True

    def _fault_flaky(self, args: list[str], q: dict[str, str]) -> bool:
        if len(args) != 2 or not args[0].isdigit():
            return False
        owner = self.server.owner
        if owner._bump(("flaky", args[1])) <= int(args[0]):
            self._send(500, b"flaky failure\n", "text/plain")
        elif q.get("then") in owner._routes:  # then serve that static route: a distinct image per flaky URL
            route = owner._routes[q["then"]]
            self._send(route.status, route.body, route.content_type, route.headers)
        else:
            self._send(200, FAULT_IMAGE, "image/png")
        return True

    def _fault_slow(self, args: list[str], q: dict[str, str]) -> bool:
        if self.server.owner._stopping.wait(float(q.get("seconds", "1"))):
            self.close_connection = True
        else:
            self._send(200, FAULT_IMAGE, "image/png")
        return True

    def _fault_drip(self, args: list[str], q: dict[str, str]) -> bool:
        interval = float(q.get("interval", "0.5"))
        self.close_connection = True
        self._head(200, "image/jpeg", {"Content-Length": str(_DRIP_DECLARED)})
        for i in range(_DRIP_DECLARED):
            if self.server.owner._stopping.wait(interval):
                break
            self.wfile.write(_JUNK[i % 256 : i % 256 + 1])
        return True

    def _fault_drip_status(self, args: list[str], q: dict[str, str]) -> bool:
        # Each byte restarts the client's read timeout; only a deadline ends this.
        self._drip_raw(b"HTTP/1.1 200 OK\r\n", float(q.get("interval", "0.5")), forever=False)
        return True

    def _fault_drip_headers(self, args: list[str], q: dict[str, str]) -> bool:
        self._drip_raw(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Drip: ", float(q.get("interval", "0.5")), forever=True, first=30)
        return True

    def _fault_silent(self, args: list[str], q: dict[str, str]) -> bool:
        # Reads the request and never answers, until the server stops.
        self.close_connection = True
        self.server.owner._stopping.wait()
        return True

    def _drip_raw(self, prefix: bytes, interval: float, *, forever: bool, first: int = 0) -> None:
        """Write ``prefix`` (its first ``first`` bytes at once) then one byte per interval; ``forever`` goes on with 'a's."""
        self._end_work()
        self.close_connection = True
        stopping = self.server.owner._stopping
        self.wfile.write(prefix[:first])
        i = first
        while forever or i < len(prefix):
            if stopping.wait(interval):
                return
            self.wfile.write(prefix[i : i + 1] if i < len(prefix) else b"a")
            i += 1
        # The status line never ends, so nothing after it matters.
        stopping.wait()

    def _fault_reset(self, args: list[str], q: dict[str, str]) -> bool:
        self._head(200, "image/jpeg", {"Content-Length": str(_PARTIAL_DECLARED)})
        self.wfile.write(_JUNK[:_PARTIAL_SENT])
        self._reset()
        return True

    def _fault_truncated(self, args: list[str], q: dict[str, str]) -> bool:
        self.close_connection = True
        self._head(200, "image/jpeg", {"Content-Length": str(_PARTIAL_DECLARED)})
        self.wfile.write(_JUNK[:_PARTIAL_SENT])
        return True

    def _fault_html(self, args: list[str], q: dict[str, str]) -> bool:
        page = b"<!doctype html><html><head><title>Not an image</title></head><body>hello</body></html>\n"
        self._send(200, page, "text/html; charset=utf-8")
        return True

    def _fault_large(self, args: list[str], q: dict[str, str]) -> bool:
        self._large(int(q.get("bytes", str(10 * 1024 * 1024))), q.get("declare", "1") != "0", q.get("chunked", "1") != "0")
        return True

    def _fault_endless(self, args: list[str], q: dict[str, str]) -> bool:
        stopping = self.server.owner._stopping
        chunk = _JUNK[: max(1, min(int(q.get("chunk", "16384")), len(_JUNK)))]
        interval = float(q.get("interval", "0.01"))
        self.close_connection = True
        self._head(200, "image/jpeg", {"Transfer-Encoding": "chunked"})
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        while not stopping.is_set():
            self.wfile.write(framed)
            if interval > 0 and stopping.wait(interval):
                break
        return True

    def _fault_redirect_loop(self, args: list[str], q: dict[str, str]) -> bool:
        if args not in ([], ["b"]):
            return False
        self._redirect("/fault/redirect-loop" if args else "/fault/redirect-loop/b")
        return True

    def _fault_redirect(self, args: list[str], q: dict[str, str]) -> bool:
        self._redirect(q.get("to", "/"), int(q.get("code", "302")))
        return True

    def _fault_redirect_chain(self, args: list[str], q: dict[str, str]) -> bool:
        if len(args) != 1 or not args[0].isdigit():
            return False
        hops = int(args[0])
        if hops > 0:
            self._redirect(f"/fault/redirect-chain/{hops - 1}")
        else:
            self._send(200, FAULT_IMAGE, "image/png")
        return True

    def _fault_busy(self, args: list[str], q: dict[str, str]) -> bool:
        # A host with room for ``capacity`` requests at once: beyond it, 503 at once.
        owner = self.server.owner
        if owner.in_flight(self._working_on or "") > int(q.get("capacity", "4")):
            owner._bump(("busy", "503"))
            self._send(503, b"busy\n", "text/plain")
        elif owner._stopping.wait(float(q.get("delay", "0.02"))):
            self.close_connection = True
        else:
            owner._bump(("busy", "200"))
            self._send(200, FAULT_IMAGE, "image/png")
        return True

    def _fault_noai(self, args: list[str], q: dict[str, str]) -> bool:
        self._send(200, FAULT_IMAGE, "image/png", {"X-Robots-Tag": q.get("tag", "noai")})
        return True

    def _fault_bomb(self, args: list[str], q: dict[str, str]) -> bool:
        self._send(200, png_bomb(int(q.get("side", "30000"))), "image/png")
        return True

    def _fault_429(self, args: list[str], q: dict[str, str]) -> bool:
        if self.server.owner._bump(("429", q.get("id", ""))) == 1:
            headers = {"Retry-After": q["retry_after"]} if "retry_after" in q else {}
            self._send(int(q.get("status", "429")), b"slow down\n", "text/plain", headers)
        else:
            self._send(200, FAULT_IMAGE, "image/png")
        return True

    def _large(self, size: int, declare: bool, chunked: bool) -> None:
        stopping = self.server.owner._stopping
        if declare:
            self._head(200, "image/jpeg", {"Content-Length": str(size)})
        elif chunked:
            self._head(200, "image/jpeg", {"Transfer-Encoding": "chunked"})
        else:
            # No length and no chunking: HTTP/1.1 allows ending the body by closing.
            self.close_connection = True
            self._head(200, "image/jpeg", {"Connection": "close"})
        sent = 0
        while sent < size:
            if stopping.is_set():
                self.close_connection = True
                return
            piece = _JUNK[: min(len(_JUNK), size - sent)]
            if not declare and chunked:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            else:
                self.wfile.write(piece)
            sent += len(piece)
        if not declare and chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN;
        # the socket must be closed here, because socketserver's own
        # shutdown(SHUT_WR) would send a FIN first and look like a clean end.
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # drops the makefile reference so close() is real
        self.connection.close()


# /fault/KIND[/ARG...] -> how the handler answers (query parameters tune some).
FAULT_ROUTES = {
    "404": lambda h, args, q: h._fault_status(args, q, status=404),
    "500": lambda h, args, q: h._fault_status(args, q, status=500),
    "status": _Handler._fault_status,  # /fault/status/N
    "flaky": _Handler._fault_flaky,  # /fault/flaky/N/ID: 500 for the first N requests of ID, then an image
    "slow": _Handler._fault_slow,  # ?seconds=
    "drip": _Handler._fault_drip,  # one body byte per ?interval=
    "drip-status": _Handler._fault_drip_status,  # the status line, one byte per ?interval=
    "drip-headers": _Handler._fault_drip_headers,  # status line, then a header that never ends, one byte per ?interval=
    "silent": _Handler._fault_silent,  # reads the request, never answers
    "reset": _Handler._fault_reset,
    "truncated": _Handler._fault_truncated,
    "html": _Handler._fault_html,
    "large": _Handler._fault_large,  # ?bytes=&declare=&chunked=
    "endless": _Handler._fault_endless,  # ?chunk=&interval=
    "redirect-loop": _Handler._fault_redirect_loop,
    "redirect": _Handler._fault_redirect,  # ?to=&code=
    "redirect-chain": _Handler._fault_redirect_chain,  # /fault/redirect-chain/N
    "busy": _Handler._fault_busy,  # ?capacity=&delay=: 503 while more than capacity requests are in flight
    "noai": _Handler._fault_noai,  # ?tag=
    "bomb": _Handler._fault_bomb,  # ?side=
    "429": _Handler._fault_429,  # ?id=&status=&retry_after=: the first request of ID only
}


def _host_name(host_header: str) -> str:
    """``127.0.0.1:8000`` -> ``127.0.0.1``; ``[::1]:8000`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0].lower()
    return host_header.rpartition(":")[0].lower() if ":" in host_header else host_header.lower()


class LoopbackServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (or ``::1``); see the module docstring for routes."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._hits: dict[str, int] = {}
        self._requests: list[RecordedRequest] = []
        self._counters: dict[tuple[str, str], int] = {}
        self._handlers: set[_Handler] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._connections = 0
        self._in_flight: dict[str, int] = {}
        self._max_in_flight: dict[str, int] = {}
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> "LoopbackServer":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server(self, self._address)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"loopback-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, end in-flight responses and close every connection."""
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()  # slow, drip and endless routes watch this
        httpd.shutdown()
        with self._lock:
            handlers = list(self._handlers)
            threads = list(self._handler_threads)
        for handler in handlers:
            # Wakes handlers blocked reading the next keep-alive request or
            # writing to a client that stopped reading.
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        end = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("LoopbackServer is not started; call start() or use it as a context manager")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        host = self._address[0]
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # -- content and inspection --------------------------------------------

    def add(
        self,
        path: str,
        body: bytes,
        content_type: str | None = "image/jpeg",
        headers: dict[str, str] | None = None,
        status: int = 200,
    ) -> str:
        """Serve ``body`` at ``path`` with ``status``; ``content_type=None`` sends no Content-Type. Returns the URL path."""
        if not path.startswith("/"):
            path = "/" + path
        with self._lock:
            self._routes[path] = _Route(bytes(body), content_type, dict(headers or {}), status)
        return path

    def hits(self, path: str) -> int:
        """Requests received for ``path``; with a ``?query`` only that exact target counts."""
        with self._lock:
            return self._hits.get(path, 0)

    def in_flight(self, host: str) -> int:
        """Requests for that Host name being worked on right now."""
        with self._lock:
            return self._in_flight.get(host.lower().strip("[]"), 0)

    def count(self, kind: str, key: str) -> int:
        """How often a fault route counted ``(kind, key)``: e.g. ``count("busy", "503")``."""
        with self._lock:
            return self._counters.get((kind, key), 0)

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        """Requests received (method, target, headers), oldest first; optionally for one path."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path or r.target == path]

    def max_in_flight(self, host: str | None = None) -> int:
        """Most requests in flight at once (from arrival until the response starts), for one Host name or all."""
        with self._lock:
            if host is None:
                return self._max_in_flight.get("", 0)
            return self._max_in_flight.get(host.lower().strip("[]"), 0)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (keep-alive reuse keeps this low)."""
        with self._lock:
            return self._connections

    # -- called from handler threads ------------------------------------

    def _register(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers.add(handler)
            self._handler_threads.add(threading.current_thread())
            self._connections += 1
            late = self._stopping.is_set()
        if late:
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _unregister(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers.discard(handler)
            self._handler_threads.discard(threading.current_thread())

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._hits[request.path] = self._hits.get(request.path, 0) + 1
            if request.target != request.path:
                self._hits[request.target] = self._hits.get(request.target, 0) + 1

    def _begin_work(self, host: str) -> None:
        with self._lock:
            for key in (host, ""):  # "" counts all hosts together
                self._in_flight[key] = now = self._in_flight.get(key, 0) + 1
                self._max_in_flight[key] = max(self._max_in_flight.get(key, 0), now)

    def _end_work(self, host: str) -> None:
        with self._lock:
            for key in (host, ""):
                self._in_flight[key] -= 1

    def _bump(self, key: tuple[str, str]) -> int:
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + 1
            return self._counters[key]
