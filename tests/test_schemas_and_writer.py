import json
import os
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from helpers import solid_jpeg
from paircurate.pipeline import write as W
from paircurate.pipeline.captions import CleanCaptions
from paircurate.pipeline.write import ShardWriter
from paircurate.schemas import records as R
from paircurate.schemas.config import CaptionConfig
from paircurate.storage import layout as L


def sample(i: int, **extra) -> dict:
    image = solid_jpeg((8, 8), (i, 0, 0), quality=75)
    rec = {
        R.UID: f"{i:032x}", R.URL: f"http://h/{i}.jpg", R.CAPTION: f"caption {i}", R.SOURCE_FILE: "in.csv",
        R.SOURCE_ROW: i, R.SHARD: 3, R.CAPTION_RAW: f" caption  {i}", R.IMAGE: image, R.IMAGE_FORMAT: "jpg",
        R.WIDTH: 8, R.HEIGHT: 8, R.ORIGINAL_WIDTH: 16, R.ORIGINAL_HEIGHT: 16, R.SHA256: "0" * 64,
        R.BYTE_SIZE: len(image), R.CONTENT_TYPE: "image/jpeg", R.HTTP_STATUS: 200, R.DOWNLOAD_SECONDS: 0.01,
        R.EXTRA: {"license": "cc0"},
    }
    rec.update(extra)
    return rec


def reject(i: int) -> dict:
    return {R.UID: f"{i:032x}", R.URL: "http://h/x", R.CAPTION: "c", R.SOURCE_FILE: "in.csv", R.SOURCE_ROW: i,
            R.SHARD: 3, R.STAGE: "download", R.REASON: "http_404", R.DETAIL: "HTTP 404"}


def test_to_table_names_the_bad_field():
    with pytest.raises(R.SchemaMismatch, match="'width'"):
        R.to_table([sample(1, width="wide")], R.sample_schema())
    bad = sample(1)
    bad[R.UID] = None
    with pytest.raises(R.SchemaMismatch, match="'uid' is required"):
        R.to_table([bad], R.sample_schema())


def test_schemas_carry_version_and_save_cols():
    schema = R.sample_schema(("license", "nsfw"))
    assert schema.metadata[R.SCHEMA_VERSION_KEY] == R.SCHEMA_VERSION.encode()
    assert schema.names[-2:] == ["license", "nsfw"]
    assert R.IMAGE not in schema.names  # bytes live in the tar only
    assert {R.STAGE, R.REASON, R.DETAIL, R.DUPLICATE_OF}.issubset(R.reject_schema().names)


def test_shard_writer_writes_aligned_tar_parquet_embeddings_and_marker_last(tmp_path):
    emb = lambda i: np.full(4, i / 10, dtype=np.float32)  # noqa: E731
    samples = [sample(i, **{R.CLIP_SCORE: 0.3 + i / 100, R.IMAGE_EMBEDDING: emb(i), R.TEXT_EMBEDDING: -emb(i)}) for i in (2, 0, 1)]
    stats = ShardWriter(str(tmp_path), save_cols=("license",)).write(3, samples, [reject(5)])
    assert stats["kept"] == 3 and stats["input_rows"] == 4 and stats["rejected"] == {"download": {"http_404": 1}}
    assert L.OutputLayout(str(tmp_path)).completed_shards() == {3}

    table = pq.read_table(tmp_path / "00003.parquet")
    assert table.schema.equals(R.sample_schema(("license",)), check_metadata=False)
    assert table.column(R.SOURCE_ROW).to_pylist() == [0, 1, 2]  # sorted by provenance
    assert table.column("license").to_pylist() == ["cc0"] * 3
    img = np.load(tmp_path / "00003.img.npy")
    assert img.dtype == np.float16 and img.shape == (3, 4)
    np.testing.assert_allclose(img[:, 0], [0.0, 0.1, 0.2], atol=1e-3)  # rows follow the Parquet
    np.testing.assert_allclose(np.load(tmp_path / "00003.txt.npy"), -img)

    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "00003.tar"), shardshuffle=False)]
    assert keys == table.column(R.UID).to_pylist()
    first = next(iter(wds.WebDataset(str(tmp_path / "00003.tar"), shardshuffle=False)))
    meta = json.loads(first["json"])
    assert meta["license"] == "cc0" and R.DOWNLOAD_SECONDS not in meta and first["txt"] == b"caption 0"
    assert pq.read_table(tmp_path / "rejected" / "00003.parquet").column(R.REASON).to_pylist() == ["http_404"]


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path, monkeypatch):
    def boom(table, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(W.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        ShardWriter(str(tmp_path)).write(0, [sample(1)], [])
    # The tar and Parquet were complete before the reject Parquet failed; that one
    # left no temporary behind, and without its stats marker the shard counts as unfinished.
    assert sorted(os.listdir(tmp_path)) == ["00000.parquet", "00000.tar", L.REJECTED_DIR]
    assert os.listdir(tmp_path / L.REJECTED_DIR) == []
    assert L.OutputLayout(str(tmp_path)).completed_shards() == frozenset()


def test_a_sample_that_cannot_be_written_becomes_a_reject_and_the_shard_completes(tmp_path):
    broken = {k: v for k, v in sample(2).items() if k != R.IMAGE_FORMAT}  # the tar member cannot be named
    misfit = {**sample(3), R.WIDTH: "wide"}  # does not fit the Parquet schema
    stats = ShardWriter(str(tmp_path)).write(0, [sample(1), broken, misfit], [])
    assert stats["kept"] == 1 and stats["rejected"] == {"write": {"internal_error": 2}}
    rejects = pq.read_table(tmp_path / L.REJECTED_DIR / "00000.parquet").to_pylist()
    assert [(r[R.SOURCE_ROW], r[R.STAGE], r[R.REASON]) for r in rejects] == [(2, "write", "internal_error"), (3, "write", "internal_error")]
    assert rejects[0][R.DETAIL] == "KeyError: 'image_format'"
    assert rejects[1][R.DETAIL].startswith("SchemaMismatch: field 'width'")
    # Neither left a member in the tar nor a row in the Parquet.
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert {n.split(".")[0] for n in tar.getnames()} == {sample(1)[R.UID]}
    assert pq.read_table(tmp_path / "00000.parquet").column(R.UID).to_pylist() == [sample(1)[R.UID]]


def test_parquet_is_streamed_in_row_groups_with_the_declared_schema(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_ROW_GROUP", 2)
    stats = ShardWriter(str(tmp_path), save_cols=("license",)).write(3, [sample(i) for i in (4, 0, 3, 1, 2)], [])
    parquet = pq.ParquetFile(tmp_path / "00003.parquet")
    assert parquet.metadata.num_row_groups == 3 and stats["kept"] == 5
    assert parquet.schema_arrow.equals(R.sample_schema(("license",)))
    assert parquet.schema_arrow.metadata[R.SCHEMA_VERSION_KEY] == R.SCHEMA_VERSION.encode()
    assert parquet.read().column(R.SOURCE_ROW).to_pylist() == [0, 1, 2, 3, 4]


def test_clean_captions_transform_routes_rejects():
    rows = [{R.UID: "a", R.CAPTION: "a &amp; b c", R.SOURCE_FILE: "f", R.SOURCE_ROW: 0, R.SHARD: 0, R.URL: "u"},
            {R.UID: "b", R.CAPTION: "x", R.SOURCE_FILE: "f", R.SOURCE_ROW: 1, R.SHARD: 0, R.URL: "u"}]
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(rows) | CleanCaptions(CaptionConfig(min_words=2))
        assert_that(out.kept | "kc" >> beam.Map(lambda r: r[R.CAPTION]), equal_to(["a & b c"]), label="kept")
        assert_that(out.rejected | "rr" >> beam.Map(lambda r: (r[R.UID], r[R.STAGE], r[R.REASON])),
                    equal_to([("b", "caption", "caption_too_few_words")]), label="rejected")


def test_a_retried_bundle_rewrites_identical_files_and_duplicates_nothing(tmp_path):
    """Beam may run a bundle twice: spooling and writing the same shard again must be a no-op."""
    from paircurate.pipeline.spool import SampleSpool, load_sample

    def spool_bundle():
        spool = SampleSpool(str(tmp_path / L.SPOOL_DIR))
        spooled = [spool.put(sample(i)) for i in range(3)]
        spool.close()
        return spooled

    records = spool_bundle()
    again = spool_bundle()  # the retried bundle: its own file, the first attempt's bytes untouched
    assert [load_sample(r) for r in records] == [load_sample(r) for r in again] == [sample(i) for i in range(3)]
    assert records[0][3] != again[0][3]  # the spool files differ
    # Only this is shuffled: input position, uid, and where the sample waits.
    assert records[0][:3] == ("in.csv", 0, f"{0:032x}") and len(records[0]) == 6

    writer = ShardWriter(str(tmp_path), save_cols=("license",))
    # A first attempt that died before its completion marker: the retry redoes it all.
    writer.write(3, records, [reject(5)])
    os.remove(tmp_path / "00003_stats.json")
    records = spool_bundle()
    stats = writer.write(3, records, [reject(5)])
    first = {name: (tmp_path / name).read_bytes() for name in ("00003.tar", "00003.parquet", "00003_stats.json")}
    # A retry after the shard completed (its spool is gone by then) is a no-op.
    assert writer.write(3, again, [reject(5)]) == stats
    for name, data in first.items():
        assert (tmp_path / name).read_bytes() == data, name
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "00003.tar"), shardshuffle=False)]
    assert keys == sorted(set(keys)) and len(keys) == 3
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_spool_files_closed_for_the_fd_limit_reopen_for_append(tmp_path, monkeypatch):
    from paircurate.pipeline import spool as spool_module

    monkeypatch.setattr(spool_module, "_MAX_OPEN_FILES", 2)
    spool = spool_module.SampleSpool(str(tmp_path))
    # Shards 0, 1, 2 and back to 0: shard 0's file is closed in between and appended to again.
    records = [spool.put(sample(i, **{R.SHARD: shard})) for i, shard in enumerate([0, 1, 0, 2, 1, 0, 3, 0])]
    spool.close()
    assert [spool_module.load_sample(r)[R.IMAGE] for r in records] == [sample(i)[R.IMAGE] for i in range(8)]
    assert all(R.IMAGE not in r for r in records)
    assert sorted(os.listdir(tmp_path)) == ["00000", "00001", "00002", "00003"]
    assert len(os.listdir(tmp_path / "00000")) == 1


def test_samples_waiting_for_their_row_group_are_bounded_in_bytes(tmp_path, monkeypatch):
    # Samples wait (images included) until their row group is known to fit the
    # schema; a byte budget flushes early, so big images never pile up.
    monkeypatch.setattr(W, "_GROUP_BYTES", len(solid_jpeg((8, 8), (0, 0, 0), quality=75)) + 1)
    stats = ShardWriter(str(tmp_path)).write(3, [sample(i) for i in range(4)], [])
    parquet = pq.ParquetFile(tmp_path / "00003.parquet")
    assert stats["kept"] == 4 and parquet.metadata.num_row_groups == 4
