"""Park finished samples on disk between the last per-record stage and the shard writer.

Grouping samples by shard is a shuffle: on the in-process runner it holds
every grouped element in memory until the writer runs, on a cluster it moves
them over the network. So only a pointer takes that path (input row, uid and
where the sample waits, as a plain tuple); the whole sample, metadata,
embeddings and image bytes, waits on disk and the writer streams it back one
at a time. Memory then does not grow with the input (bench/README.md).

Each spooling DoFn appends to its own files, one per shard it sees, under
``OUT/_spool/<shard>/``, and a pointer carries ``(file, offset, length)``.
Appending instead of a file per image matters: creating a file costs
0.1-1 ms on common filesystems (measured on this project's machine), as much
as decoding the image. A retried bundle appends to a file of its own, so what
an earlier attempt wrote is never overwritten, only left unreferenced; the
writer removes a shard's spool folder once the shard is complete.

When the spool folder is on an object store (a cluster without a shared
disk parks samples in the output store, never on a worker's local path),
nothing can be appended: each spooling DoFn buffers a shard's samples in
memory and uploads them as one batch object of up to ``_BATCH_BYTES`` with a
single PUT; the pointer's ``(object, offset, length)`` is read back with one
ranged GET. ``spool = "shuffle"`` skips the spool: whole samples travel
through the shuffle (bench/object_store.py measures both).
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections import OrderedDict

import apache_beam as beam
from paircurate import storage
from paircurate.pipeline.stage import REJECTED, IsolatedDoFn, StageOutputs
from paircurate.schemas import records as R
from paircurate.schemas.outcomes import Stage
from paircurate.storage.layout import shard_name

_MAX_OPEN_FILES = 64  # a bundle may span thousands of shards; stay far below the fd limit
# One object per (spooling DoFn, shard) holds up to this much: a PUT per ~8 MiB
# instead of one per sample, and a bundle spanning many shards buffers at most
# _BUFFERED_BYTES before it uploads the biggest batches.
_BATCH_BYTES = 8 << 20
_BUFFERED_BYTES = 128 << 20
_PREFETCH = 32  # samples read back per round of concurrent ranged GETs (a few MiB)


def shard_spool_dir(spool_dir: str, shard: int) -> str:
    return storage.join(spool_dir, shard_name(shard))


class SampleSpool:
    """Appends whole samples to per-shard files that only this instance writes.

        spool = SampleSpool(out_dir)
        pointer = spool.put(sample)     # (source_file, source_row, uid, file, offset, length)
        spool.close()                   # before anyone reads: flushes every file
        load_sample(pointer) == sample

    A pointer is a plain tuple, not a dict: the in-process runner holds every
    shuffled pointer as a Python object until its shard is written, and a
    dict with its field names costs about twice as much.
    """

    def __init__(self, spool_dir: str) -> None:
        self._dir = spool_dir
        self._name = uuid.uuid4().hex
        self._files: OrderedDict[int, object] = OrderedDict()

    def put(self, record: dict) -> tuple:
        shard = record[R.SHARD]
        fh = self._files.pop(shard, None) or self._open(shard)
        self._files[shard] = fh  # most recently used last
        # Pickle: the writer reads back the very dict (bytes, arrays, None) it would have received.
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        pointer = (record[R.SOURCE_FILE], record[R.SOURCE_ROW], record[R.UID], fh.name, fh.tell(), len(data))
        fh.write(data)
        return pointer

    def _open(self, shard: int):
        if len(self._files) >= _MAX_OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        folder = shard_spool_dir(self._dir, shard)
        os.makedirs(folder, exist_ok=True)
        # Append mode: a file closed for the fd limit and reopened keeps its earlier offsets valid.
        return open(os.path.join(folder, f"{self._name}.bin"), "ab")

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()


class ObjectSpool(SampleSpool):
    """The spool on an object store: per-shard batches uploaded whole, read back with ranged GETs."""

    def __init__(self, spool_dir: str) -> None:
        super().__init__(spool_dir)
        self._batches: dict[int, tuple[str, list[bytes], int]] = {}  # shard -> (object URL, parts, bytes)
        self._buffered = 0
        self._count = 0

    def put(self, record: dict) -> tuple:
        shard = record[R.SHARD]
        if shard not in self._batches:
            self._count += 1
            self._batches[shard] = (storage.join(shard_spool_dir(self._dir, shard), f"{self._name}-{self._count}.bin"), [], 0)
        url, parts, used = self._batches[shard]
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        pointer = (record[R.SOURCE_FILE], record[R.SOURCE_ROW], record[R.UID], url, used, len(data))
        parts.append(data)
        self._batches[shard] = (url, parts, used + len(data))
        self._buffered += len(data)
        if used + len(data) >= _BATCH_BYTES:
            self._upload(shard)
        while self._buffered > _BUFFERED_BYTES:
            self._upload(max(self._batches, key=lambda s: self._batches[s][2]))
        return pointer

    def _upload(self, shard: int) -> None:
        url, parts, used = self._batches.pop(shard)
        storage.write_bytes(url, b"".join(parts))
        self._buffered -= used

    def close(self) -> None:
        for shard in list(self._batches):
            self._upload(shard)


def open_spool(spool_dir: str) -> SampleSpool:
    """Appending files on a disk, batch objects on a store."""
    return ObjectSpool(spool_dir) if storage.is_remote(spool_dir) else SampleSpool(spool_dir)


def is_pointer(item) -> bool:
    return isinstance(item, tuple)


def input_position(item) -> tuple[str, int]:
    """(source file, source row) of a pointer or a sample: the order samples are written in."""
    return (item[0], item[1]) if is_pointer(item) else (item[R.SOURCE_FILE], item[R.SOURCE_ROW])


def load_sample(item, data: bytes | None = None) -> dict:
    """The sample a pointer stands for (a sample dict is returned as is); ``data``: its bytes, if already read."""
    if not is_pointer(item):
        return item
    _, _, uid, path, offset, length = item
    if data is None:
        data = storage.read_range(path, offset, length)
    if len(data) != length:
        raise OSError(f"{path}: spooled sample {uid} is truncated ({len(data)} of {length} bytes)")
    return pickle.loads(data)  # noqa: S301 - our own file, written by this run


def prefetched(items, prefetch: int = _PREFETCH):
    """``(item, its spooled bytes or None)`` in order, the bytes of ``prefetch`` pointers read at a time.

    On a store each group is one round of concurrent ranged GETs instead of
    one GET after another: latency, not bandwidth, bounds a sequential reader.
    None for a sample dict, and for every pointer of a group whose read
    failed: ``load_sample`` then reads that one alone and raises its own error.
    """
    items = list(items)
    for start in range(0, len(items), prefetch):
        group = items[start : start + prefetch]
        pointers = [item for item in group if is_pointer(item)]
        try:
            fetched = dict(zip(map(id, pointers), storage.read_ranges([(p[3], p[4], p[5]) for p in pointers]), strict=True))
        except Exception:  # noqa: BLE001 - each sample is then read, and fails, on its own
            fetched = {}
        for item in group:
            yield item, fetched.get(id(item))


def remove_shard_spool(spool_dir: str, shard: int) -> None:
    storage.remove(shard_spool_dir(spool_dir, shard), recursive=True)


class _SpoolFn(IsolatedDoFn):
    STAGE = Stage.WRITE

    def __init__(self, spool_dir: str) -> None:
        self._dir = spool_dir

    def start_bundle(self) -> None:
        self._spool = open_spool(self._dir)

    def process_record(self, record: dict):
        yield record[R.SHARD], self._spool.put(record)

    def finish_bundle(self) -> None:
        # The bundle's outputs count only once it finishes, and the writer runs
        # after a shuffle, so every file is complete before it is read.
        self._spool.close()


class SpoolSamples(beam.PTransform):
    """Finished samples -> (shard, pointer to where the sample waits), and the samples that could not be spooled.

    With no spool folder the pointer is the sample itself: it travels through the shuffle.
    """

    def __init__(self, spool_dir: str | None) -> None:
        super().__init__()
        self._dir = spool_dir

    def expand(self, records):
        if self._dir is None:  # the samples themselves travel through the shuffle
            keyed = records | "KeyByShard" >> beam.Map(lambda r: (r[R.SHARD], r))
            return StageOutputs(keyed, records.pipeline | "NoSpoolRejects" >> beam.Create([]))
        out = records | "Spool" >> beam.ParDo(_SpoolFn(self._dir)).with_outputs(REJECTED, main="pointers")
        return StageOutputs(out.pointers, out[REJECTED])
