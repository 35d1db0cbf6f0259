"""URL validity: what may be fetched at all."""

from __future__ import annotations

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
    if any(c.isspace() for c in text) or any(ord(c) < 32 for c in text):
        return Decision.reject(Reason.INVALID_URL, f"url contains whitespace or control characters: {text!r:.200}")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as exc:
        return Decision.reject(Reason.INVALID_URL, f"malformed url {text!r:.200}: {exc}")
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return Decision.reject(Reason.INVALID_URL, f"scheme {parts.scheme or '(none)'!r} is not http(s): {text!r:.200}")
    if not parts.hostname:
        return Decision.reject(Reason.INVALID_URL, f"no host in url {text!r:.200}")
    del port
    return Decision.accept()
