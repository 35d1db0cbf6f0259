"""A real HTTP server on 127.0.0.1 that answers like the Hugging Face Hub for one model repository.

    >>> with FakeHub("paircurate/tiny-hub", tiny_model_repo_files()) as hub:
    ...     env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
    ...     # paircurate run ... --clip-pretrained hf-hub:paircurate/tiny-hub   (subprocess with env)
    ...     hub.requests()        # [("HEAD", "/paircurate/tiny-hub/resolve/main/open_clip_config.json"), ...]

It speaks the part of the Hub protocol that ``huggingface_hub.hf_hub_download``
uses: ``HEAD`` then ``GET`` on ``/{repo}/resolve/{revision}/{filename}``, with
``X-Repo-Commit`` and ``ETag`` on every answer, and for large (LFS) files
``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``, as the Hub sends them.
Misses carry the Hub's ``X-Error-Code`` (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``) so the client raises the same errors
it raises against huggingface.co. Any other path is looked up in ``static``
(plain files, e.g. published model heads served at their GitHub-like paths).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub", "tiny_model_repo_files"]

# Files at least this big are answered as the Hub answers LFS files.
_LFS_THRESHOLD = 10 * 1024


def tiny_model_repo_files() -> dict[str, bytes]:
    """The bundled ``paircurate-tiny`` model in open_clip's hub layout.

    ``open_clip_config.json`` (model and preprocessing config) plus
    ``open_clip_model.safetensors``, the same weights as the bundled
    checkpoint, so scores through ``hf-hub:`` equal the bundled model's.
    """
    from paircurate.embeddings.clip import TINY_CHECKPOINT_PATH, TINY_CONFIG_PATH

    config = {
        "model_cfg": json.loads(TINY_CONFIG_PATH.read_text()),
        # open_clip's defaults for a model config without its own preprocessing.
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    return {
        "open_clip_config.json": json.dumps(config, indent=2).encode(),
        "open_clip_model.safetensors": TINY_CHECKPOINT_PATH.read_bytes(),
    }


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._answer(send_body=False)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        hub = self.server.hub
        path = unquote(urlsplit(self.path).path)
        hub._record(self.command, path, self.headers.get("Authorization"))
        if path in hub.static:
            self._send(200, hub.static[path], {"Content-Type": "application/octet-stream"}, send_body)
            return
        prefix = f"/{hub.repo_id}/resolve/"
        if not path.startswith(prefix):
            # The Hub answers 401 for missing and private repositories alike.
            self._send(401, b"Repository not found", {"X-Error-Code": "RepoNotFound"}, send_body)
            return
        revision, _, filename = path[len(prefix):].partition("/")
        if revision not in ("main", hub.commit):
            self._send(404, b"Revision not found", {"X-Error-Code": "RevisionNotFound"}, send_body)
            return
        commit = {"X-Repo-Commit": hub.commit}
        if filename not in hub.files:
            self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound", **commit}, send_body)
            return
        body = hub.files[filename]
        headers = {"Content-Type": "application/octet-stream", **commit}
        if len(body) >= _LFS_THRESHOLD:
            sha256 = hashlib.sha256(body).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(body))})
        else:
            # Regular git files: the ETag is the git blob id.
            blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
            headers["ETag"] = f'"{blob}"'
        self._send(200, body, headers, send_body)

    def _send(self, status: int, body: bytes, headers: dict[str, str], send_body: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: "FakeHub", address: tuple[str, int]) -> None:
        self.hub = hub
        super().__init__(address, _Handler)


class FakeHub:
    """One Hub model repository (``repo_id`` -> ``files``) and optional static files, on loopback."""

    def __init__(self, repo_id: str, files: dict[str, bytes], static: dict[str, bytes] | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.repo_id = repo_id
        self.files = dict(files)
        self.static = dict(static or {})
        # The commit id names the snapshot folder in the client's cache; derive it from the content.
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + self.files[name])
        self.commit = digest.hexdigest()
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str, str | None]] = []

    def start(self) -> "FakeHub":
        self._server = _Server(self, self._address)
        self._address = self._server.server_address[:2]  # keep the port: a restart serves the same endpoint
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hf-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """What ``HF_ENDPOINT`` should be set to."""
        host, port = self._address
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.endpoint + path

    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request seen, in order."""
        with self._lock:
            return [(m, p) for m, p, _ in self._requests]

    def authorizations(self) -> list[str | None]:
        """The ``Authorization`` header of every request for the repository's files (``HF_TOKEN`` arrives as ``Bearer <token>``)."""
        with self._lock:
            return [a for _, p, a in self._requests if p.startswith(f"/{self.repo_id}/")]

    def _record(self, method: str, path: str, authorization: str | None) -> None:
        with self._lock:
            self._requests.append((method, path, authorization))
