"""Every hostile row case of issue 14's input half: the reason it ends with and the time to give up.

    python bench/hostile_rows.py            # per-row decision paths, then one whole CLI run over all of them

Per row, the path the pipeline takes for it is timed on its own (read +
URL check + uid for URLs; length check, ftfy and the caption filters with
--reject-boilerplate for captions), median of 5; ``py peak`` is the peak of
Python allocations while deciding (tracemalloc). The quadratic regex the
caption filter used before is timed next to its replacement. Then the
whole list goes through ``paircurate run`` once (loopback server for the
healthy rows): wall time and the process's peak RSS.
"""

from __future__ import annotations

import gzip
import os
import re
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from paircurate.filters.caption import _IMAGE_EXT, check_caption, check_caption_length, clean_caption  # noqa: E402
from paircurate.filters.url import check_url  # noqa: E402
from paircurate.pipeline.read import iter_rows, plan_inputs  # noqa: E402
from paircurate.schemas.config import CaptionConfig, InputConfig  # noqa: E402
from paircurate.schemas.identity import make_uid  # noqa: E402

CAPTION_CFG = CaptionConfig(reject_boilerplate=True)
QUADRATIC = "screenshot " + "-" * 16000 + "x y"
OLD_SCREENSHOT = re.compile(r"^(?:screenshot|screen shot)[\s_\-]*[\d\-_ .:apm(),at]*" + _IMAGE_EXT + "$")

URL_CASES = [
    ("bad port", "http://example.invalid:99999/a.jpg"),
    ("unbalanced bracket", "http://[::1/"),
    ("space in host", "http://exa mple.com/a.jpg"),
    ("control character", "http://example.com/\x01.jpg"),
    ("absurd length (1 MB)", "http://example.com/" + "a" * 1_000_000),
    ("64-char host label", "http://" + "a" * 64 + ".com/a.jpg"),
    ("lone surrogate in url", "http://example.com/\ud800.jpg"),
]
CAPTION_CASES = [
    ("boilerplate-quadratic caption (16 KB), default max", QUADRATIC, CAPTION_CFG),
    ("boilerplate-quadratic caption (16 KB), --max-caption-chars 100000", QUADRATIC, CaptionConfig(reject_boilerplate=True, max_caption_chars=100_000)),
    ("1 MB caption", "word " * 200_000, CAPTION_CFG),
    ("100 KB caption of dashes, --max-caption-chars 200000", "screenshot " + "-" * 100_000 + "x y", CaptionConfig(reject_boilerplate=True, max_caption_chars=200_000)),
]


def timed(fn, repeat: int = 5):
    times = []
    for _ in range(repeat):
        tracemalloc.start()
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, statistics.median(times), peak


def url_path(url: str) -> str:
    decision = check_url(url)
    make_uid(url, "x")
    return decision.reason.value if decision.reason else "kept"


def caption_path(caption: str, cfg: CaptionConfig) -> str:
    decision = check_caption_length(caption, cfg)
    if decision.keep:
        decision = check_caption(clean_caption(caption), cfg)
    return decision.reason.value if decision.reason else "kept"


def file_cases(tmp: str):
    bom = os.path.join(tmp, "bom.csv")
    with open(bom, "wb") as fh:
        fh.write(b"\xef\xbb\xbfurl,caption\nhttp://a.example/1.jpg,one\n")
    surrogate = os.path.join(tmp, "surrogate.jsonl.gz")
    with gzip.open(surrogate, "wt") as fh:
        fh.write('\n{"url": "http://a.example/1.jpg", "caption": "half \\ud800 pair"}\n')
    latin1 = os.path.join(tmp, "latin1.csv")
    with open(latin1, "wb") as fh:
        fh.write(b"url,caption\nhttp://a.example/\xff.jpg,caf\xe9\n")

    def read(path):
        def go():
            cfg = InputConfig(paths=(path,))
            f = plan_inputs(cfg)[0]
            row = next(iter_rows(f.path, f.format, cfg))
            return url_path(row["url"]) + f" (caption {row['caption']!r})"
        return go

    return [("BOM before the CSV header", read(bom)), ("lone surrogate in a .jsonl.gz caption, blank first line", read(surrogate)),
            ("latin-1 bytes in a CSV url and caption", read(latin1))]


def whole_run(tmp: str) -> None:
    from paircurate.cli import main
    from paircurate.testing.loopback import LoopbackServer
    from test_hostile_run import hostile_inputs  # the end-to-end test's list
    from pathlib import Path

    with LoopbackServer() as server:
        inputs, expected = hostile_inputs(server, Path(tmp))
        started = time.perf_counter()
        rc = main(["run", *inputs, "-o", os.path.join(tmp, "out"), "--reject-boilerplate", "--max-caption-chars", "100000",
                   "--image-size", "32", "--min-image-size", "16", "--deadline", "10", "--retries", "0", "--shard-size", "8",
                   "--no-progress", "--no-report", "--allow-private-network"])
        wall = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwhole CLI run over the {len(expected)}-row hostile list: rc {rc}, {wall:.1f} s wall, peak RSS {rss:.0f} MiB (this process)")


def main() -> None:
    print(f"{'case':<62} {'reason':<18} {'give up':>10} {'py peak':>9}")
    for name, url in URL_CASES:
        reason, seconds, peak = timed(lambda u=url: url_path(u))
        print(f"{name:<62} {reason:<18} {seconds * 1e3:>8.2f}ms {peak / 2**20:>7.2f}MB")
    for name, caption, cfg in CAPTION_CASES:
        reason, seconds, peak = timed(lambda c=caption, k=cfg: caption_path(c, k))
        print(f"{name:<62} {reason:<18} {seconds * 1e3:>8.2f}ms {peak / 2**20:>7.2f}MB")
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in file_cases(tmp):
            reason, seconds, peak = timed(fn)
            print(f"{name:<62} {reason[:60]:<18} {seconds * 1e3:>8.2f}ms {peak / 2**20:>7.2f}MB")
        _, old, _ = timed(lambda: OLD_SCREENSHOT.match(QUADRATIC), repeat=1)
        print(f"\nold screenshot regex on the 16 KB caption: {old:.2f} s; new caption path: see above")
        whole_run(tmp)


if __name__ == "__main__":
    main()
