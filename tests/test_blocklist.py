"""Blocklists: parsing hostile files, matching, and a run that removes listed URLs before any request and listed images after."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import encode, ledger, photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paircurate.dedup.perceptual import phash
from paircurate.filters.blocklist import (
    BlocklistError,
    BlocklistMatch,
    load_blocklists,
    parse_line,
)
from paircurate.imaging.prepare import prepare_image
from paircurate.schemas.config import ImageConfig
from PIL import Image

from paircurate.cli import main

IMAGE_SIZE = 64


# --- parsing ---------------------------------------------------------------------------------------


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_text_list_entries_match_what_they_name(tmp_path):
    path = write(
        tmp_path,
        "takedown.txt",
        "# takedown requests, 2026-11\n\n"
        "url:HTTP://Images.Example.com:80/a/1.jpg#frag\n"
        "prefix:https://cdn.example.org/private/   # a whole folder\n"
        "domain:Example.NET.\n"
        "sha256:" + "AB" * 32 + "\n"
        "md5:" + "cd" * 16 + "\n"
        "phash:c3c3e1e1f0f0383c 6\n"
        "phash:0000000000000000\n",
    )
    lists = load_blocklists([path])
    assert lists.entry_counts[path] == {"url": 1, "prefix": 1, "domain": 1, "sha256": 1, "md5": 1, "phash": 2}
    hit = lambda kind: BlocklistMatch(path, kind)  # noqa: E731
    assert lists.match_url("http://images.example.com/a/1.jpg") == hit("url")
    assert lists.match_url("http://images.example.com/a/2.jpg") is None
    assert lists.match_url("https://cdn.example.org/private/x/y.png") == hit("prefix")
    assert lists.match_url("https://cdn.example.org/public/y.png") is None
    assert lists.match_url("http://static.eu.example.net/z.jpg") == hit("domain")
    assert lists.match_url("http://example.net/z.jpg") == hit("domain")
    assert lists.match_url("http://notexample.net/z.jpg") is None
    assert lists.match_digests("ab" * 32, None) == hit("sha256")
    assert lists.match_digests(None, "cd" * 16) == hit("md5")
    assert lists.match_digests("00" * 32, "00" * 16) is None
    assert lists.match_bytes(b"") is None
    # Distance 6 for the first entry, the default 4 for the second.
    assert lists.match_phash("c3c3e1e1f0f0383f") == hit("phash")  # 2 bits away
    assert lists.match_phash("000000000000001f") is None  # 5 bits from 0
    assert lists.match_phash("000000000000000f") == hit("phash")  # 4 bits from 0


def test_first_list_given_is_named_and_parquet_lists_work(tmp_path):
    text = write(tmp_path, "a.txt", "url:http://x.example.com/1.jpg\n")
    table = pa.table({"url": ["http://x.example.com/1.jpg", None], "phash": [None, "ffffffffffffffff"], "distance": [None, 1]})
    parquet = str(tmp_path / "b.parquet")
    pq.write_table(table, parquet)
    lists = load_blocklists([text, parquet])
    assert lists.match_url("http://x.example.com/1.jpg") == BlocklistMatch(text, "url")  # listed in both: the first given
    assert lists.match_phash("fffffffffffffffe") == BlocklistMatch(parquet, "phash")
    assert lists.match_phash("fffffffffffffffc") is None  # 2 bits > distance 1
    assert BlocklistMatch.from_detail(BlocklistMatch("odd: name.txt", "md5").detail()) == BlocklistMatch("odd: name.txt", "md5")


@pytest.mark.parametrize(
    "line, message",
    [
        ("sha1:abc", "expected KIND:VALUE"),
        ("sha256:xyz", "sha256 must be 64 hex digits"),
        ("md5:" + "a" * 31, "md5 must be 32 hex digits"),
        ("phash:c3c3e1e1f0f0383c 99", "phash distance must be in 0..63"),
        ("phash:c3c3e1e1f0f0383c near", "whole number of bits"),
        ("url:ftp://example.com/x", "needs an http(s) scheme and a host"),
        ("domain:https://example.com/x", "not a host name"),
        ("url:http://example.com/x extra", "unexpected text after the url value"),
        ("just some words", "expected KIND:VALUE"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "bad.txt", "url:http://ok.example.com/1.jpg\n# fine so far\n" + line + "\n")
    with pytest.raises(BlocklistError) as err:
        load_blocklists([path])
    assert str(err.value).startswith(f"blocklist {path} line 3: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unusable_files_are_user_errors(tmp_path):
    with pytest.raises(BlocklistError, match="no such file"):
        load_blocklists([str(tmp_path / "missing.txt")])
    binary = tmp_path / "hashes.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BlocklistError, match="not UTF-8 text"):
        load_blocklists([str(binary)])
    parquet = str(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"link": ["http://a.example.com/"]}), parquet)
    with pytest.raises(BlocklistError, match="has none of the columns"):
        load_blocklists([parquet])
    pq.write_table(pa.table({"sha256": ["nothex"]}), parquet)
    with pytest.raises(BlocklistError, match=r"row 0 column 'sha256'"):
        load_blocklists([parquet])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_line_parses_or_is_refused_plainly(line):
    try:
        parse_line(line)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)


hex_of = lambda n: st.text(alphabet="0123456789abcdefABCDEF", min_size=n, max_size=n)  # noqa: E731
labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(
    sha=hex_of(64), md5=hex_of(32), ph=hex_of(16), distance=st.integers(0, 63),
    domain=st.lists(labels, min_size=1, max_size=4).map(".".join), sub=st.lists(labels, max_size=3),
    path=st.text(alphabet="abc/._-~%0123456789", max_size=40),
)
def test_written_entries_read_back_and_match(tmp_path_factory, sha, md5, ph, distance, domain, sub, path):
    url = f"https://{domain}/{path}"
    listed = tmp_path_factory.mktemp("lists") / "l.txt"
    listed.write_text(f"sha256:{sha}\nmd5:{md5}\nphash:{ph} {distance}\ndomain:{domain}\nurl:{url}\n")
    lists = load_blocklists([str(listed)])
    name = str(listed)
    assert lists.match_digests(sha.lower(), None) == BlocklistMatch(name, "sha256")
    assert lists.match_digests(None, md5.lower()) == BlocklistMatch(name, "md5")
    assert lists.match_phash(ph.lower()) == BlocklistMatch(name, "phash")
    assert lists.match_url(url) == BlocklistMatch(name, "url")
    under = ".".join([*sub, domain])
    assert lists.match_url(f"http://{under}/other.jpg") == BlocklistMatch(name, "domain")
    assert lists.match_url(f"http://x{domain}.invalid/other.jpg") is None


# --- a run -----------------------------------------------------------------------------------------


def stored_phash(data: bytes) -> str:
    prepared = prepare_image(data, ImageConfig(image_size=IMAGE_SIZE))
    with Image.open(io.BytesIO(prepared.data)) as img:
        return phash(img.convert("RGB"))


def flip_bits(hex_hash: str, bits: int) -> str:
    return format(int(hex_hash, 16) ^ ((1 << bits) - 1), "016x")


@pytest.fixture
def listed_run(loopback_server, tmp_path):
    """12 rows: 6 kept, and one for each kind of blocklist entry."""
    s = loopback_server
    images = {i: encode(photo(100 + i)) for i in range(12)}
    rows = []
    for i in range(12):
        path = s.add(f"/{'private/' if i == 2 else ''}img/{i}.jpg", images[i])
        url = f"http://localhost:{s.port}{path}" if i == 3 else s.url(path)
        rows.append((url, f"a listed photo number {i}"))
    urls_list = write(tmp_path, "urls.txt", f"url:{rows[1][0]}\nprefix:{s.url('/private/')}\ndomain:localhost\n")
    hashes_list = write(
        tmp_path,
        "hashes.txt",
        f"sha256:{hashlib.sha256(images[4]).hexdigest()}\n"
        f"md5:{hashlib.md5(images[5]).hexdigest()}\n"
        f"phash:{flip_bits(stored_phash(images[6]), 2)} 3\n",
    )
    inputs = tmp_path / "in.csv"
    with open(inputs, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption", "page"])
        writer.writerows([(u, c, f"page-{i}") for i, (u, c) in enumerate(rows)])
    expected = {i: "kept" for i in range(12)}
    expected.update({1: "download", 2: "download", 3: "download", 4: "image", 5: "image", 6: "image"})
    return {"server": s, "images": images, "rows": rows, "inputs": str(inputs), "lists": [urls_list, hashes_list], "expected": expected}


def run_cli(inputs: str, out, *extra) -> int:
    return main([
        "run", inputs, "-o", str(out), "--image-size", str(IMAGE_SIZE), "--shard-size", "5", "--no-progress",
        "--allow-private-network", "--save-cols", "page", *extra,
    ])


def test_listed_urls_are_never_requested_and_listed_images_never_stored(listed_run, tmp_path):
    s = listed_run["server"]
    out = tmp_path / "out"
    urls_list, hashes_list = listed_run["lists"]
    assert run_cli(listed_run["inputs"], out, "--blocklist", urls_list, hashes_list) == 0

    rows = ledger(out)
    assert sorted(rows) == list(range(12))
    for i, want in listed_run["expected"].items():
        r = rows[i]
        if want == "kept":
            assert "reason" not in r, (i, r)
            continue
        assert (r["stage"], r["reason"]) == (want, "blocklisted"), (i, r)
        # The ledger keeps the row's place but not what it pointed at.
        assert r["url"] is None and r["caption"] is None and r["page"] is None
        assert r["uid"] and r["source_file"] == listed_run["inputs"]
    assert rows[1]["detail"] == f"blocklist {urls_list}: url entry"
    assert rows[2]["detail"] == f"blocklist {urls_list}: prefix entry"
    assert rows[3]["detail"] == f"blocklist {urls_list}: domain entry"
    assert [rows[i]["detail"] for i in (4, 5, 6)] == [f"blocklist {hashes_list}: {k} entry" for k in ("sha256", "md5", "phash")]

    # URL entries: nothing was fetched; hash entries: fetched, then dropped.
    assert s.hits("/img/1.jpg") == 0 and s.hits("/private/img/2.jpg") == 0 and s.hits("/img/3.jpg") == 0
    assert not [r for r in s.requests() if r.headers.get("Host", "").startswith("localhost")]
    assert s.hits("/img/4.jpg") == s.hits("/img/5.jpg") == s.hits("/img/6.jpg") == 1
    kept_md5 = {r["md5"] for r in rows.values() if "reason" not in r}
    assert hashlib.md5(listed_run["images"][0]).hexdigest() in kept_md5  # of the bytes as served

    with open(out / "stats.json") as fh:
        stats = json.load(fh)
    assert stats["funnel"]["reasons"]["blocklisted"] == 6
    assert stats["blocklists"][urls_list] == {"rows": 3, "by_kind": {"domain": 1, "prefix": 1, "url": 1}, "entries": {"url": 1, "prefix": 1, "domain": 1, "sha256": 0, "md5": 0, "phash": 0}}
    assert stats["blocklists"][hashes_list]["rows"] == 3
    assert "localhost" not in {h["host"] for h in stats["hosts"]["top_by_volume"]}

    # Counts per list only: no URL, path or caption of a listed row anywhere in the report or datasheet.
    report = (out / "report.html").read_text()
    datasheet = (out / "datasheet.md").read_text()
    for text in (report, datasheet):
        for i in (1, 2, 3, 4, 5, 6):
            assert f"/img/{i}.jpg" not in text and f"photo number {i}<" not in text and f"page-{i}" not in text
    assert "a listed photo number 0" in report  # kept samples still show
    assert f"`{urls_list}`: 3 rows" in datasheet


def test_a_bad_list_stops_the_run_before_anything_is_fetched(listed_run, tmp_path, capsys):
    bad = write(tmp_path, "bad.txt", "domain:example.com\nsha256:1234\n")
    out = tmp_path / "out"
    assert run_cli(listed_run["inputs"], out, "--blocklist", bad) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"paircurate: error: blocklist {bad} line 2: sha256 must be 64 hex digits, got '1234'"
    assert listed_run["server"].requests() == []
    assert not out.exists()


# --- paircurate remove -----------------------------------------------------------------------------


def file_digests(folder) -> dict[str, str]:
    out = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def tar_members(path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_remove_writes_a_new_version_without_the_listed_samples(listed_run, tmp_path, capsys):
    import webdataset as wds

    out, out2 = tmp_path / "out", tmp_path / "out-v2"
    # No pHash column in this run: remove computes it from the stored images.
    assert run_cli(listed_run["inputs"], out, "--no-dedup-perceptual") == 0
    before = file_digests(out)
    requests_before = len(listed_run["server"].requests())
    assert main(["remove", str(out), "--blocklist", *listed_run["lists"], "-o", str(out2)]) == 0
    urls_list, hashes_list = listed_run["lists"]
    assert capsys.readouterr().out.strip().endswith(f"6 samples removed ({urls_list}: 3, {hashes_list}: 3); new version in {out2}")
    assert file_digests(out) == before  # the old version is untouched
    assert len(listed_run["server"].requests()) == requests_before  # nothing fetched

    # The same ledger a run with the lists would have written.
    rows = ledger(out2)
    assert sorted(rows) == list(range(12))
    for i, want in listed_run["expected"].items():
        if want == "kept":
            assert "reason" not in rows[i]
        else:
            assert (rows[i]["stage"], rows[i]["reason"], rows[i]["url"], rows[i]["caption"], rows[i]["page"]) == (want, "blocklisted", None, None, None)
    assert [rows[i]["detail"] for i in (1, 4, 6)] == [f"blocklist {urls_list}: url entry", f"blocklist {hashes_list}: sha256 entry", f"blocklist {hashes_list}: phash entry"]

    after = file_digests(out2)
    # Shard 2 (rows 10, 11) held no match: byte-identical, like the run's plan.
    for name in ("00002.tar", "00002.parquet", "00002_stats.json", "rejected/00002.parquet", "_plan.json"):
        assert after[name] == before[name], name
    for name in ("00000.tar", "00000.parquet", "00001.tar", "rejected/00001.parquet", "stats.json", "datasheet.md", "shardindex.json"):
        assert after[name] != before[name], name
    # Rewritten tars: the kept samples' members byte for byte, and readable by webdataset.
    for shard in ("00000", "00001"):
        old, new = tar_members(out / f"{shard}.tar"), tar_members(out2 / f"{shard}.tar")
        assert set(new) < set(old) and all(new[k] == old[k] for k in new)
        keys = [s["__key__"] for s in wds.WebDataset(str(out2 / f"{shard}.tar"), shardshuffle=False, empty_check=False)]
        assert keys == pq.read_table(out2 / f"{shard}.parquet").column("uid").to_pylist()
        with open(out2 / f"{shard}_stats.json") as fh:
            shard_stats = json.load(fh)
        assert shard_stats["tar_bytes"] == os.path.getsize(out2 / f"{shard}.tar")
        assert shard_stats["kept"] == len(keys) and shard_stats["input_rows"] == 5

    with open(out2 / "stats.json") as fh:
        stats = json.load(fh)
    assert stats["funnel"]["kept"] == 6 and stats["funnel"]["reasons"]["blocklisted"] == 6 and stats["funnel"]["input_rows"] == 12
    assert stats["removals"][0]["by_list"] == {urls_list: 3, hashes_list: 3} and stats["removals"][0]["rows"] == 6
    assert stats["blocklists"][hashes_list]["by_kind"] == {"md5": 1, "phash": 1, "sha256": 1}
    with open(out2 / "shardindex.json") as fh:
        assert [s["nsamples"] for s in json.load(fh)["shardlist"]] == [1, 3, 2]
    report = (out2 / "report.html").read_text()
    for i in (1, 2, 3, 4, 5, 6):
        assert f"/img/{i}.jpg" not in report and f"page-{i}" not in report


def test_remove_refuses_what_it_cannot_do(listed_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(listed_run["inputs"], out) == 0
    assert main(["remove", str(out), "--blocklist", listed_run["lists"][0], "-o", str(out)]) == 2
    assert "must name a new folder" in capsys.readouterr().err
    assert main(["remove", str(tmp_path), "--blocklist", listed_run["lists"][0], "-o", str(tmp_path / "v2")]) == 2
    assert "holds no finished paircurate run" in capsys.readouterr().err
    bad = write(tmp_path, "bad.txt", "md5:xyz\n")
    assert main(["remove", str(out), "--blocklist", bad, "-o", str(tmp_path / "v2")]) == 2
    assert capsys.readouterr().err.strip() == f"paircurate: error: blocklist {bad} line 1: md5 must be 32 hex digits, got 'xyz'"
    assert not (tmp_path / "v2").exists()


def test_remove_keeps_clip_embeddings_aligned_with_the_samples(listed_run, tmp_path):
    import numpy as np
    from paircurate.embeddings.clip import TINY_MODEL

    out, out2 = tmp_path / "out", tmp_path / "out-v2"
    clip = ["--clip-model", TINY_MODEL, "--clip-pretrained", TINY_MODEL, "--device", "cpu", "--clip-threshold", "-1", "--no-dedup-semantic"]
    assert run_cli(listed_run["inputs"], out, *clip) == 0
    assert main(["remove", str(out), "--blocklist", listed_run["lists"][1], "-o", str(out2)]) == 0  # rows 4, 5, 6
    for shard in ("00000", "00001"):
        old_uids = pq.read_table(out / f"{shard}.parquet").column("uid").to_pylist()
        new_uids = pq.read_table(out2 / f"{shard}.parquet").column("uid").to_pylist()
        assert len(new_uids) < len(old_uids)
        for suffix in ("img", "txt"):
            old, new = np.load(out / f"{shard}.{suffix}.npy"), np.load(out2 / f"{shard}.{suffix}.npy")
            assert new.shape == (len(new_uids), old.shape[1])
            assert np.array_equal(new, old[[old_uids.index(u) for u in new_uids]])
    assert file_digests(out)["00002.img.npy"] == file_digests(out2)["00002.img.npy"]
    # The datasheet names the weights by checksum.
    from paircurate.embeddings.clip import TINY_CHECKPOINT_PATH

    weights = hashlib.sha256(TINY_CHECKPOINT_PATH.read_bytes()).hexdigest()
    assert f"CLIP: open_clip {TINY_MODEL} / {TINY_MODEL}, threshold -1.0, weights SHA-256 {weights}." in (out2 / "datasheet.md").read_text()
