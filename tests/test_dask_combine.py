"""Combines on the Dask runner are lifted (a partial combine per bundle) and give the in-process runner's results."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

distributed = pytest.importorskip("distributed")  # dev extra: dask + distributed

from paircurate.runners.dask import PatchedDaskRunner  # noqa: E402


def combine_graph(p, out_dir: str):
    rows = p | beam.Create([(f"k{i % 7}", (i * 37 % 101, f"u{i:04d}")) for i in range(3000)])
    mins = rows | "Min" >> beam.CombinePerKey(min)  # mutable list accumulators in Beam's wrapper
    means = rows | "Scores" >> beam.Map(lambda kv: (kv[0], kv[1][0])) | "Mean" >> beam.combiners.Mean.PerKey()
    count = rows | "Count" >> beam.combiners.Count.Globally()
    empty = p | "Nothing" >> beam.Create([0]) | beam.Filter(lambda x: x > 0) | "CountNothing" >> beam.combiners.Count.Globally()
    (
        (mins | "TagMin" >> beam.Map(lambda kv: ("min", kv)),
         means | "TagMean" >> beam.Map(lambda kv: ("mean", kv)),
         count | "TagCount" >> beam.Map(lambda n: ("count", n)),
         empty | "TagEmpty" >> beam.Map(lambda n: ("empty", n)))
        | beam.Flatten()
        | beam.Map(repr)
        | beam.io.WriteToText(out_dir + "/out", shard_name_template="")
    )


def read(path: str) -> list[str]:
    with open(path) as fh:
        return sorted(fh.read().splitlines())


def test_lifted_combines_equal_the_in_process_runner(tmp_path):
    with beam.Pipeline(runner=FnApiRunner()) as p:
        combine_graph(p, str(tmp_path / "ref"))
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        options = PipelineOptions(["--dask_client_address", cluster.scheduler_address])
        p = beam.Pipeline(runner=PatchedDaskRunner(), options=options)
        combine_graph(p, str(tmp_path / "dask"))
        p.run().wait_until_finish()
    expected = read(tmp_path / "ref" / "out")
    assert "('count', 3000)" in expected and "('empty', 0)" in expected and "('min', ('k0', (0, 'u0000')))" in expected
    assert read(tmp_path / "dask" / "out") == expected


def test_combine_per_key_is_replaced_by_the_lifted_form():
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create([("a", 1)]) | "Sum" >> beam.CombinePerKey(sum)
    from paircurate.runners.dask import _LiftCombines

    p.replace_all([_LiftCombines()])
    labels = []

    class Labels(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            labels.append(node.full_label)

    p.visit(Labels())
    assert any("_PartialGroupByKeyCombiningValues" in label for label in labels), labels
