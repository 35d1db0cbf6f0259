"""Park finished samples on disk between the last per-record stage and the shard writer.

Grouping samples by shard is a shuffle: on the in-process runner it holds
every grouped element in memory until the writer runs, on a cluster it moves
them over the network. So only a pointer takes that path (uid, shard, input
row and where the sample waits: ~150 bytes); the whole sample, metadata,
embeddings and image bytes, waits on disk and the writer streams it back one
at a time. Memory then does not grow with the input (bench/README.md).

Each spooling DoFn appends to its own files, one per shard it sees, under
``OUT/_spool/<shard>/``, and a pointer carries ``(file, offset, length)``.
Appending instead of a file per image matters: creating a file costs
0.1-1 ms on common filesystems (measured on this project's machine), as much
as decoding the image. A retried bundle appends to a file of its own, so what
an earlier attempt wrote is never overwritten, only left unreferenced; the
writer removes a shard's spool folder once the shard is complete.
"""

from __future__ import annotations

import os
import pickle
import shutil
import uuid
from collections import OrderedDict

import apache_beam as beam

from paircurate.schemas import records as R

SPOOL_DIR = "_spool"
_MAX_OPEN_FILES = 64  # a bundle may span thousands of shards; stay far below the fd limit


def shard_spool_dir(out_dir: str, shard: int) -> str:
    return os.path.join(out_dir, SPOOL_DIR, f"{shard:05d}")


# What travels through the shuffle to the writer: enough to group, order and match dedup removals.
POINTER_FIELDS = (R.UID, R.SHARD, R.SOURCE_FILE, R.SOURCE_ROW)


class SampleSpool:
    """Appends whole samples to per-shard files that only this instance writes.

        spool = SampleSpool(out_dir)
        pointer = spool.put(sample)     # POINTER_FIELDS + R.SPOOL: (file, offset, length)
        spool.close()                   # before anyone reads: flushes every file
        load_sample(pointer) == sample
    """

    def __init__(self, out_dir: str) -> None:
        self._out = out_dir
        self._name = uuid.uuid4().hex
        self._files: OrderedDict[int, object] = OrderedDict()

    def put(self, record: dict) -> dict:
        shard = record[R.SHARD]
        fh = self._files.pop(shard, None) or self._open(shard)
        self._files[shard] = fh  # most recently used last
        # Pickle: the writer reads back the very dict (bytes, arrays, None) it would have received.
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        pointer = {k: record[k] for k in POINTER_FIELDS}
        pointer[R.SPOOL] = (fh.name, fh.tell(), len(data))
        fh.write(data)
        return pointer

    def _open(self, shard: int):
        if len(self._files) >= _MAX_OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        folder = shard_spool_dir(self._out, shard)
        os.makedirs(folder, exist_ok=True)
        # Append mode: a file closed for the fd limit and reopened keeps its earlier offsets valid.
        return open(os.path.join(folder, f"{self._name}.bin"), "ab")

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()


def load_sample(pointer: dict) -> dict:
    """The sample a pointer stands for (a record that is not a pointer is returned as is)."""
    if R.SPOOL not in pointer:
        return pointer
    path, offset, length = pointer[R.SPOOL]
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise OSError(f"{path}: spooled sample {pointer.get(R.UID)} is truncated ({len(data)} of {length} bytes)")
    return pickle.loads(data)  # noqa: S301 - our own file, written by this run


def remove_shard_spool(out_dir: str, shard: int) -> None:
    shutil.rmtree(shard_spool_dir(out_dir, shard), ignore_errors=True)


class _SpoolFn(beam.DoFn):
    def __init__(self, out_dir: str) -> None:
        self._out = out_dir

    def start_bundle(self) -> None:
        self._spool = SampleSpool(self._out)

    def process(self, record: dict):
        yield self._spool.put(record)

    def finish_bundle(self) -> None:
        # The bundle's outputs count only once it finishes, and the writer runs
        # after a shuffle, so every file is complete before it is read.
        self._spool.close()


class SpoolSamples(beam.PTransform):
    """Finished samples -> pointers to where they wait on disk."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self._out = out_dir

    def expand(self, records):
        return records | "Spool" >> beam.ParDo(_SpoolFn(self._out))
