"""Per-row isolation: an exception on one record becomes that record's internal_error reject, and the run goes on."""

from __future__ import annotations

import apache_beam as beam
import paircurate.pipeline.captions as captions_module
import paircurate.pipeline.dedup as dedup_module
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from helpers import blocky_jpeg, read_output
from paircurate.pipeline.captions import CleanCaptions
from paircurate.pipeline.stage import REJECTED, IsolatedDoFn, RowIsolation
from paircurate.schemas import records as R
from paircurate.schemas.config import CaptionConfig
from paircurate.schemas.outcomes import Stage

from paircurate.cli import EXIT_ERROR_RATE, main


def record(i: int, caption: str = "a caption of words") -> dict:
    return {R.UID: f"{i:032x}", R.URL: f"http://h/{i}.jpg", R.CAPTION: caption, R.SOURCE_FILE: "in.csv", R.SOURCE_ROW: i, R.SHARD: 0}


def test_an_exception_becomes_the_records_reject_and_outputs_of_a_failed_step_are_dropped():
    isolation = RowIsolation(Stage.CAPTION)

    def step(r):
        yield "half an output"  # collected, then dropped: the record leaves only as its reject
        raise ValueError(f"bad caption {r[R.CAPTION]!r}")

    [out] = isolation.run(record(1, "odd"), step, record(1, "odd"))
    assert out.tag == REJECTED
    assert (out.value[R.UID], out.value[R.STAGE], out.value[R.REASON]) == (record(1)[R.UID], "caption", "internal_error")
    assert out.value[R.DETAIL] == "ValueError: bad caption 'odd'"
    assert isolation.run(record(2), lambda r: [r], record(2)) == [record(2)]


def test_a_failed_batch_rejects_each_of_its_records_and_a_record_without_uid_is_still_addressable():
    isolation = RowIsolation(Stage.CLIP, to_output=lambda row: row)
    batch = [record(1), {R.SOURCE_FILE: "in.csv", R.SOURCE_ROW: 7, R.SHARD: 0}]
    rows = isolation.run(batch, lambda: 1 / 0)
    assert [r[R.SOURCE_ROW] for r in rows] == [1, 7]
    assert all(r[R.REASON] == "internal_error" and r[R.DETAIL].startswith("ZeroDivisionError") for r in rows)
    assert len(rows[1][R.UID]) == 32  # derived from (file, row), so the reject row fits the schema


class _Explodes(IsolatedDoFn):
    STAGE = Stage.CLIP

    def process_record(self, r, factor=None):
        if r[R.SOURCE_ROW] == 2:
            raise KeyError("missing")
        yield r[R.SOURCE_ROW] * factor


def test_isolated_dofn_in_beam_passes_side_inputs_and_routes_failures():
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        factor = p | "Factor" >> beam.Create([10])
        out = (p | beam.Create([record(i) for i in range(4)])
               | beam.ParDo(_Explodes(), factor=beam.pvalue.AsSingleton(factor)).with_outputs(REJECTED, main="kept"))
        assert_that(out.kept, equal_to([0, 10, 30]), label="kept")
        assert_that(out[REJECTED] | beam.Map(lambda r: (r[R.SOURCE_ROW], r[R.STAGE], r[R.DETAIL])),
                    equal_to([(2, "clip", "KeyError: 'missing'")]), label="rejected")


def test_caption_stage_rejects_the_row_that_raises(monkeypatch):
    real = captions_module.clean_caption
    monkeypatch.setattr(captions_module, "clean_caption", lambda text: real(text) if "BOOM" not in text else 1 / 0)
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create([record(0, "a fine caption"), record(1, "BOOM here")]) | CleanCaptions(CaptionConfig())
        assert_that(out.kept | "k" >> beam.Map(lambda r: r[R.SOURCE_ROW]), equal_to([0]), label="kept")
        assert_that(out.rejected | "r" >> beam.Map(lambda r: (r[R.SOURCE_ROW], r[R.REASON])), equal_to([(1, "internal_error")]), label="rej")


@pytest.fixture
def boom_list(loopback_server, tmp_path):
    s = loopback_server
    lines = ["url,caption"]
    for i in range(6):
        url = s.url(s.add(f"/i/{i}.jpg", blocky_jpeg(64, 64, seed=300 + i)))
        lines.append(f"{url},{'BOOM in caption' if i in (1, 2) else f'photo number {i} here'}")
    path = tmp_path / "boom.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _fail_on_boom(monkeypatch):
    real_check = captions_module.check_caption
    real_normalize = dedup_module.normalize_url

    def check(caption, cfg):
        if "BOOM" in caption:
            raise RuntimeError("caption filter bug")
        return real_check(caption, cfg)

    def normalize(url):
        if url.endswith("/3.jpg"):
            raise LookupError("dedup keying bug")
        return real_normalize(url)

    monkeypatch.setattr(captions_module, "check_caption", check)
    monkeypatch.setattr(dedup_module, "normalize_url", normalize)


def run_boom(path, out, *extra):
    return main(["run", path, "-o", str(out), "--image-size", "32", "--no-progress", "--no-report", "--allow-private-network", *extra])


def test_a_run_over_the_error_rate_writes_everything_then_exits_non_zero_naming_the_types(boom_list, tmp_path, monkeypatch, capsys):
    _fail_on_boom(monkeypatch)
    out = tmp_path / "out"
    assert run_boom(boom_list, out) == EXIT_ERROR_RATE
    err = capsys.readouterr().err
    assert "3 of 6 rows (50.00%) ended as internal_error, above --max-error-rate 1.00%" in err
    assert "top exception types: RuntimeError (2), LookupError (1)" in err
    got = read_output(out)
    assert len(got["meta"]) == 3 and len(got["samples"]) == 3  # everything else was written
    failed = sorted((r[R.SOURCE_ROW], r[R.STAGE], r[R.DETAIL]) for r in got["rejects"])
    assert failed == [(1, "caption", "RuntimeError: caption filter bug"), (2, "caption", "RuntimeError: caption filter bug"),
                      (3, "dedup", "LookupError: dedup keying bug")]
    assert got["stats"]["internal_errors"] == {"rows": 3, "rate": 0.5, "max_error_rate": 0.01, "exceeded": True,
                                               "top_types": [["RuntimeError", 2], ["LookupError", 1]]}


def test_a_run_under_the_error_rate_succeeds(boom_list, tmp_path, monkeypatch):
    _fail_on_boom(monkeypatch)
    assert run_boom(boom_list, tmp_path / "out", "--max-error-rate", "0.5") == 0


class _FailingWorkers:
    """Stands in for the download workers: a batch holding a BOOM URL fails as a whole when collected."""

    def __init__(self, *args) -> None:
        pass

    def worker_pids(self) -> list[int]:
        return []  # no processes: everything happens in submit

    def submit(self, batch):
        from concurrent.futures import Future

        future = Future()
        if any("BOOM" in r[R.URL] for r in batch):
            future.set_exception(OSError("worker pipe closed"))
        else:
            future.set_result([dict(r) for r in batch])
        return future

    def close(self) -> None:
        pass


def test_a_download_batch_that_fails_rejects_its_own_records_only(monkeypatch):
    import paircurate.pipeline.download as download_module
    from paircurate.pipeline.download import DownloadImages
    from paircurate.schemas.config import DownloadConfig, ImageConfig

    monkeypatch.setattr(download_module, "FetchWorkers", _FailingWorkers)
    records = [record(i) for i in range(6)]
    records[3][R.URL] = "http://h/BOOM.jpg"
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(records) | DownloadImages(DownloadConfig(batch_size=2, processes=1), ImageConfig())
        outcomes = (
            (out.kept | "k" >> beam.Map(lambda r: (r[R.SOURCE_ROW], "kept")),
             out.rejected | "r" >> beam.Map(lambda r: (r[R.SOURCE_ROW], f"{r[R.STAGE]} {r[R.REASON]} {r[R.DETAIL]}")))
            | beam.Flatten()
        )

        def check(pairs):
            got = dict(pairs)
            assert sorted(got) == list(range(6)) and len(pairs) == 6  # every record once
            failed = sorted(row for row, what in got.items() if what != "kept")
            # The BOOM record and its batch-mate (batches of 2), nothing else.
            assert 3 in failed and len(failed) == 2, got
            assert {got[row] for row in failed} == {"download internal_error OSError: worker pipe closed"}

        assert_that(outcomes, check)
