import pytest
from paircurate.filters.url import check_url
from paircurate.schemas.identity import make_uid, normalize_url
from paircurate.schemas.outcomes import Reason


def test_uid_is_stable_128_bit_hex():
    uid = make_uid("http://example.com/a.jpg", "a cat")
    assert len(uid) == 32 and int(uid, 16) >= 0
    # Pinned value: a change here changes every key of every released dataset.
    assert uid == "5174538c36a1436a8b85af45900748d8"


def test_uid_ignores_case_of_host_default_port_fragment_and_spacing():
    a = make_uid("HTTP://Example.COM:80/a.jpg#frag", "a  cat ")
    b = make_uid("http://example.com/a.jpg", "a cat")
    assert a == b


def test_uid_distinguishes_path_case_query_and_caption():
    base = make_uid("http://example.com/a.jpg", "a cat")
    assert make_uid("http://example.com/A.jpg", "a cat") != base
    assert make_uid("http://example.com/a.jpg?x=1", "a cat") != base
    assert make_uid("http://example.com/a.jpg", "a dog") != base


def test_normalize_url_keeps_non_default_port_and_query():
    assert normalize_url("https://Host:8443/p?q=1#f") == "https://host:8443/p?q=1"
    assert normalize_url("http://host") == "http://host/"


@pytest.mark.parametrize(
    "url, fragment",
    [
        (None, "missing"),
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://x.org/a.jpg", "'ftp'"),
        ("file:///etc/passwd", "'file'"),
        ("javascript:alert(1)", "'javascript'"),
        ("no scheme", "whitespace"),
        ("http://", "no host"),
        ("http://host:99999/a.jpg", "malformed"),
        (42, "int"),
    ],
)
def test_check_url_rejects_with_invalid_url_and_says_why(url, fragment):
    decision = check_url(url)
    assert not decision.keep
    assert decision.reason is Reason.INVALID_URL
    assert fragment in decision.detail


def test_check_url_accepts_http_and_https():
    assert check_url("http://127.0.0.1:8000/a.jpg").keep
    assert check_url("https://example.com/img?id=3").keep
