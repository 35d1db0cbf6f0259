"""The files every run ends with: shardindex.json (read by wids), datasheet.md, and the per-host section of stats.json."""

from __future__ import annotations

import csv
import hashlib
import json
from urllib.parse import urlsplit

import pyarrow as pa
import pytest
import wids
from helpers import encode, photo
from hypothesis import given, settings
from hypothesis import strategies as st
from paircurate.filters.blocklist import BlocklistMatch
from paircurate.pipeline.ledger import diagnose, failure_class, hosts_of

from paircurate.cli import main


@pytest.fixture
def two_host_run(loopback_server, tmp_path):
    """16 photos on 127.0.0.1 (one 404), 12 URLs on localhost that answer 403: one host holds the failures."""
    s = loopback_server
    rows = []
    for i in range(16):
        path = "/fault/404" if i == 7 else s.add(f"/img/{i}.jpg", encode(photo(300 + i)))
        rows.append((s.url(path), f"a photo of the day number {i}"))
    for i in range(12):
        rows.append((f"http://localhost:{s.port}/fault/status/403?i={i}", f"a forbidden photo number {i}"))
    inputs = tmp_path / "in.csv"
    with open(inputs, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption"])
        writer.writerows(rows)
    out = tmp_path / "out"
    assert main(["run", str(inputs), "-o", str(out), "--image-size", "64", "--shard-size", "10", "--no-progress", "--allow-private-network", "--retries", "0"]) == 0
    with open(out / "stats.json") as fh:
        stats = json.load(fh)
    return {"out": out, "inputs": inputs, "stats": stats}


def test_shard_index_is_read_by_wids(two_host_run):
    out = two_host_run["out"]
    with open(out / "shardindex.json") as fh:
        index = json.load(fh)
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert [s["url"] for s in index["shardlist"]] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [s["nsamples"] for s in index["shardlist"]] == [9, 6, 0]
    assert [s["filesize"] for s in index["shardlist"]] == [(out / s["url"]).stat().st_size for s in index["shardlist"]]

    dataset = wids.ShardListDataset(str(out / "shardindex.json"), localname=lambda url: url)
    assert len(dataset) == 15 == two_host_run["stats"]["funnel"]["kept"]
    captions = set()
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample[".jpg"].size == (64, 64)  # decoded by wids into a PIL image
        captions.add(sample[".txt"])
    assert captions == {f"a photo of the day number {i}" for i in range(16) if i != 7}


def test_per_host_section_finds_the_host_that_fails(two_host_run):
    hosts = two_host_run["stats"]["hosts"]
    assert hosts["hosts"] == 2 and hosts["attempts"] == 28 and hosts["failed"] == 13
    assert hosts["failures_by_class"] == {"http_403": 12, "http_404": 1}
    worst = hosts["top_by_failures"][0]
    assert worst == {"host": "localhost", "attempts": 12, "kept": 0, "failed": 12, "filtered": 0, "failures": {"http_403": 12}}
    assert hosts["top_by_volume"][0] == {"host": "127.0.0.1", "attempts": 16, "kept": 15, "failed": 1, "filtered": 0, "failures": {"http_404": 1}}
    assert hosts["diagnosis"] == [
        "One host holds most failures: localhost (12 of 13, 92 %), mostly http_403.",
        "Most failures are HTTP 403 Forbidden answers from 1 host (localhost): 12 of 13 (92 %); "
        "the hosts refuse crawlers (or hotlinking); a retry will not help.",
    ]
    report = (two_host_run["out"] / "report.html").read_text()
    assert 'class="num host-failed" data-host="localhost">12<' in report
    assert "One host holds most failures: localhost" in report


def test_datasheet_fills_what_the_run_knows_and_asks_the_rest(two_host_run):
    sheet = (two_host_run["out"] / "datasheet.md").read_text()
    for section in ("## Motivation", "## Composition", "## Collection process", "## Preprocessing, cleaning, labeling", "## Uses", "## Distribution", "## Maintenance"):
        assert section in sheet
    digest = hashlib.sha256(two_host_run["inputs"].read_bytes()).hexdigest()
    assert f"`{two_host_run['inputs']}` (csv, 28 rows, SHA-256 `{digest}`)" in sheet
    assert "15 kept of 28 input rows (13 rejected" in sheet
    assert "Original image size (width): min 320, p10 320, p50 320, p90 320, max 320 px" in sheet
    assert "(words): min 7, p10 7, p50 7, p90 7, max 7" in sheet
    assert "Caption languages (py3langid, first 15 captions): en" in sheet
    assert "| download | 28 | 13 | 15 | http_404 1, http_4xx 12 |" in sheet
    assert "0 rows opted out" in sheet and "User-Agent `paircurate/" in sheet
    assert sheet.count("**PUBLISHER:**") >= 10  # the questions only the publisher can answer


@pytest.mark.parametrize(
    "stage, reason, detail, want",
    [
        ("download", "connection_error", "NameResolutionError: Failed to resolve 'x.invalid'", "dns"),
        ("download", "connection_error", "NewConnectionError: [Errno 111] Connection refused", "connect"),
        ("download", "connection_error", "SSLError: [SSL: CERTIFICATE_VERIFY_FAILED]", "tls"),
        ("download", "http_4xx", "HTTP 403 Forbidden", "http_403"),
        ("download", "http_4xx", "HTTP 410 Gone", "http_4xx"),
        ("download", "opted_out", "X-Robots-Tag 'noai'", "opt_out"),
        ("image", "decode_error", "UnidentifiedImageError", "decode"),
        ("image", "image_too_small", "20x20", "filters"),
        ("dedup", "duplicate_phash", "", "filters"),
        ("caption", "caption_too_short", "", None),
        ("read", "invalid_url", "", None),
    ],
)
def test_failure_classes(stage, reason, detail, want):
    assert failure_class(stage, reason, detail) == want


def test_no_diagnosis_without_a_plain_pattern():
    spread = {"failed": 40, "failures_by_class": {"timeout": 10, "http_404": 10, "dns": 10, "http_5xx": 10},
              "top_by_failures": [{"host": f"h{i}", "failed": 4, "failures": {"timeout": 1, "http_404": 1, "dns": 1, "http_5xx": 1}} for i in range(10)]}
    assert diagnose(spread) == []
    assert diagnose({"failed": 5, "failures_by_class": {"dns": 5}, "top_by_failures": [{"host": "a", "failed": 5, "failures": {"dns": 5}}]}) == []


@settings(max_examples=200, deadline=None)
@given(
    host=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10), min_size=1, max_size=4).map(".".join),
    scheme=st.sampled_from(["http", "https", "HTTP"]),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    userinfo=st.sampled_from(["", "user@", "user:pw@"]),
    rest=st.text(alphabet="abc/?#=&:@._-%", max_size=30),
)
def test_hosts_of_agrees_with_urlsplit(host, scheme, port, userinfo, rest):
    url = f"{scheme}://{userinfo}{host.upper()}{'' if port is None else f':{port}'}/{rest}"
    assert hosts_of(pa.array([url])).to_pylist() == [urlsplit(url).hostname]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=60)), max_size=20))
def test_hosts_of_takes_any_text(values):
    hosts = hosts_of(pa.array(values, pa.string())).to_pylist()
    assert len(hosts) == len(values)
    assert all(h is None or (isinstance(h, str) and h == h.lower()) for h in hosts)


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=80), kind=st.sampled_from(["url", "prefix", "domain", "sha256", "md5", "phash"]))
def test_blocklist_detail_reads_back(name, kind):
    assert BlocklistMatch.from_detail(BlocklistMatch(name, kind).detail()) == BlocklistMatch(name, kind)
