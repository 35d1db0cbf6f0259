"""SIGKILL a real `paircurate run` part-way, re-run it, and compare with an uninterrupted run."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile

import pyarrow.parquet as pq
from helpers import blocky_jpeg, kill_when

NUM_URLS = 120
SHARD_SIZE = 4  # many small shards, so the kill lands between shard completions


def write_inputs(server, path) -> None:
    with open(path, "w") as fh:
        fh.write("url,caption\n")
        for i in range(NUM_URLS):
            server.add(f"/k/{i}.jpg", blocky_jpeg(48 + i % 7, 40, seed=i))
            url = server.url(f"/k/{i}.jpg") if i % 10 else server.url(f"/fault/404?i={i}")
            fh.write(f"{url},a test picture number {i}\n")


def command(inputs, out) -> list[str]:
    return [
        sys.executable, "-m", "paircurate.cli", "run", str(inputs), "-o", str(out),
        "--image-size", "32", "--shard-size", str(SHARD_SIZE), "--no-progress", "--allow-private-network",
        "--threads", "4",
    ]


def every_tar_reads_to_the_end(out) -> None:
    for path in glob.glob(os.path.join(out, "*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                tar.extractfile(member).read()


def kept_uids(out) -> list[str]:
    return [u for p in sorted(glob.glob(os.path.join(out, "0*.parquet"))) for u in pq.read_table(p).column("uid").to_pylist()]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(loopback_server, tmp_path):
    inputs = tmp_path / "urls.csv"
    write_inputs(loopback_server, inputs)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    subprocess.run(command(inputs, reference), check=True, capture_output=True)

    proc = subprocess.Popen(command(inputs, interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill as soon as the first shard is complete: the writer is then mid-way through the rest.
    kill_when(proc, lambda: glob.glob(os.path.join(interrupted, "*_stats.json")), timeout=120, poll=0.005)
    # Whatever the kill interrupted, no reader can see a truncated tar under a final name.
    every_tar_reads_to_the_end(interrupted)
    assert not os.path.exists(interrupted / "stats.json")

    subprocess.run(command(inputs, interrupted), check=True, capture_output=True)
    every_tar_reads_to_the_end(interrupted)
    uids = kept_uids(interrupted)
    assert len(uids) == len(set(uids)), "a sample was written twice"
    assert sorted(uids) == sorted(kept_uids(reference))
    assert len(uids) == NUM_URLS - NUM_URLS // 10
    leftovers = [p for p in glob.glob(os.path.join(interrupted, "**", "*"), recursive=True) if ".tmp" in p or "_spool" in p]
    leftovers += glob.glob(os.path.join(interrupted, "**", ".*"), recursive=True)
    assert leftovers == []
    shard_names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(interrupted, "*.tar")))
    assert shard_names == sorted(os.path.basename(p) for p in glob.glob(os.path.join(reference, "*.tar")))
    for name in shard_names:
        assert (interrupted / name).read_bytes() == (reference / name).read_bytes()
