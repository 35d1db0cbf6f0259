"""Hostile input rows and files: every value is a row outcome or a one-line InputError, never an exception.

Property-based (hypothesis) over URL identity, the readers and the caption filters,
plus the concrete cases of issue 14 as plain tests.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import string
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paircurate.filters.caption import (
    boilerplate_kind,
    check_caption,
    check_caption_length,
    clean_caption,
)
from paircurate.filters.url import check_url
from paircurate.pipeline.read import InputError, iter_rows, plan_inputs
from paircurate.schemas.config import CaptionConfig, ConfigError, InputConfig
from paircurate.schemas.identity import make_uid, normalize_url
from paircurate.schemas.outcomes import Reason

HEX = set("0123456789abcdef")
URL_PIECES = st.sampled_from(
    ["http://", "https://", "ftp://", "[", "]", "::1", ":", ":99999", ":80", "@", "%", "#", "?", "/", ".", "..", "\ud800",
     "\x00", " ", "\t", "example.com", "a" * 70, "xn--", "ü", "\\", "//", "0"]
)
URLISH = st.one_of(st.text(max_size=300), st.lists(URL_PIECES, max_size=12).map("".join))


# --- URL identity ------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(URLISH, st.one_of(st.none(), st.text(max_size=200)))
def test_any_string_gets_a_stable_uid_or_an_invalid_url_reason(url, caption):
    uid = make_uid(url, caption)
    assert len(uid) == 32 and set(uid) <= HEX
    assert make_uid(url, caption) == uid  # stable
    decision = check_url(url)
    assert decision.keep or (decision.reason is Reason.INVALID_URL and decision.detail)
    if decision.keep:
        # What may be fetched has a normal form that is itself a fixed point.
        assert normalize_url(normalize_url(url)) == normalize_url(url)


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://example.invalid:99999/a.jpg", "Port out of range"),
        ("http://[::1/", "Invalid IPv6 URL"),
        ("http://exa mple.com/a.jpg", "whitespace or control"),
        ("http://example.com/a\x7f.jpg", "whitespace or control"),
        ("http://example.com/\ud800.jpg", "lone surrogate"),
        ("http://" + "a" * 64 + ".com/a.jpg", "not a valid host name"),
        ("http://example.com/" + "a" * 5000, "longer than 4096"),
    ],
)
def test_malformed_urls_are_invalid_url_with_the_reason(url, says):
    decision = check_url(url)
    assert decision.reason is Reason.INVALID_URL and says in decision.detail
    assert len(make_uid(url, "x")) == 32


# --- readers -----------------------------------------------------------------------------------

EXTENSIONS = ["csv", "tsv", "jsonl", "txt", "parquet", "csv.gz", "jsonl.zst", "txt.bz2", "tsv.xz", "parquet.gz"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000), ext=st.sampled_from(EXTENSIONS))
def test_random_bytes_give_rows_or_an_input_error(tmp_path, data, ext):
    path = tmp_path / f"in.{ext}"
    path.write_bytes(data)
    cfg = InputConfig(paths=(str(path),))
    try:
        files = plan_inputs(cfg)
        rows = list(iter_rows(files[0].path, files[0].format, cfg))
    except InputError as exc:
        assert str(path) in str(exc)
        return
    assert len(rows) == files[0].num_rows
    for row in rows:
        assert set(row) == {"url", "caption", "extra"}


CELL = st.one_of(st.none(), st.text(max_size=40), st.integers(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({"url": CELL, "caption": CELL, "license": CELL}), min_size=1, max_size=8), fmt=st.sampled_from(["jsonl", "csv", "parquet"]))
def test_random_rows_become_records_whose_urls_are_checked(tmp_path, rows, fmt):
    path = tmp_path / f"rows.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8", errors="surrogatepass")
    elif fmt == "csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            writer = csv.writer(fh)
            writer.writerow(["url", "caption", "license"])
            for r in rows:
                writer.writerow(["" if r[k] is None else str(r[k]).replace("\ud800", "?") for k in ("url", "caption", "license")])
    else:
        table = pa.table({k: [None if r[k] is None else str(r[k]).encode("utf-8", "replace").decode("utf-8") for r in rows] for k in ("url", "caption", "license")})
        pq.write_table(table, path)
    cfg = InputConfig(paths=(str(path),), save_cols=("license",))
    try:
        files = plan_inputs(cfg)
        records = list(iter_rows(files[0].path, files[0].format, cfg))
    except InputError:
        return
    for record in records:
        decision = check_url(record["url"])
        assert decision.keep or decision.reason is Reason.INVALID_URL
        for text in (record["caption"], record["extra"]["license"]):
            if text is not None:
                text.encode("utf-8")  # writable: no lone surrogate survives the reader (this raises on one)


def test_lone_surrogates_in_jsonl_become_replacement_or_invalid_url(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"url": "http://a.example/\\ud800.jpg", "caption": "x"}\n{"url": "http://a.example/1.jpg", "caption": "caf\\udce9 \\ud83d\\ude00"}\n')
    cfg = InputConfig(paths=(str(path),))
    rows = list(iter_rows(str(path), "jsonl", cfg))
    assert rows[1]["caption"] == "caf\ufffd \U0001F600"  # a proper pair is kept, a lone half replaced
    assert check_url(rows[0]["url"]).reason is Reason.INVALID_URL


def test_a_byte_order_mark_before_the_header_is_ignored(tmp_path):
    for name, text in (("b.csv", "url,caption\nhttp://a.example/1.jpg,one\n"), ("b.jsonl", '{"url": "http://a.example/1.jpg", "caption": "one"}\n'), ("b.txt", "http://a.example/1.jpg\n")):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        rows = list(iter_rows(str(path), name.split(".")[1], InputConfig(paths=(str(path),))))
        assert rows[0]["url"] == "http://a.example/1.jpg", name


def test_bytes_that_are_not_utf8_stay_in_their_row(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"url,caption\nhttp://a.example/1.jpg,caf\xe9 au lait\nhttp://a.example/\xff.jpg,fine\n")
    rows = list(iter_rows(str(path), "csv", InputConfig(paths=(str(path),))))
    assert rows[0]["caption"] == "caf\ufffd au lait"
    assert "not valid Unicode" in check_url(rows[1]["url"]).detail


@pytest.mark.parametrize("suffix, opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open), (".zst", zstandard.open)])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "txt", "parquet"])
def test_compressed_lists_are_read(tmp_path, fmt, suffix, opener):
    plain = tmp_path / f"plain.{fmt}"
    if fmt == "csv":
        plain.write_text("url,caption\nhttp://a.example/1.jpg,one\nhttp://a.example/2.jpg,two\n")
    elif fmt == "jsonl":
        plain.write_text('{"url": "http://a.example/1.jpg", "caption": "one"}\n{"url": "http://a.example/2.jpg", "caption": "two"}\n')
    elif fmt == "txt":
        plain.write_text("http://a.example/1.jpg\nhttp://a.example/2.jpg\n")
    else:
        pq.write_table(pa.table({"url": ["http://a.example/1.jpg", "http://a.example/2.jpg"], "caption": ["one", "two"]}), plain)
    packed = tmp_path / f"list.{fmt}{suffix}"
    with opener(packed, "wb") as fh:
        fh.write(plain.read_bytes())
    cfg = InputConfig(paths=(str(packed),))
    files = plan_inputs(cfg)
    assert files[0].format == fmt and files[0].num_rows == 2
    assert [r["url"] for r in iter_rows(str(packed), fmt, cfg)] == ["http://a.example/1.jpg", "http://a.example/2.jpg"]


def test_duplicate_columns_fail_before_the_run_naming_file_and_column(tmp_path):
    csv_path = tmp_path / "dup.csv"
    csv_path.write_text("url,caption,caption\nhttp://a.example/1.jpg,one,two\n")
    with pytest.raises(InputError, match=r"dup\.csv: column 'caption' appears more than once"):
        plan_inputs(InputConfig(paths=(str(csv_path),)))
    pq_path = tmp_path / "dup.parquet"
    table = pa.Table.from_arrays([pa.array(["http://a.example/1.jpg"]), pa.array(["a"]), pa.array(["b"])], names=["url", "url", "caption"])
    pq.write_table(table, pq_path)
    with pytest.raises(InputError, match=r"dup\.parquet: column 'url' appears more than once"):
        plan_inputs(InputConfig(paths=(str(pq_path),)))
    jsonl_path = tmp_path / "dup.jsonl"
    jsonl_path.write_text('{"url": "http://a.example/1.jpg", "url": "http://b.example/2.jpg"}\n')
    with pytest.raises(InputError, match=r"dup\.jsonl: line 1: field 'url' appears more than once"):
        plan_inputs(InputConfig(paths=(str(jsonl_path),)))


def test_a_jsonl_without_the_url_field_fails_even_after_a_blank_first_line(tmp_path):
    path = tmp_path / "nourl.jsonl"
    path.write_text('\n   \n{"link": "http://a.example/1.jpg"}\n')
    with pytest.raises(InputError, match=r"nourl\.jsonl: no url field 'url' in the first record \(line 3"):
        plan_inputs(InputConfig(paths=(str(path),)))


@pytest.mark.parametrize("name", ["uid", "url", "caption", "sha256", "key", "reason", "width"])
def test_reserved_save_cols_are_config_errors(name):
    with pytest.raises(ConfigError, match=f"input.save_cols: '{name}' is a column paircurate writes itself"):
        InputConfig(save_cols=("license", name))


def test_deeply_nested_or_huge_json_is_an_input_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"url": "http://a.example/1.jpg"}\n' + "[" * 100_000 + "\n")
    with pytest.raises(InputError, match=r"line 2 is not valid JSON"):
        plan_inputs(InputConfig(paths=(str(path),)))


# --- captions ----------------------------------------------------------------------------------

BOILERPLATE_CFG = CaptionConfig(reject_boilerplate=True, max_caption_chars=200_000)
CAPTION_PIECES = st.sampled_from(["screenshot", "screen shot", "img", "IMG_", "dsc", "p", "-", "_", " ", ".", "1", "a", "t", "(", ")", ":", ".jpg", ".png", "x y", "&amp;", "\u00e2\u20ac\u2122"])
HOSTILE_CAPTIONS = st.one_of(
    st.text(max_size=2000),
    st.lists(CAPTION_PIECES, max_size=300).map("".join),
    # long runs of one piece after a keyword: the shape that made a backtracking regex quadratic
    st.tuples(CAPTION_PIECES, CAPTION_PIECES, st.integers(0, 100_000), CAPTION_PIECES).map(lambda t: t[0] + t[1] * (t[2] // max(len(t[1]), 1)) + t[3]),
)
CAPTION_TIME_BOUND = 5.0  # seconds for any caption up to 100 KB; linear code needs milliseconds


@settings(max_examples=150, deadline=None)
@given(HOSTILE_CAPTIONS)
def test_caption_filters_take_bounded_time_on_any_string(caption):
    started = time.perf_counter()
    cleaned = clean_caption(caption)
    check_caption(cleaned, BOILERPLATE_CFG)
    boilerplate_kind(caption)
    assert time.perf_counter() - started < CAPTION_TIME_BOUND


@pytest.mark.parametrize("run", ["-", " ", "_", "1", ".", "a"])
def test_boilerplate_regexes_are_linear_on_the_quadratic_case(run):
    started = time.perf_counter()
    assert boilerplate_kind("screenshot " + run * 100_000 + "x y") is None
    assert time.perf_counter() - started < CAPTION_TIME_BOUND  # the quadratic regex took 2.4 s for 16,000 dashes


def test_boilerplate_still_recognises_screenshots_and_camera_names():
    assert boilerplate_kind("Screenshot 2021-03-04 at 10.22.31 AM.png") == "camera_file_name"
    assert boilerplate_kind("screen shot 2012-01-01 at 1.2.3 pm") == "camera_file_name"
    assert boilerplate_kind("screenshot of a cat on a sofa") is None


def test_caption_too_long_is_checked_on_the_raw_caption():
    cfg = CaptionConfig(max_caption_chars=10)
    decision = check_caption_length("x" * 11, cfg)
    assert decision.reason is Reason.CAPTION_TOO_LONG and decision.detail == "11 chars > 10"
    assert check_caption_length("x" * 10, cfg).keep and check_caption_length(None, cfg).keep
    assert set(string.ascii_letters) and CaptionConfig().max_caption_chars == 4000
