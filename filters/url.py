"""URL validity: what may be fetched at all."""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

from paircurate.schemas.outcomes import Decision, Reason

ALLOWED_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 4096


def check_url(url: object) -> Decision:
    """Reject missing, malformed or non-http(s) URLs before any network work."""
    if url is None or (isinstance(url, float) and url != url):  # None or NaN from pandas-ish sources
        return Decision.reject(Reason.INVALID_URL, "missing url")
    if not isinstance(url, str):
        return Decision.reject(Reason.INVALID_URL, f"url is {type(url).__name__}, not a string: {url!r:.200}")
    text = url.strip()
    if not text:
        return Decision.reject(Reason.INVALID_URL, "empty url")
    if len(text) > MAX_URL_LENGTH:
        return Decision.reject(Reason.INVALID_URL, f"url longer than {MAX_URL_LENGTH} characters")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return Decision.reject(Reason.INVALID_URL, f"url is not valid Unicode (a lone surrogate, or bytes that are not UTF-8): {text!r:.200}")
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in text):
        return Decision.reject(Reason.INVALID_URL, f"url contains whitespace or control characters: {text!r:.200}")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a non-numeric or out-of-range port
    except ValueError as exc:  # bad port, unbalanced [ ], netloc that NFKC-normalizes into separators
        return Decision.reject(Reason.INVALID_URL, f"malformed url {text!r:.200}: {exc}")
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return Decision.reject(Reason.INVALID_URL, f"scheme {parts.scheme or '(none)'!r} is not http(s): {text!r:.200}")
    if not parts.hostname:
        return Decision.reject(Reason.INVALID_URL, f"no host in url {text!r:.200}")
    problem = _host_problem(parts.hostname)
    if problem:
        return Decision.reject(Reason.INVALID_URL, f"host {parts.hostname!r:.100} {problem}: {text!r:.200}")
    return Decision.accept()


def _host_problem(host: str) -> str:
    """Why ``host`` cannot be a DNS name (or IP literal), or ``""``."""
    if ":" in host:  # an IPv6 literal; urlsplit checked the brackets
        return ""
    try:
        # The codec DNS lookups use: it refuses empty and over-long labels and
        # names over 253 bytes (which Python's resolver would raise on later).
        encoded = host.rstrip(".").encode("idna")
    except UnicodeError as exc:
        return f"is not a valid host name ({exc})"
    if len(encoded) > 253:
        return "is longer than 253 bytes"
    return ""
