"""FetchWorkers over a real loopback server: worker processes give exactly what one process gives,
keep the per-host limits of the worker as a whole, and a killed child loses no record."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest
from helpers import solid_jpeg
from paircurate.crawl.workers import FetchWorkers, default_processes, per_process_config
from paircurate.schemas import records as R
from paircurate.schemas.config import DownloadConfig, ImageConfig, PipelineConfig
from PIL import Image

from paircurate.runners import make_runner, resolve_download_processes

CFG = DownloadConfig(allow_private_network=True, threads=8, retries=0, deadline=10.0, read_timeout=5.0)
IMG = ImageConfig(image_size=32, resize_mode="center_crop")


def jpeg(seed: int) -> bytes:
    return solid_jpeg((64 + seed, 48), (seed * 7 % 256, 90, 200 - seed))


def make_records(server, n_images: int = 12) -> list[dict]:
    paths = [server.add(f"/img/{i}.jpg", jpeg(i)) for i in range(n_images)]
    paths += ["/fault/404", "/fault/html", server.add("/broken.jpg", b"\xff\xd8 not a jpeg")]
    return [{R.UID: f"{i:032x}", R.URL: server.url(p), R.SHARD: 0} for i, p in enumerate(paths)]


def outcome(result: dict) -> tuple:
    return (result[R.UID], result.get(R.STAGE), result.get(R.REASON), result.get(R.SHA256), result.get(R.IMAGE), result.get(R.PHASH))


def test_worker_processes_give_exactly_the_results_of_one_process(loopback_server):
    records = make_records(loopback_server)
    with FetchWorkers(CFG, IMG, with_phash=True, processes=1) as one:
        assert one.worker_pids() == []
        expected = one.map(records)
    with FetchWorkers(CFG, IMG, with_phash=True, processes=2) as two:
        pids = two.worker_pids()
        assert len(pids) == 2 and os.getpid() not in pids
        got = two.map(records)
        # Two batches in flight at once come back whole and in order.
        first, second = two.submit(records[:7]), two.submit(records[7:])
        assert [outcome(r) for r in first.result() + second.result()] == [outcome(r) for r in got]
    assert [outcome(r) for r in got] == [outcome(r) for r in expected]
    reasons = [r.get(R.REASON) for r in got]
    assert reasons == [None] * 12 + ["http_404", "not_an_image", "decode_error"]
    kept = got[:12]
    assert all(Image.open(io.BytesIO(r[R.IMAGE])).size == (32, 32) and r[R.PHASH] is not None for r in kept)
    assert len({r[R.SHA256] for r in kept}) == 12


def test_a_killed_worker_process_loses_no_record(loopback_server):
    # Slow responses keep both children busy when one of them is killed.
    records = [{R.UID: f"{i:032x}", R.URL: loopback_server.url(f"/fault/slow?seconds=1&i={i}"), R.SHARD: 0} for i in range(8)]
    with FetchWorkers(CFG, IMG, processes=2) as workers:
        victim = workers.worker_pids()[0]
        pending = workers.submit(records)
        time.sleep(0.4)
        os.kill(victim, signal.SIGKILL)
        results = pending.result()
        assert [r[R.UID] for r in results] == [r[R.UID] for r in records]
        assert [r.get(R.REASON) for r in results] == [None] * 8
        assert all(r[R.HTTP_STATUS] == 200 and r[R.BYTE_SIZE] > 0 for r in results)
        # A fresh pool took over and keeps working.
        assert victim not in workers.worker_pids() and len(workers.worker_pids()) == 2
        again = workers.map(make_records(loopback_server, 2))
        assert [r.get(R.REASON) for r in again] == [None, None, "http_404", "not_an_image", "decode_error"]


@pytest.mark.parametrize("limit", [1, 2])
def test_the_per_host_limit_holds_for_the_worker_as_a_whole(loopback_server, limit):
    """2 processes, limit 2: one request per process; limit 1: the host stays in one process."""
    records = [{R.UID: f"{i:032x}", R.URL: loopback_server.url(f"/fault/slow?seconds=0.3&i={i}"), R.SHARD: 0} for i in range(8)]
    cfg = DownloadConfig(allow_private_network=True, threads=8, retries=0, per_domain_concurrency=limit)
    with FetchWorkers(cfg, IMG, processes=2) as workers:
        results = workers.map(records)
    assert [r.get(R.REASON) for r in results] == [None] * 8
    assert loopback_server.max_in_flight() == limit


def test_limits_are_divided_between_processes():
    cfg = DownloadConfig(threads=32, per_domain_concurrency=16, per_domain_rps=10.0)
    share = per_process_config(cfg, 3)
    assert (share.threads, share.per_domain_concurrency, share.per_domain_rps) == (11, 5, pytest.approx(10 / 3))
    assert per_process_config(cfg, 1) == cfg
    # A per-host limit below the process count is not divided: hosts are routed to one process instead.
    narrow = per_process_config(DownloadConfig(threads=8, per_domain_concurrency=1, per_domain_rps=2.0), 2)
    assert (narrow.threads, narrow.per_domain_concurrency, narrow.per_domain_rps) == (4, 1, 2.0)


def test_download_processes_default_to_one_per_core_only_on_the_in_process_runner():
    cfg = PipelineConfig.from_dict({"input": {"paths": ["x.csv"]}, "output": {"path": "out"}})
    assert cfg.download.processes == 0
    runner, options = make_runner(())
    assert resolve_download_processes(cfg, runner, options).download.processes == default_processes()
    runner, options = make_runner(("--direct_running_mode", "multi_processing", "--direct_num_workers", "2"))
    assert resolve_download_processes(cfg, runner, options).download.processes == 1
    explicit = PipelineConfig.from_dict({"input": {"paths": ["x.csv"]}, "output": {"path": "out"}, "download": {"processes": 3}})
    assert resolve_download_processes(explicit, *make_runner(())).download.processes == 3


OWNER_SCRIPT = """
import sys, time
from paircurate.schemas.config import DownloadConfig, ImageConfig
from paircurate.crawl.workers import FetchWorkers
if __name__ == "__main__":
    workers = FetchWorkers(DownloadConfig(), ImageConfig(), processes=2)
    print(" ".join(map(str, workers.worker_pids())), flush=True)
    time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_download_processes_exit_when_the_pipeline_is_killed(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "owner.py"
    script.write_text(OWNER_SCRIPT)
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in owner.stdout.readline().split()]
    assert len(pids) == 2 and not any(_gone(p) for p in pids)
    owner.kill()  # SIGKILL: no atexit, no executor shutdown
    owner.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_gone(p) for p in pids), "download processes outlived a killed pipeline"
