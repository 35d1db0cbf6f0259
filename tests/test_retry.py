"""--retry-failed: only the transient failures are tried again, recovered rows land in new shards, every row stays once in the ledger."""

from __future__ import annotations

import csv
import glob
import json
import os

import pytest
from helpers import encode, ledger, photo
from paircurate.storage.layout import RETRY_FILE

from paircurate.cli import main


@pytest.fixture
def flaky_input(loopback_server, tmp_path):
    """18 rows in shards of 5: photos on 127.0.0.1, and on a flaky localhost 500s that clear on the next request."""
    s = loopback_server
    flaky_host = f"http://localhost:{s.port}"
    rows = []
    for i in range(18):
        s.add(f"/img/{i}.jpg", encode(photo(500 + i)))
        if i < 8:
            url = s.url(f"/img/{i}.jpg")
        elif i < 14:
            url = f"{flaky_host}/fault/flaky/1/f{i}?then=/img/{i}.jpg"
        elif i == 14:
            url = f"{flaky_host}/fault/500"  # fails every time
        elif i == 15:
            url = s.url("/fault/404")  # not transient: never retried
        elif i == 16:
            url = f"{flaky_host}/fault/flaky/1/f16?then=/img/0.jpg"  # recovers, but is a copy of row 0
        else:
            url = s.url("/fault/redirect-loop")  # not transient
        rows.append((url, f"a photo for the retry test number {i}"))
    path = tmp_path / "in.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption"])
        writer.writerows(rows)
    return {"server": s, "inputs": str(path)}


def run_cli(inputs: str, out, *extra) -> int:
    return main(["run", inputs, "-o", str(out), "--image-size", "64", "--shard-size", "5", "--retries", "0", "--no-progress", "--allow-private-network", *extra])


def stats_of(out) -> dict:
    with open(os.path.join(out, "stats.json")) as fh:
        return json.load(fh)


def test_retry_recovers_transient_failures_into_new_shards(flaky_input, tmp_path):
    s, out = flaky_input["server"], tmp_path / "out"
    assert run_cli(flaky_input["inputs"], out) == 0
    first = ledger(out)
    assert [i for i in range(18) if first[i].get("reason") == "http_5xx"] == [8, 9, 10, 11, 12, 13, 14, 16]
    assert stats_of(out)["funnel"]["kept"] == 8

    assert run_cli(flaky_input["inputs"], out, "--retry-failed") == 0
    rows = ledger(out)
    assert sorted(rows) == list(range(18))
    for i in range(8):  # first-run samples stay where they were
        assert "reason" not in rows[i] and rows[i]["shard"] == i // 5
    for i in range(8, 14):  # recovered, into new shards 4 and 5
        assert "reason" not in rows[i] and rows[i]["shard"] == (4 if i < 13 else 5)
    assert (rows[14]["reason"], rows[14]["attempts"], rows[14]["shard"]) == ("http_5xx", 2, 5)
    # The row that came back as a copy of a written sample loses to it: written shards are pinned keepers.
    assert (rows[16]["reason"], rows[16]["duplicate_of"], rows[16]["attempts"]) == ("duplicate_exact", rows[0]["uid"], 2)
    assert (rows[15]["reason"], rows[15]["attempts"], rows[15]["shard"]) == ("http_404", None, 3)
    assert rows[17]["reason"] == "redirect_loop"
    # Exactly the transient rows were requested again, nothing else.
    assert s.hits("/fault/404") == 1 and s.hits("/fault/redirect-loop") == 1 and s.hits("/img/0.jpg") == 1
    assert s.hits("/fault/500") == 2 and all(s.hits(f"/fault/flaky/1/f{i}") == 2 for i in (8, 9, 10, 11, 12, 13, 16))

    stats = stats_of(out)
    assert stats["funnel"]["input_rows"] == 18 and stats["funnel"]["kept"] == 14 and stats["funnel"]["rejected"] == 4
    assert stats["funnel"]["reasons"] == {"duplicate_exact": 1, "http_404": 1, "http_5xx": 1, "redirect_loop": 1}
    assert stats["shards"] == 6
    (attempt,) = stats["retries"]
    assert {k: attempt[k] for k in ("retried", "recovered", "still_rejected", "shards", "retried_by_reason")} == {
        "retried": 8, "recovered": 6, "still_rejected": 2, "shards": [4, 5], "retried_by_reason": {"http_5xx": 8},
    }
    shard_stats = []
    for path in sorted(glob.glob(os.path.join(out, "*_stats.json"))):
        with open(path) as fh:
            shard_stats.append(json.load(fh))
    assert [st["input_rows"] for st in shard_stats] == [5, 3, 0, 2, 5, 3]
    assert sum(st["input_rows"] for st in shard_stats) == 18
    with open(out / "shardindex.json") as fh:
        assert [x["nsamples"] for x in json.load(fh)["shardlist"]] == [5, 3, 0, 0, 5, 1]
    assert 'class="num retry-recovered">6<' in (out / "report.html").read_text()
    assert not (out / RETRY_FILE).exists()

    # A second retry tries only what still failed for a transient reason.
    assert run_cli(flaky_input["inputs"], out, "--retry-failed") == 0
    rows = ledger(out)
    assert (rows[14]["reason"], rows[14]["attempts"], rows[14]["shard"]) == ("http_5xx", 3, 6)
    assert s.hits("/fault/500") == 3 and s.hits("/fault/flaky/1/f16") == 2
    assert [a["retried"] for a in stats_of(out)["retries"]] == [8, 1]


def test_retry_reasons_choose_what_is_retried(flaky_input, tmp_path, capsys):
    s, out = flaky_input["server"], tmp_path / "out"
    assert run_cli(flaky_input["inputs"], out, "--retry-failed") == 2
    assert "--retry-failed needs a finished run" in capsys.readouterr().err
    assert not out.exists() and s.requests() == []
    assert run_cli(flaky_input["inputs"], out) == 0
    assert run_cli(flaky_input["inputs"], out, "--retry-failed", "--retry-reasons", "http_404,redirect_loop") == 0
    assert s.hits("/fault/404") == 2 and s.hits("/fault/redirect-loop") == 2 and s.hits("/fault/flaky/1/f8") == 1
    rows = ledger(out)
    assert (rows[15]["reason"], rows[15]["attempts"]) == ("http_404", 2)
    assert run_cli(flaky_input["inputs"], out, "--retry-failed", "--retry-reasons", "no_such_reason") == 2
    assert "unknown reason code(s) ['no_such_reason']" in capsys.readouterr().err


def test_an_interrupted_retry_is_finished_by_the_same_command(flaky_input, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(flaky_input["inputs"], out) == 0
    # What a retry killed after planning leaves behind: its plan, no finished shard of it yet.
    from paircurate.pipeline.read import plan_inputs
    from paircurate.schemas.config import InputConfig

    from paircurate.retry import plan_retry

    files = plan_inputs(InputConfig(paths=(flaky_input["inputs"],)))
    plan = plan_retry(str(out), files, ("http_5xx",), 5)
    (out / RETRY_FILE).write_text(json.dumps(plan.to_json()))
    assert run_cli(flaky_input["inputs"], out) == 2
    assert "unfinished --retry-failed" in capsys.readouterr().err
    assert run_cli(flaky_input["inputs"], out, "--retry-failed") == 0
    rows = ledger(out)
    assert sorted(rows) == list(range(18)) and stats_of(out)["funnel"]["kept"] == 14
