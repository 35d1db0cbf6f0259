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
"""

from __future__ import annotations

import os
import pickle
import shutil
import uuid
from collections import OrderedDict

import apache_beam as beam
from paircurate.pipeline.stage import REJECTED, IsolatedDoFn, StageOutputs
from paircurate.schemas import records as R
from paircurate.schemas.outcomes import Stage

SPOOL_DIR = "_spool"
_MAX_OPEN_FILES = 64  # a bundle may span thousands of shards; stay far below the fd limit


def shard_spool_dir(out_dir: str, shard: int) -> str:
    return os.path.join(out_dir, SPOOL_DIR, f"{shard:05d}")


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
        pointer = (record[R.SOURCE_FILE], record[R.SOURCE_ROW], record[R.UID], fh.name, fh.tell(), len(data))
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


def is_pointer(item) -> bool:
    return isinstance(item, tuple)


def input_position(item) -> tuple[str, int]:
    """(source file, source row) of a pointer or a sample: the order samples are written in."""
    return (item[0], item[1]) if is_pointer(item) else (item[R.SOURCE_FILE], item[R.SOURCE_ROW])


def load_sample(item) -> dict:
    """The sample a pointer stands for (a sample dict is returned as is)."""
    if not is_pointer(item):
        return item
    _, _, uid, path, offset, length = item
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise OSError(f"{path}: spooled sample {uid} is truncated ({len(data)} of {length} bytes)")
    return pickle.loads(data)  # noqa: S301 - our own file, written by this run


def remove_shard_spool(out_dir: str, shard: int) -> None:
    shutil.rmtree(shard_spool_dir(out_dir, shard), ignore_errors=True)


class _SpoolFn(IsolatedDoFn):
    STAGE = Stage.WRITE

    def __init__(self, out_dir: str) -> None:
        self._out = out_dir

    def start_bundle(self) -> None:
        self._spool = SampleSpool(self._out)

    def process_record(self, record: dict):
        yield record[R.SHARD], self._spool.put(record)

    def finish_bundle(self) -> None:
        # The bundle's outputs count only once it finishes, and the writer runs
        # after a shuffle, so every file is complete before it is read.
        self._spool.close()


class SpoolSamples(beam.PTransform):
    """Finished samples -> (shard, pointer to where the sample waits on disk); a sample that cannot be spooled is rejected."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self._out = out_dir

    def expand(self, records):
        out = records | "Spool" >> beam.ParDo(_SpoolFn(self._out)).with_outputs(REJECTED, main="pointers")
        return StageOutputs(out.pointers, out[REJECTED])
