"""Dedup inside the real pipeline: injected copies over loopback HTTP, read back from the output."""

from __future__ import annotations

import csv
import glob
import os

import pyarrow.parquet as pq
import pytest
from helpers import brighter, crop_border, encode, half_size, photo

from paircurate.cli import main

DISTINCT = 6


@pytest.fixture
def copies_input(loopback_server, tmp_path):
    s = loopback_server
    original = photo(0)
    rows = []
    for i in range(DISTINCT):
        rows.append(("photo", s.url(s.add(f"/p/{i}.jpg", encode(photo(i)))), f"a photo number {i}"))
    variants = {
        "mirror": encode(original),  # the very same bytes as /p/0.jpg
        "q60": encode(original, quality=60),
        "half": encode(half_size(original)),
        "bright": encode(brighter(original)),
        "crop": encode(crop_border(original, 0.005)),
    }
    for name, data in variants.items():
        rows.append((name, s.url(s.add(f"/{name}/0.jpg", data)), f"a copy of photo zero, {name}"))
    return rows


def write_csv(rows, path) -> str:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption", "kind"])
        for kind, url, caption in rows:
            writer.writerow([url, caption, kind])
    return str(path)


def run(csv_path, out) -> dict:
    assert main(["run", csv_path, "-o", str(out), "--image-size", "128", "--no-progress", "--allow-private-network", "--save-cols", "kind"]) == 0
    kept = [r for p in glob.glob(os.path.join(out, "0*.parquet")) for r in pq.read_table(p).to_pylist()]
    rejects = [r for p in glob.glob(os.path.join(out, "rejected", "*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {"kept": kept, "rejects": rejects}


def test_copies_are_removed_with_reason_and_keeper(copies_input, tmp_path):
    out = run(write_csv(copies_input, tmp_path / "in.csv"), tmp_path / "out")
    kinds = {r["kind"]: r for r in out["kept"]}
    group = {"photo0", "mirror", "q60", "half", "bright", "crop"}
    kept_kinds = [r["kind"] if r["caption"] != "a photo number 0" else "photo0" for r in out["kept"]]
    assert len(out["kept"]) == DISTINCT, kept_kinds  # 5 other photos + one keeper of photo 0's group
    assert {f"a photo number {i}" for i in range(1, DISTINCT)} <= {r["caption"] for r in out["kept"]}
    keeper = [r for r in out["kept"] if r["caption"] == "a photo number 0" or r["kind"] in group][0]

    removed = {r["url"].rsplit("/", 2)[-2]: r for r in out["rejects"]}
    assert all(r["stage"] == "dedup" and r["duplicate_of"] == keeper["uid"] for r in out["rejects"])
    assert len(out["rejects"]) == 5
    # The keeper rule without CLIP scores: the smallest uid of the group.
    group_uids = [keeper["uid"]] + [r["uid"] for r in out["rejects"]]
    assert keeper["uid"] == min(group_uids)
    for name, r in removed.items():
        if name in ("p", "mirror"):  # the original and its byte-identical mirror are linked exactly
            assert r["reason"] == "duplicate_exact" and r["similarity"] == 1.0
        else:
            assert r["reason"] == "duplicate_phash" and r["similarity"] >= 1 - 4 / 64
    del kinds


def test_same_kept_set_on_rerun_and_with_shuffled_input(copies_input, tmp_path):
    first = run(write_csv(copies_input, tmp_path / "a.csv"), tmp_path / "a")
    again = run(write_csv(copies_input, tmp_path / "a.csv"), tmp_path / "b")
    shuffled = run(write_csv(list(reversed(copies_input)), tmp_path / "c.csv"), tmp_path / "c")
    uids = lambda o: sorted(r["uid"] for r in o["kept"])  # noqa: E731
    assert uids(first) == uids(again) == uids(shuffled)
    decisions = lambda o: sorted((r["uid"], r["reason"], r["duplicate_of"]) for r in o["rejects"])  # noqa: E731
    assert decisions(first) == decisions(again) == decisions(shuffled)


def test_dedup_against_an_earlier_run_keeps_the_release_and_drops_new_copies(copies_input, tmp_path):
    s_rows = [r for r in copies_input if r[0] == "photo"]
    earlier = run(write_csv(s_rows, tmp_path / "old.csv"), tmp_path / "old")
    assert len(earlier["kept"]) == DISTINCT
    new_rows = [r for r in copies_input if r[0] != "photo"]
    assert main(["run", write_csv(new_rows, tmp_path / "new.csv"), "-o", str(tmp_path / "new"), "--image-size", "128",
                 "--no-progress", "--allow-private-network", "--dedup-against", str(tmp_path / "old")]) == 0
    rejects = [r for p in glob.glob(str(tmp_path / "new" / "rejected" / "*.parquet")) for r in pq.read_table(p).to_pylist()]
    photo0 = [r["uid"] for r in earlier["kept"] if r["caption"] == "a photo number 0"][0]
    assert len(rejects) == len(new_rows)  # every copy is already in the release
    assert {r["duplicate_of"] for r in rejects} == {photo0}


def test_decontamination_removes_matches_of_an_eval_folder(copies_input, tmp_path):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    photo(3).save(eval_dir / "test_0003.png")
    rows = [r for r in copies_input if r[0] == "photo"]
    csv_path = write_csv(rows, tmp_path / "in.csv")
    assert main(["run", csv_path, "-o", str(tmp_path / "out"), "--image-size", "128", "--no-progress",
                 "--allow-private-network", "--decontaminate-against", str(eval_dir)]) == 0
    rejects = [r for p in glob.glob(str(tmp_path / "out" / "rejected" / "*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert [(r["caption"], r["reason"], r["duplicate_of"]) for r in rejects] == [("a photo number 3", "eval_contamination", "test_0003.png")]
