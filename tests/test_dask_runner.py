"""``--runner dask``: the whole pipeline on a real dask.distributed cluster (2 worker processes on 127.0.0.1)
gives the same output as the default in-process runner."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest

distributed = pytest.importorskip("distributed")  # dev extra: dask + distributed

from paircurate.schemas.config import ConfigError  # noqa: E402
from test_end_to_end import read_output, run_cli, served_inputs  # noqa: E402,F401  (served_inputs is a fixture)

from paircurate.runners import make_runner  # noqa: E402
from paircurate.runners.dask import PatchedDaskRunner  # noqa: E402


@pytest.fixture(scope="module")
def dask_address():
    """A real scheduler with two single-threaded worker processes, loopback only."""
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


# --- make_runner ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dask", "Dask", "DaskRunner", "daskrunner"])
def test_runner_dask_with_address_gives_the_dask_runner(name):
    runner, options = make_runner(("--runner", name, "--dask-address", "tcp://127.0.0.1:8786"))
    assert isinstance(runner, PatchedDaskRunner)
    assert options.get_all_options()["address"] == "tcp://127.0.0.1:8786"


def test_dask_address_with_equals_sign_and_beams_own_flag():
    _, options = make_runner(("--runner", "dask", "--dask-address=tcp://10.0.0.1:1"))
    assert options.get_all_options()["address"] == "tcp://10.0.0.1:1"
    _, options = make_runner(("--runner", "dask", "--dask_client_address", "tcp://10.0.0.2:2"))
    assert options.get_all_options()["address"] == "tcp://10.0.0.2:2"


def test_runner_dask_without_address_is_a_clear_error():
    with pytest.raises(ConfigError, match="--dask-address tcp://HOST:PORT"):
        make_runner(("--runner", "dask"))


def test_default_runner_is_unchanged():
    runner, _ = make_runner(())
    assert type(runner).__name__ == "FnApiRunner"


# --- what Beam's own DaskRunner gets wrong on our graph (fixed in paircurate.runners.dask) ---------

class _Split(beam.DoFn):
    def process(self, x):
        yield beam.pvalue.TaggedOutput("odd", x) if x % 2 else x


class _AppendTo(beam.DoFn):
    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, x):
        with open(self._path, "a") as fh:
            fh.write(f"{x}\n")


def _lines(path) -> list:
    with open(path) as fh:
        return sorted(eval(line) for line in fh)  # noqa: S307 (our own reprs of ints and tuples)


def test_tagged_outputs_every_leaf_finish_bundle_and_side_inputs(dask_address, tmp_path):
    opts = beam.options.pipeline_options.PipelineOptions(["--dask_client_address", dask_address])
    p = beam.Pipeline(runner=PatchedDaskRunner(), options=opts)
    split = p | "Numbers" >> beam.Create(range(10)) | beam.ParDo(_Split()).with_outputs("odd", main="even")
    split.even | "WriteEven" >> beam.ParDo(_AppendTo(str(tmp_path / "even")))  # a leaf that is not the last one
    split.odd | "WriteOdd" >> beam.ParDo(_AppendTo(str(tmp_path / "odd")))
    (
        p
        | "Seven" >> beam.Create(range(7))
        | beam.BatchElements(min_batch_size=3, max_batch_size=3)  # the last batch comes from finish_bundle
        | "Len" >> beam.Map(len)
        | "WriteBatches" >> beam.ParDo(_AppendTo(str(tmp_path / "batches")))
    )
    total = split.even | beam.combiners.Count.Globally()
    (
        p
        | "Once" >> beam.Create([None])
        | "Sides" >> beam.Map(lambda _, n, odd: (n, sum(odd)), n=beam.pvalue.AsSingleton(total), odd=beam.pvalue.AsList(split.odd))
        | "WriteSides" >> beam.ParDo(_AppendTo(str(tmp_path / "sides")))
    )
    p.run().wait_until_finish()

    assert _lines(tmp_path / "even") == [0, 2, 4, 6, 8]
    assert _lines(tmp_path / "odd") == [1, 3, 5, 7, 9]
    assert _lines(tmp_path / "batches") == [1, 3, 3]
    assert _lines(tmp_path / "sides") == [(5, 25)]


# --- the whole pipeline --------------------------------------------------------------------------

def _outcomes(got: dict) -> dict:
    outcome = {(m["source_file"], m["source_row"]): "kept" for m in got["meta"]}
    for r in got["rejects"]:
        key = (r["source_file"], r["source_row"])
        assert key not in outcome, f"{key} is kept and rejected, or rejected twice"
        outcome[key] = r["reason"]
    return outcome


def test_dask_run_equals_the_default_run(served_inputs, dask_address, tmp_path):  # noqa: F811
    direct, on_dask = tmp_path / "direct", tmp_path / "dask"
    assert run_cli(served_inputs["inputs"], direct) == 0
    assert run_cli(served_inputs["inputs"], on_dask, "--runner", "dask", "--dask-address", dask_address) == 0
    a, b = read_output(direct), read_output(on_dask)

    assert _outcomes(b) == _outcomes(a) == served_inputs["expected"]
    assert set(b["samples"]) == set(a["samples"]) == {m["uid"] for m in b["meta"]}
    for uid, sample in a["samples"].items():  # every tar read back; same bytes on both runners
        assert b["samples"][uid]["jpg"] == sample["jpg"]
        assert b["samples"][uid]["txt"] == sample["txt"]
    assert b["stats"]["funnel"] == a["stats"]["funnel"]
    assert sorted(os.listdir(on_dask)) == sorted(os.listdir(direct))


def test_dask_run_with_clip_top_percent_and_semantic_dedup_equals_the_default_run(loopback_server, dask_address, tmp_path):
    """The side inputs (run-wide score cutoff, k-means centroids) and BatchElements in front of CLIP."""
    pytest.importorskip("open_clip")
    import test_clip_pipeline as clip_tests

    pairs = clip_tests.pairs_csv.__wrapped__(loopback_server, tmp_path)
    flags = ("--clip-pretrained", clip_tests.TINY_MODEL, "--clip-top-percent", "50", "--semantic-dedup-threshold", "0.95")
    direct = clip_tests.run(pairs, tmp_path / "direct", *flags)
    on_dask = clip_tests.run(pairs, tmp_path / "dask", *flags, "--runner", "dask", "--dask-address", dask_address)

    assert {r["uid"] for r in on_dask["kept"]} == {r["uid"] for r in direct["kept"]}
    assert {r["uid"]: r["reason"] for r in on_dask["rejects"]} == {r["uid"]: r["reason"] for r in direct["rejects"]}
    assert on_dask["stats"]["clip_top_percent_cutoff"] == pytest.approx(direct["stats"]["clip_top_percent_cutoff"])
    assert on_dask["stats"]["funnel"] == direct["stats"]["funnel"]
