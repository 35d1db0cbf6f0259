"""Write stage: one WebDataset tar, one Parquet, one reject Parquet and a stats file per shard.

The names and what "complete" means live in ``schemas.layout``; bytes go
through ``paircurate.storage``. Every file appears whole or not at all (a
renamed temporary on disk, a single PUT or completed multipart upload on an
object store), the stats file last, so a reader never sees a truncated tar
and a retried bundle simply replaces the files with identical ones.

Tars are written with the standard library in WebDataset's layout rather
than through ``webdataset.TarWriter``: importing webdataset imports torch,
two seconds of start-up in every worker process of a run without CLIP. The
tests read every shard back with webdataset.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter, defaultdict
from typing import Iterable, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from paircurate import storage
from paircurate.pipeline.spool import input_position, is_pointer, load_sample, prefetched, remove_shard_spool
from paircurate.pipeline.stage import METRICS_NAMESPACE, RowIsolation, StageCounters
from paircurate.schemas import records as R
from paircurate.storage.layout import OutputLayout
from paircurate.schemas.outcomes import Reason, Stage

_TAR_MTIME = 0  # fixed so identical shards are byte-identical across runs; an int, or every member gets a PAX header
# In-flight fields that go into their own files, not into Parquet or json.
_BULK_FIELDS = (R.IMAGE, R.IMAGE_EMBEDDING, R.TEXT_EMBEDDING, R.EXTRA)
_ROW_GROUP = 1024  # Parquet rows buffered before they are written
# A row group's samples wait (images included) until all their rows are known to
# fit the schema; this bounds what waits when images are large (--resize-mode no).
_GROUP_BYTES = 64 * 1024 * 1024
# Timings differ from run to run; they stay in the Parquet but out of the tar,
# so the same input gives byte-identical shards.
_TAR_EXCLUDED = _BULK_FIELDS + (R.DOWNLOAD_SECONDS, R.CAPTION_TOKENS)


def _json_safe(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


class ShardWriter:
    """Writes one complete shard from its kept samples and rejects.

        >>> ShardWriter(out_dir, save_cols=("license",)).write(7, samples, rejects)
    """

    def __init__(self, out_dir: str, save_cols: tuple[str, ...] = (), spool_dir: str | None = "") -> None:
        self._layout = OutputLayout(out_dir)
        # "": the spool in OUT; None: samples came through the shuffle, nothing to remove.
        self._spool_dir = self._layout.spool_dir if spool_dir == "" else spool_dir
        self._save_cols = save_cols
        self._sample_schema = R.sample_schema(save_cols)
        self._reject_schema = R.reject_schema(save_cols)

    def write(self, shard: int, samples: Iterable[dict], rejects: Iterable[dict], removals: Iterable[dict] = ()) -> dict:
        """Write the shard; ``removals`` (from dedup) turn kept samples into reject rows.

        ``samples`` may be spool pointers (``spool.SampleSpool``) or whole
        samples. They are read back a few at a time (``spool.prefetched``) and streamed into the tar,
        the Parquet (row groups of ``_ROW_GROUP`` rows) and the embedding
        files, so a shard's images and metadata are never all in memory.

        A shard whose stats file exists is complete: a retried bundle (or a
        second writer) returns its stats instead of writing it again, which
        also matters because completion removes the shard's spooled samples.
        """
        out = self._layout
        done = out.read_json(out.shard_stats(shard))
        if done is not None:
            return done
        removed = {r[R.UID]: r for r in removals}
        pointers = sorted(samples, key=input_position)  # the same order in every run
        rejects = list(rejects)

        # Each sample is prepared (read back, its tar members and Parquet row
        # built) under per-row isolation, and a row group is written only once
        # all its rows fit the schema: a sample that cannot be written becomes
        # a reject row (stage write, internal_error), never a broken shard.
        isolation = RowIsolation(Stage.WRITE, to_output=lambda row: (None, row))
        kept = image_bytes = 0
        embeddings: dict[str, list[np.ndarray]] = {R.IMAGE_EMBEDDING: [], R.TEXT_EMBEDDING: []}
        with storage.atomic_writer(out.tar(shard)) as tar_fh, storage.atomic_writer(out.parquet(shard)) as pq_fh:
            with tarfile.open(fileobj=tar_fh, mode="w|", format=tarfile.PAX_FORMAT) as tar, pq.ParquetWriter(pq_fh, self._sample_schema) as parquet:
                group: list[_Prepared] = []
                group_bytes = 0

                def flush() -> None:
                    nonlocal kept, image_bytes, group_bytes
                    table, fitting = self._row_group(group, isolation, rejects)
                    for item in fitting:
                        for member_name, data in item.members:
                            _add_member(tar, member_name, data)
                        kept += 1
                        image_bytes += item.row.get(R.BYTE_SIZE) or 0
                        for field, vector in item.embeddings.items():
                            embeddings[field].append(vector)
                    if table.num_rows:
                        parquet.write_table(table)
                    group.clear()
                    group_bytes = 0

                for pointer, spooled in prefetched(pointers):
                    for item, reject in isolation.run(_pointer_record(pointer, shard), _prepare_sample, pointer, removed, spooled):
                        if reject is not None:
                            rejects.append(reject)
                        else:
                            group.append(item)
                            group_bytes += sum(len(data) for _, data in item.members)
                    if len(group) == _ROW_GROUP or group_bytes >= _GROUP_BYTES:
                        flush()
                if group or not kept:
                    flush()
            tar_bytes = tar_fh.tell()
        for field, suffix in ((R.IMAGE_EMBEDDING, "img"), (R.TEXT_EMBEDDING, "txt")):
            if embeddings[field]:
                if len(embeddings[field]) != kept:
                    raise ValueError(f"shard {shard}: {len(embeddings[field])} of {kept} samples have {field}")
                matrix = np.stack(embeddings[field])
                with storage.atomic_writer(out.embeddings(shard, suffix)) as fh:
                    np.save(fh, matrix)
        rejects.sort(key=input_position)
        reject_table = _reject_table(rejects, self._reject_schema)
        with storage.atomic_writer(out.rejected(shard)) as fh:
            pq.write_table(reject_table, fh)

        by_stage: dict[str, Counter] = defaultdict(Counter)
        for r in rejects:
            by_stage[r[R.STAGE]][r[R.REASON]] += 1
        stats = {
            "shard": shard,
            "input_rows": kept + len(rejects),
            "kept": kept,
            "rejected": {stage: dict(sorted(c.items())) for stage, c in sorted(by_stage.items())},
            "tar_bytes": tar_bytes,
            "image_bytes": image_bytes,
        }
        # Last: the stats file is the completion marker a re-run looks for.
        out.write_json(out.shard_stats(shard), stats)
        if self._spool_dir is not None:
            remove_shard_spool(self._spool_dir, shard)
        return stats

    def _row_group(self, group: list[_Prepared], isolation: RowIsolation, rejects: list[dict]) -> tuple[pa.Table, list[_Prepared]]:
        """The group's Parquet table and the samples in it; a row that does not fit the schema is rejected alone."""
        try:
            return R.to_table([item.row for item in group], self._sample_schema), list(group)
        except R.SchemaMismatch:
            fitting = []
            for item in group:
                for _, reject in isolation.run(item.record, lambda row=item.row: [(R.to_table([row], self._sample_schema), None)]):
                    if reject is None:
                        fitting.append(item)
                    else:
                        rejects.append(reject)
            return R.to_table([item.row for item in fitting], self._sample_schema), fitting


class _Prepared(NamedTuple):
    """A sample ready to go into its shard: tar members, Parquet row, embedding vectors."""

    members: list[tuple[str, bytes]]
    row: dict
    embeddings: dict[str, np.ndarray]
    record: dict


def _pointer_record(pointer, shard: int) -> dict:
    """What a reject row needs of a sample that may not even load."""
    if not is_pointer(pointer):
        return pointer
    return {R.SOURCE_FILE: pointer[0], R.SOURCE_ROW: pointer[1], R.UID: pointer[2], R.SHARD: shard}


def _prepare_sample(pointer, removed: dict[str, dict], data: bytes | None = None):
    """Yields ``(prepared, None)`` for a sample to write, ``(None, reject row)`` for one dedup removed."""
    sample = load_sample(pointer, data)
    if sample[R.UID] in removed:
        yield None, _removal_reject(sample, removed[sample[R.UID]])
        return
    vectors = {f: np.asarray(sample[f], dtype=np.float16) for f in (R.IMAGE_EMBEDDING, R.TEXT_EMBEDDING) if sample.get(f) is not None}
    row = {k: v for k, v in sample.items() if k not in (R.IMAGE, R.IMAGE_EMBEDDING, R.TEXT_EMBEDDING)}
    yield _Prepared(_sample_members(sample), row, vectors, sample), None


def _sample_members(sample: dict) -> list[tuple[str, bytes]]:
    meta = {k: _json_safe(v) for k, v in sample.items() if k not in _TAR_EXCLUDED}
    meta.update({k: v for k, v in (sample.get(R.EXTRA) or {}).items()})
    # WebDataset's layout: members named {key}.{ext}, grouped by key, in key order.
    members = {
        sample[R.IMAGE_FORMAT]: sample[R.IMAGE],
        "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
        "txt": (sample.get(R.CAPTION) or "").encode("utf-8"),
    }
    if sample.get(R.CAPTION_TOKENS) is not None:
        members["tokens"] = json.dumps(list(sample[R.CAPTION_TOKENS])).encode("ascii")
    return [(f"{sample[R.UID]}.{ext}", members[ext]) for ext in sorted(members)]


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o444
    info.uname = info.gname = "paircurate"
    tar.addfile(info, io.BytesIO(data))


def _reject_table(rejects: list[dict], schema) -> "pa.Table":
    """The shard's reject rows as a table; a row that does not fit (text no codec can write) is written escaped.

    Reject rows cannot themselves be rejected, so a value that does not fit is
    escaped rather than losing the row.
    """
    try:
        return R.to_table(rejects, schema)
    except R.SchemaMismatch:
        fitting = []
        for row in rejects:
            try:
                R.to_table([row], schema)
                fitting.append(row)
            except R.SchemaMismatch:
                fitting.append(_escaped(row))
        return R.to_table(fitting, schema)


def _escaped(value):
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _removal_reject(sample: dict, removal: dict) -> dict:
    """A removal names its stage and detail (balance, or a sample a stage could not key), or is a duplicate of a keeper (dedup: the default)."""
    stage = Stage(removal.get(R.STAGE) or Stage.DEDUP.value)
    if removal[R.REASON] == Reason.INTERNAL_ERROR.value or stage is not Stage.DEDUP:
        return R.make_reject(sample, stage, Reason(removal[R.REASON]), removal.get(R.DETAIL) or "")
    row = R.make_reject(sample, Stage.DEDUP, Reason(removal[R.REASON]), f"{removal[R.REASON]} of {removal[R.DUPLICATE_OF]} (similarity {removal[R.SIMILARITY]:.4f})")
    row[R.DUPLICATE_OF] = removal[R.DUPLICATE_OF]
    row[R.SIMILARITY] = removal[R.SIMILARITY]
    return row


class _WriteShardFn(beam.DoFn):
    def __init__(self, out_dir: str, save_cols: tuple[str, ...], spool_dir: str | None) -> None:
        self._out = out_dir
        self._save_cols = save_cols
        self._spool_dir = spool_dir

    def setup(self) -> None:
        self._writer = ShardWriter(self._out, self._save_cols, self._spool_dir)
        self._shards = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "write.shards")
        self._removed = {stage: StageCounters(stage) for stage in (Stage.DEDUP, Stage.BALANCE)}

    def process(self, item):
        shard, grouped = item
        removals = list(grouped["removals"])
        stats = self._writer.write(shard, grouped["kept"], grouped["rejected"], removals)
        for removal in removals:
            if removal[R.REASON] != Reason.INTERNAL_ERROR.value:  # counted where it happened
                self._removed[Stage(removal.get(R.STAGE) or Stage.DEDUP.value)].rejected(removal[R.REASON])
        self._shards.inc()
        yield stats


class WriteShards(beam.PTransform):
    """((shard, kept sample pointer), rejects, removals of dedup and balance) -> files per shard; outputs each shard's stats dict."""

    def __init__(self, out_dir: str, save_cols: tuple[str, ...] = (), spool_dir: str | None = "") -> None:
        super().__init__()
        self._out = out_dir
        self._save_cols = save_cols
        self._spool_dir = spool_dir

    def expand(self, inputs):
        keyed_kept, rejected, removals = inputs  # kept samples come as (shard, spool pointer)
        keyed_rejected = rejected | "KeyRejectsByShard" >> beam.Map(lambda r: (r[R.SHARD], r))
        keyed_removals = removals | "KeyRemovalsByShard" >> beam.Map(lambda r: (r[R.SHARD], r))
        return (
            {"kept": keyed_kept, "rejected": keyed_rejected, "removals": keyed_removals}
            | "GroupByShard" >> beam.CoGroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self._out, self._save_cols, self._spool_dir))
        )


FUNNEL_STAGES = [s.value for s in Stage]
