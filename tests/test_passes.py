"""A run split into passes (--rows-per-pass): the same rows end up in the same place as in one
pass, every row exactly once, and a duplicate of a sample written by an earlier pass is removed
in favour of the written one."""

from __future__ import annotations

import csv
import glob
import logging
import os

import pytest
from helpers import encode, photo, read_rows
from paircurate.schemas.config import PipelineConfig

from paircurate.cli import main
from paircurate.runners import DEFAULT_ROWS_PER_PASS, make_runner, plan_passes

ROWS = 24


@pytest.fixture
def pass_input(loopback_server, tmp_path):
    """24 rows in 6 shards of 4: distinct photos, a 404, and row 17 the same bytes as row 2."""
    s = loopback_server
    rows = []
    for i in range(ROWS):
        if i == 9:
            path = "/fault/404"
        elif i == 17:
            path = s.add("/copy/2.jpg", encode(photo(2)))
        else:
            path = s.add(f"/p/{i}.jpg", encode(photo(i)))
        rows.append((s.url(path), f"a photo number {i}"))
    path = tmp_path / "in.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption"])
        writer.writerows(rows)
    return str(path)


def run(csv_path, out, *extra) -> dict:
    args = ["run", csv_path, "-o", str(out), "--image-size", "64", "--shard-size", "4", "--no-progress", "--no-report", "--allow-private-network", *extra]
    assert main(args) == 0
    return {"kept": read_rows(out, "0*.parquet"), "rejects": read_rows(out, "rejected/*.parquet")}


def outcome(result: dict) -> dict[int, tuple]:
    """source_row -> (kept or reason, duplicate_of) for every input row."""
    rows = {r["source_row"]: ("kept", None) for r in result["kept"]}
    for r in result["rejects"]:
        assert r["source_row"] not in rows, f"row {r['source_row']} both kept and rejected"
        rows[r["source_row"]] = (r["reason"], r.get("duplicate_of"))
    return rows


def test_passes_write_what_one_pass_writes_and_pin_earlier_shards(pass_input, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="paircurate.api")
    one = run(pass_input, tmp_path / "one", "--rows-per-pass", "1000")
    assert "pass 1 of" not in caplog.text
    three = run(pass_input, tmp_path / "three", "--rows-per-pass", "8")  # 6 shards, 2 per pass
    assert [f"pass {n} of 3: shards {2 * n - 2} to {2 * n - 1}" in caplog.text for n in (1, 2, 3)] == [True] * 3
    one_rows, three_rows = outcome(one), outcome(three)
    assert sorted(one_rows) == sorted(three_rows) == list(range(ROWS))  # every row exactly once
    uid_of = {r["source_row"]: r["uid"] for r in three["kept"] + three["rejects"]}

    # Row 17 copies row 2 (pass 1). With passes, the written row 2 is the pinned keeper.
    assert three_rows[17] == ("duplicate_exact", uid_of[2]) and three_rows[2] == ("kept", None)
    # In one pass the keeper of the pair is the smaller uid, whichever row that is.
    keeper, removed = sorted([2, 17], key=lambda row: uid_of[row])
    assert one_rows[keeper] == ("kept", None) and one_rows[removed] == ("duplicate_exact", uid_of[keeper])
    # Everything else is identical, the 404 included.
    others = [row for row in range(ROWS) if row not in (2, 17)]
    assert [one_rows[row] for row in others] == [three_rows[row] for row in others]
    assert three_rows[9] == ("http_404", None)
    # Shard files are the same set, each shard written once.
    assert sorted(os.listdir(tmp_path / "three")) == sorted(os.listdir(tmp_path / "one"))


def test_top_percent_is_refused_when_the_input_needs_several_passes(pass_input, tmp_path, capsys):
    code = main(["run", pass_input, "-o", str(tmp_path / "o"), "--shard-size", "4", "--rows-per-pass", "8", "--no-progress",
                 "--allow-private-network", "--clip", "--clip-model", "paircurate-tiny", "--clip-pretrained", "paircurate-tiny",
                 "--clip-top-percent", "50"])
    assert code == 2
    assert "--clip-top-percent needs the whole input in one pass, and this run takes 3 passes" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "o" / "0*"))  # refused before any shard was written


def test_balancing_is_refused_when_the_input_needs_several_passes(pass_input, tmp_path, capsys):
    entries = tmp_path / "entries.txt"
    entries.write_text("thing\n")
    code = main(["run", pass_input, "-o", str(tmp_path / "o"), "--shard-size", "4", "--rows-per-pass", "8", "--no-progress",
                 "--allow-private-network", "--balance-entries", str(entries), "--balance-cap", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--balance-cap needs the whole input in one pass, and this run takes 3 passes of 8 rows; use a runner that spills its shuffles (one pass), or --rows-per-pass" in err
    assert not glob.glob(str(tmp_path / "o" / "0*"))


def test_pass_planning():
    cfg = PipelineConfig.from_dict({"input": {"paths": ["x.csv"]}, "output": {"path": "o", "shard_size": 10}})
    in_process = make_runner(())[0]
    shards = list(range(125_000))  # 1.25M rows
    passes = plan_passes(shards, cfg, in_process)
    assert DEFAULT_ROWS_PER_PASS == 500_000
    assert [len(p) for p in passes] == [50_000, 50_000, 25_000]
    assert sum(passes, []) == shards
    explicit = cfg.with_overrides({"runner.rows_per_pass": 25})  # rounded down to whole shards
    assert plan_passes([0, 1, 2, 5, 6], explicit, in_process) == [[0, 1], [2, 5], [6]]
    assert plan_passes([], cfg, in_process) == []
    # A runner that spills its shuffles (here: Beam resolves the runner itself) takes one pass.
    assert plan_passes([0, 1, 2], cfg, None) == [[0, 1, 2]]
