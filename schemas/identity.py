"""Stable sample identity: the same (URL, caption) pair has the same uid everywhere.

The uid is the first 128 bits of SHA-256 over the normalized URL and the
whitespace-normalized caption, hex encoded. It depends on nothing but the pair,
so it is identical across runs, machines, runners and input splits.

    >>> make_uid("HTTP://Example.com:80/a.jpg#x", "a  cat")
    == make_uid("http://example.com/a.jpg", "a cat")
"""

from __future__ import annotations

import hashlib
import unicodedata
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    """Canonical form used for identity and exact-URL dedup.

    Scheme and host are case-insensitive and default ports and fragments never
    reach the server, so they must not make two URLs different. Path and query
    are kept verbatim: servers may treat them case-sensitively.
    """
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        # Not a URL urllib can take apart (bad port, unbalanced brackets):
        # its text is its identity. Such rows are invalid_url rejects.
        return text
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    if parts.username or parts.password:
        auth = parts.username or ""
        if parts.password:
            auth += ":" + parts.password
        host = f"{auth}@{host}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def normalize_caption_for_identity(caption: str | None) -> str:
    if not caption:
        return ""
    return " ".join(unicodedata.normalize("NFC", caption).split())


def make_uid(url: str, caption: str | None) -> str:
    payload = normalize_url(url) + "\x00" + normalize_caption_for_identity(caption)
    # surrogatepass: any Python string has a uid, even one that is not valid Unicode.
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:32]
