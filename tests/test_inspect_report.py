"""`paircurate inspect` and `paircurate report` on the output of a real run (loopback HTTP, CLIP, dedup)."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from paircurate.cli import main
from paircurate.demo import build_demo_input
from paircurate.inspection import format_inspection, inspect_output
from paircurate.report import REPORT_FILE, write_report
from paircurate.testing.loopback import LoopbackServer

TINY = "paircurate-tiny"


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """One real run shared by the module: the pipeline is the slow part, the readers are cheap.

    Module-scoped, so it starts its own LoopbackServer (the ``loopback_server``
    fixture is per test) exactly as that fixture does.
    """
    tmp = tmp_path_factory.mktemp("curated")
    with LoopbackServer() as server:
        inputs = str(tmp / "pairs.parquet")
        build_demo_input(server, inputs, num_pairs=60)
        out = tmp / "out"
        rc = main(
            [
                "run", inputs, "-o", str(out), "--save-cols", "kind",
                "--min-words", "2", "--min-chars", "5", "--image-size", "64", "--min-image-size", "64",
                "--clip-model", TINY, "--clip-pretrained", TINY, "--device", "cpu", "--clip-batch-size", "32",
                "--retries", "1", "--deadline", "5", "--shard-size", "40", "--no-progress", "--allow-private-network",
            ]
        )
    assert rc == 0
    return str(out)


def _stats(out: str) -> dict:
    with open(os.path.join(out, "stats.json")) as fh:
        return json.load(fh)


def test_inspect_reports_shards_samples_schema_and_scores(curated, capsys):
    stats = _stats(curated)
    tars = sorted(glob.glob(os.path.join(curated, "[0-9]*.tar")))
    scores = np.concatenate([pq.read_table(p, columns=["clip_score"]).column("clip_score").to_numpy() for p in sorted(glob.glob(os.path.join(curated, "[0-9]*.parquet")))])

    ins = inspect_output(curated)
    assert len(ins.tars) == len(tars) == stats["shards"] == 3  # 60 pairs + 23 copies and faults = 83 rows, 40 per shard
    assert ins.samples == stats["funnel"]["kept"] == scores.size
    assert ins.tar_bytes == sum(os.path.getsize(t) for t in tars)
    assert ins.schema_version == "1"
    assert ("clip_score", "float") in ins.schema and ("kind", "string") in ins.schema
    assert ins.clip_quantiles["min"] == pytest.approx(float(scores.min()))
    assert ins.clip_quantiles["max"] == pytest.approx(float(scores.max()))
    assert ins.clip_quantiles["p50"] == pytest.approx(float(np.median(scores)))
    assert ins.clip_quantiles["min"] >= stats["clip_threshold"]

    assert main(["inspect", curated]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == format_inspection(ins).strip()
    assert f"samples: {stats['funnel']['kept']}" in printed
    assert f"{stats['funnel']['input_rows']} input rows -> {stats['funnel']['kept']} kept" in printed
    assert re.search(r"clip_score: min=\d\.\d{4}\s+p10=", printed)


def test_inspect_refuses_a_folder_without_output(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no paircurate output" in capsys.readouterr().err


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: list[tuple[str, dict]] = []
        self.cells: dict[tuple[str, str], str] = {}
        self.ids: dict[str, str] = {}
        self._open: tuple[str, str] | None = None
        self._open_id: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs.append((tag, a))
        classes = (a.get("class") or "").split()
        for c in classes:
            if c.startswith("funnel-") and "data-stage" in a:
                self._open = (c, a["data-stage"])
            if c == "reason-count":
                self._open = (c, a["data-reason"])
        if a.get("id", "").startswith("funnel-"):
            self._open_id = a["id"]

    def handle_data(self, data):
        if self._open is not None:
            self.cells[self._open] = data.strip()
            self._open = None
        if self._open_id is not None:
            self.ids[self._open_id] = data.strip()
            self._open_id = None


def test_report_is_self_contained_and_matches_stats(curated):
    path = write_report(curated)
    assert path == os.path.join(curated, REPORT_FILE)
    with open(path, encoding="utf-8") as fh:
        page = fh.read()
    stats = _stats(curated)
    funnel = stats["funnel"]

    parser = _Collector()
    parser.feed(page)
    parser.close()
    for s in funnel["stages"]:
        assert parser.cells[("funnel-in", s["stage"])] == str(s["in"])
        assert parser.cells[("funnel-out", s["stage"])] == str(s["out"])
        assert parser.cells[("funnel-rejected", s["stage"])] == str(sum(s["rejected"].values()))
    assert parser.ids == {
        "funnel-input-rows": str(funnel["input_rows"]),
        "funnel-kept": str(funnel["kept"]),
        "funnel-rejected": str(funnel["rejected"]),
    }
    for reason, count in funnel["reasons"].items():
        assert parser.cells[("reason-count", reason)] == str(count)

    refs = [a.get(k) for _tag, a in parser.attrs for k in ("src", "href") if a.get(k)]
    assert not [r for r in refs if re.match(r"\s*(https?:)?//", r, re.I)], "the report references the network"
    images = [a["src"] for tag, a in parser.attrs if tag == "img"]
    assert all(src.startswith("data:image/") for src in images)
    thumbs = [s for s in images if s.startswith("data:image/jpeg;base64,")]
    plots = [s for s in images if s.startswith("data:image/png;base64,")]
    assert len(thumbs) >= min(funnel["kept"], 24)
    assert len(plots) == 5  # funnel, host failures, clip histogram, sizes, aspect ratios
    assert "low_clip_score" in page and f'id="clip-threshold">{stats["clip_threshold"]}<' in page

    # Duplicates show the kept sample they copy, with its picture.
    dups = [r for p in glob.glob(os.path.join(curated, "rejected", "*.parquet")) for r in pq.read_table(p).to_pylist() if r["reason"].startswith("duplicate_") and r["duplicate_of"]]
    assert dups, "the demo input holds re-encoded and resized copies"
    assert any(tag == "img" and a.get("alt") == "kept duplicate" for tag, a in parser.attrs)


def test_report_command_writes_the_file(curated, capsys, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(curated, out)
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / REPORT_FILE)
    assert (out / REPORT_FILE).stat().st_size > 10_000
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs the Debian package chromium (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(curated, tmp_path):
    path = write_report(curated)
    shot = tmp_path / "shot.png"
    browser = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr", "--v=0", "--window-size=1200,2000",
    ]
    url = "file://" + os.path.abspath(path)
    shot_run = subprocess.run(browser + [f"--screenshot={shot}", url], check=True, capture_output=True, timeout=120, text=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20  # a blank or error page is near-uniform
    assert (pixels < 100).mean() > 0.01  # dark text and bars, not just a background

    # The DOM as the browser built it carries the funnel of stats.json, and the page logged no console error.
    dom_run = subprocess.run(browser + ["--dump-dom", url], check=True, capture_output=True, timeout=120, text=True)
    for log in (shot_run.stderr, dom_run.stderr):
        console = [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]
        assert console == [], console
    parser = _Collector()
    parser.feed(dom_run.stdout)
    parser.close()
    funnel = _stats(curated)["funnel"]
    assert parser.ids["funnel-kept"] == str(funnel["kept"])
    assert parser.ids["funnel-input-rows"] == str(funnel["input_rows"])
    for s in funnel["stages"]:
        assert parser.cells[("funnel-out", s["stage"])] == str(s["out"])
