"""The whole pipeline over real loopback HTTP, driven through the CLI, read back with webdataset and pyarrow."""

from __future__ import annotations

import glob
import io
import json
import logging
import os

import pyarrow.parquet as pq
import pytest
from helpers import blocky_jpeg, read_output
from paircurate.crawl.workers import default_processes
from paircurate.schemas import records as R
from PIL import Image

from paircurate.cli import main

IMAGE_SIZE = 64
NUM_GOOD = 24


@pytest.fixture
def served_inputs(loopback_server, tmp_path):
    """Two input files (CSV + JSONL) whose rows each have one expected outcome."""
    s = loopback_server
    expected: dict[tuple[str, int], str] = {}  # (file, row) -> "kept" or reason
    csv_rows, jsonl_rows = [], []
    for i in range(NUM_GOOD):
        path = s.add(f"/img/{i}.jpg", blocky_jpeg(80 + 7 * i, 120, seed=i))
        row = {"url": s.url(path), "caption": f"a picture of thing number {i}", "license": f"cc-{i}"}
        (csv_rows if i % 2 == 0 else jsonl_rows).append((row, "kept"))
    s.add("/bad.jpg", b"\xff\xd8\xff garbage, not a jpeg" * 10)
    s.add("/small.jpg", blocky_jpeg(20, 20, seed=999))
    faults = [
        ({"url": s.url("/fault/404"), "caption": "a picture that is gone"}, "http_404"),
        ({"url": s.url("/fault/500"), "caption": "broken server"}, "http_5xx"),
        ({"url": s.url("/fault/slow?seconds=5"), "caption": "very slow"}, "timeout"),
        ({"url": s.url("/fault/html"), "caption": "a web page"}, "not_an_image"),
        ({"url": s.url("/fault/large?bytes=300000&declare=0"), "caption": "huge file"}, "too_large"),
        ({"url": s.url("/bad.jpg"), "caption": "corrupt bytes"}, "decode_error"),
        ({"url": s.url("/small.jpg"), "caption": "tiny image here"}, "image_too_small"),
        ({"url": "ftp://example.invalid/x.jpg", "caption": "wrong scheme"}, "invalid_url"),
        ({"url": "", "caption": "empty url"}, "invalid_url"),
        ({"url": s.url("/img/0.jpg"), "caption": "x"}, "caption_too_few_words"),
        ({"url": s.url("/img/0.jpg"), "caption": "a picture of thing number 0"}, "duplicate_row"),
    ]
    for k, item in enumerate(faults):
        (csv_rows if k % 2 else jsonl_rows).append(item)

    csv_path = tmp_path / "pairs.csv"
    with open(csv_path, "w") as fh:
        fh.write("url,caption,license\n")
        for row, outcome in csv_rows:
            fh.write(f"{row['url']},\"{row['caption']}\",{row.get('license', '')}\n")
    jsonl_path = tmp_path / "pairs.jsonl"
    with open(jsonl_path, "w") as fh:
        for row, outcome in jsonl_rows:
            fh.write(json.dumps(row) + "\n")
    for path, rows in ((str(csv_path), csv_rows), (str(jsonl_path), jsonl_rows)):
        for i, (_row, outcome) in enumerate(rows):
            expected[(path, i)] = outcome
    # The duplicate row comes after its original (CSV is read first), so it is the one rejected.
    return {"inputs": [str(csv_path), str(jsonl_path)], "expected": expected, "server": s}


def run_cli(inputs, out, *extra) -> int:
    return main(
        [
            "run", *inputs, "-o", str(out),
            "--image-size", str(IMAGE_SIZE), "--min-image-size", "32", "--min-words", "2",
            "--deadline", "1.5", "--read-timeout", "1", "--retries", "1", "--max-bytes", "200000",
            "--shard-size", "10", "--save-cols", "license", "--no-progress", "--allow-private-network", *extra,
        ]
    )


def test_every_row_is_kept_or_rejected_with_its_reason(served_inputs, tmp_path, caplog):
    out = tmp_path / "out"
    caplog.set_level(logging.WARNING, logger="paircurate.crawl.workers")
    assert run_cli(served_inputs["inputs"], out) == 0
    got = read_output(out)
    # The download ran in one process per core, without falling back to threads.
    assert got["stats"]["config"]["download"]["processes"] == default_processes()
    assert not [r for r in caplog.records if r.name == "paircurate.crawl.workers"], caplog.text
    # Where the time went: every stage's steps were timed, the download's CPU includes its processes'.
    timings = got["stats"]["stage_seconds"]
    assert {"read", "caption", "download", "dedup", "write"} <= set(timings), timings
    assert all(t["wall"] >= 0 and t["cpu"] >= 0 for t in timings.values()), timings
    assert timings["download"]["wall"] > 0 and timings["download"]["cpu"] > 0.05 and timings["write"]["wall"] > 0, timings
    expected = served_inputs["expected"]

    outcome = {}
    for m in got["meta"]:
        assert (m["source_file"], m["source_row"]) not in outcome
        outcome[(m["source_file"], m["source_row"])] = "kept"
    for r in got["rejects"]:
        assert (r["source_file"], r["source_row"]) not in outcome, "a row is both kept and rejected, or rejected twice"
        outcome[(r["source_file"], r["source_row"])] = r["reason"]
    assert outcome == expected

    funnel = got["stats"]["funnel"]
    assert funnel["input_rows"] == len(expected) == funnel["kept"] + funnel["rejected"]
    assert funnel["kept"] == NUM_GOOD == len(got["samples"]) == len(got["meta"])
    assert funnel["reasons"]["invalid_url"] == 2

    # The tar and the Parquet describe the same samples, and the bytes are what the metadata says.
    assert set(got["samples"]) == {m["uid"] for m in got["meta"]}
    for m in got["meta"]:
        s = got["samples"][m["uid"]]
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.size == (IMAGE_SIZE, IMAGE_SIZE) == (m["width"], m["height"])
        assert m["original_height"] == 120 and m["original_width"] >= 80
        assert s["txt"].decode() == m["caption"]
        assert json.loads(s["json"])["license"] == m["license"]
        assert m["license"].startswith("cc-")
        assert len(m["sha256"]) == 64 and m["byte_size"] == len(s["jpg"])

    reasons = {r["reason"]: r for r in got["rejects"]}
    assert reasons["http_404"]["stage"] == "download" and "404" in reasons["http_404"]["detail"]
    assert reasons["decode_error"]["stage"] == "image"
    assert reasons["caption_too_few_words"]["stage"] == "caption"
    assert reasons["duplicate_row"]["duplicate_of"]

    # Schemas on disk are the declared ones.
    table = pq.read_table(glob.glob(os.path.join(out, "0*.parquet"))[0])
    assert table.schema.equals(R.sample_schema(("license",)), check_metadata=False)
    assert table.schema.metadata[R.SCHEMA_VERSION_KEY] == R.SCHEMA_VERSION.encode()
    rejects_table = pq.read_table(glob.glob(os.path.join(out, "rejected", "*.parquet"))[0])
    assert rejects_table.schema.equals(R.reject_schema(("license",)), check_metadata=False)
    assert not glob.glob(os.path.join(out, "**", ".*tmp*"), recursive=True)


def test_two_runs_give_identical_uids_and_bytes(served_inputs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(served_inputs["inputs"], a) == 0
    assert run_cli(served_inputs["inputs"], b) == 0
    tars_a = sorted(os.path.basename(p) for p in glob.glob(os.path.join(a, "*.tar")))
    assert tars_a == sorted(os.path.basename(p) for p in glob.glob(os.path.join(b, "*.tar")))
    for name in tars_a:
        with open(a / name, "rb") as fa, open(b / name, "rb") as fb:
            assert fa.read() == fb.read(), f"{name} differs between runs"
    assert {m["uid"] for m in read_output(a)["meta"]} == {m["uid"] for m in read_output(b)["meta"]}


def test_rerun_resumes_only_unfinished_shards(served_inputs, tmp_path):
    out = tmp_path / "out"
    assert run_cli(served_inputs["inputs"], out) == 0
    first = read_output(out)
    server = served_inputs["server"]
    # Pretend shard 1 was cut off: its completion marker never got written.
    os.remove(out / "00001_stats.json")
    shard1_urls = {m["url"] for m in first["meta"] if m["shard"] == 1}
    other_url = next(m["url"] for m in first["meta"] if m["shard"] != 1)
    path = lambda u: u.split(server.base_url, 1)[1]  # noqa: E731
    hits_before = {u: server.hits(path(u)) for u in shard1_urls | {other_url}}

    assert run_cli(served_inputs["inputs"], out) == 0
    second = read_output(out)
    assert all(server.hits(path(u)) == hits_before[u] + 1 for u in shard1_urls)
    assert server.hits(path(other_url)) == hits_before[other_url]  # finished shards are not fetched again
    assert sorted(m["uid"] for m in second["meta"]) == sorted(m["uid"] for m in first["meta"])
    assert second["stats"]["resumed_shards"] == [s for s in range(first["stats"]["shards"]) if s != 1]
    assert second["stats"]["funnel"] == first["stats"]["funnel"]


def test_resume_into_a_folder_of_another_run_is_refused(served_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(served_inputs["inputs"], out) == 0
    assert run_cli(served_inputs["inputs"][:1], out) == 2
    assert "other inputs" in capsys.readouterr().err


def test_unparsable_input_fails_fast_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet")
    assert main(["run", str(bad), "-o", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "broken.parquet" in capsys.readouterr().err
