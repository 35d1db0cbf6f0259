"""Write stage: one WebDataset tar, one Parquet, one reject Parquet and a stats file per shard.

Layout of an output folder::

    00000.tar            {uid}.jpg  {uid}.txt  {uid}.json  per kept sample
    00000.parquet        one row per kept sample (schemas.records.sample_schema)
    00000.img.npy        CLIP image embeddings, float16, rows aligned with the Parquet (CLIP on)
    00000.txt.npy        CLIP text embeddings, likewise
    rejected/00000.parquet   one row per rejected input row of the shard
    00000_stats.json     written last: its presence means the shard is complete

Every file is written under a temporary name and renamed into place, so a
reader never sees a truncated tar, and a retried bundle simply replaces the
files with identical ones.

Tars are written with the standard library in WebDataset's layout rather
than through ``webdataset.TarWriter``: importing webdataset imports torch,
two seconds of start-up in every worker process of a run without CLIP. The
tests read every shard back with webdataset.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from collections import Counter, defaultdict
from typing import Iterable

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq

from paircurate.filters.decision import Reason, Stage
from paircurate.pipeline.spool import load_image, remove_shard_spool
from paircurate.pipeline.stage import METRICS_NAMESPACE, StageCounters, make_reject
from paircurate.schemas import records as R

STATS_SUFFIX = "_stats.json"
REJECTED_DIR = "rejected"
_TAR_MTIME = 0.0  # fixed so identical shards are byte-identical across runs
# In-flight fields that go into their own files, not into Parquet or json.
_BULK_FIELDS = (R.IMAGE, R.IMAGE_SPOOL, R.IMAGE_EMBEDDING, R.TEXT_EMBEDDING, R.EXTRA)
# Timings differ from run to run; they stay in the Parquet but out of the tar,
# so the same input gives byte-identical shards.
_TAR_EXCLUDED = _BULK_FIELDS + (R.DOWNLOAD_SECONDS, R.CAPTION_TOKENS)


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def completed_shards(out_dir: str) -> frozenset[int]:
    """Shards whose stats file exists: finished in an earlier run."""
    if not os.path.isdir(out_dir):
        return frozenset()
    done = set()
    for name in os.listdir(out_dir):
        if name.endswith(STATS_SUFFIX) and name[: -len(STATS_SUFFIX)].isdigit():
            done.add(int(name[: -len(STATS_SUFFIX)]))
    return frozenset(done)


def _atomic_write(path: str, write) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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

    def __init__(self, out_dir: str, save_cols: tuple[str, ...] = ()) -> None:
        self._out = out_dir
        self._save_cols = save_cols
        self._sample_schema = R.sample_schema(save_cols)
        self._reject_schema = R.reject_schema(save_cols)

    def write(self, shard: int, samples: Iterable[dict], rejects: Iterable[dict], removals: Iterable[dict] = ()) -> dict:
        """Write the shard; ``removals`` (from dedup) turn kept samples into reject rows.

        A shard whose stats file exists is complete: a retried bundle (or a
        second writer) returns its stats instead of writing it again, which
        also matters because completion removes the shard's spooled images.
        """
        marker = os.path.join(self._out, f"{shard_name(shard)}{STATS_SUFFIX}")
        if os.path.exists(marker):
            with open(marker) as fh:
                return json.load(fh)
        order = lambda r: (r[R.SOURCE_FILE], r[R.SOURCE_ROW])  # noqa: E731 - deterministic order in every run
        removed = {r[R.UID]: r for r in removals}
        rejects = list(rejects) + [_removal_reject(s, removed[s[R.UID]]) for s in samples if s[R.UID] in removed]
        samples = sorted((s for s in samples if s[R.UID] not in removed), key=order)
        rejects = sorted(rejects, key=order)
        name = shard_name(shard)
        os.makedirs(os.path.join(self._out, REJECTED_DIR), exist_ok=True)

        tar_bytes = self._write_tar(os.path.join(self._out, f"{name}.tar"), samples)
        table = R.to_table(samples, self._sample_schema)
        _atomic_write(os.path.join(self._out, f"{name}.parquet"), lambda fh: pq.write_table(table, fh))
        if samples and samples[0].get(R.IMAGE_EMBEDDING) is not None:
            for field, suffix in ((R.IMAGE_EMBEDDING, "img"), (R.TEXT_EMBEDDING, "txt")):
                matrix = np.stack([np.asarray(s[field], dtype=np.float16) for s in samples])
                _atomic_write(os.path.join(self._out, f"{name}.{suffix}.npy"), lambda fh, m=matrix: np.save(fh, m))
        reject_table = R.to_table(rejects, self._reject_schema)
        _atomic_write(os.path.join(self._out, REJECTED_DIR, f"{name}.parquet"), lambda fh: pq.write_table(reject_table, fh))

        by_stage: dict[str, Counter] = defaultdict(Counter)
        for r in rejects:
            by_stage[r[R.STAGE]][r[R.REASON]] += 1
        stats = {
            "shard": shard,
            "input_rows": len(samples) + len(rejects),
            "kept": len(samples),
            "rejected": {stage: dict(sorted(c.items())) for stage, c in sorted(by_stage.items())},
            "tar_bytes": tar_bytes,
            "image_bytes": sum(s[R.BYTE_SIZE] or 0 for s in samples),
        }
        # Last: the stats file is the completion marker a re-run looks for.
        payload = json.dumps(stats, indent=2, sort_keys=True).encode()
        _atomic_write(os.path.join(self._out, f"{name}{STATS_SUFFIX}"), lambda fh: fh.write(payload))
        remove_shard_spool(self._out, shard)
        return stats

    def _write_tar(self, path: str, samples: list[dict]) -> int:
        size = 0

        def write(fh):
            nonlocal size
            with tarfile.open(fileobj=fh, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for s in samples:
                    meta = {k: _json_safe(v) for k, v in s.items() if k not in _TAR_EXCLUDED}
                    meta.update({k: v for k, v in (s.get(R.EXTRA) or {}).items()})
                    # WebDataset's layout: members named {key}.{ext}, grouped by key, in key order.
                    members = {
                        s[R.IMAGE_FORMAT]: load_image(s),
                        "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                        "txt": (s.get(R.CAPTION) or "").encode("utf-8"),
                    }
                    if s.get(R.CAPTION_TOKENS) is not None:
                        members["tokens"] = json.dumps(list(s[R.CAPTION_TOKENS])).encode("ascii")
                    for ext in sorted(members):
                        _add_member(tar, f"{s[R.UID]}.{ext}", members[ext])
            size = fh.tell()

        _atomic_write(path, write)
        return size


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o444
    info.uname = info.gname = "paircurate"
    tar.addfile(info, io.BytesIO(data))


def _removal_reject(sample: dict, removal: dict) -> dict:
    row = make_reject(sample, Stage.DEDUP, Reason(removal[R.REASON]), f"{removal[R.REASON]} of {removal[R.DUPLICATE_OF]} (similarity {removal[R.SIMILARITY]:.4f})")
    row[R.DUPLICATE_OF] = removal[R.DUPLICATE_OF]
    row[R.SIMILARITY] = removal[R.SIMILARITY]
    return row


class _WriteShardFn(beam.DoFn):
    def __init__(self, out_dir: str, save_cols: tuple[str, ...]) -> None:
        self._out = out_dir
        self._save_cols = save_cols

    def setup(self) -> None:
        self._writer = ShardWriter(self._out, self._save_cols)
        self._shards = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "write.shards")
        self._dedup = StageCounters(Stage.DEDUP)

    def process(self, item):
        shard, grouped = item
        removals = list(grouped["removals"])
        stats = self._writer.write(shard, grouped["kept"], grouped["rejected"], removals)
        for removal in removals:
            self._dedup.rejected(removal[R.REASON])
        self._shards.inc()
        yield stats


class WriteShards(beam.PTransform):
    """(kept samples, rejects, dedup removals) -> files per shard; outputs each shard's stats dict."""

    def __init__(self, out_dir: str, save_cols: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._out = out_dir
        self._save_cols = save_cols

    def expand(self, inputs):
        kept, rejected, removals = inputs
        keyed_kept = kept | "KeyKeptByShard" >> beam.Map(lambda r: (r[R.SHARD], r))
        keyed_rejected = rejected | "KeyRejectsByShard" >> beam.Map(lambda r: (r[R.SHARD], r))
        keyed_removals = removals | "KeyRemovalsByShard" >> beam.Map(lambda r: (r[R.SHARD], r))
        return (
            {"kept": keyed_kept, "rejected": keyed_rejected, "removals": keyed_removals}
            | "GroupByShard" >> beam.CoGroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self._out, self._save_cols))
        )


FUNNEL_STAGES = [s.value for s in Stage]
