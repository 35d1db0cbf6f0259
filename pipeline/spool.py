"""Park image bytes on disk between the download and the shard writer.

Grouping samples by shard is a shuffle: on the in-process runner it holds
every grouped element in memory, on a cluster it moves them over the network.
Only small records (metadata, embeddings) need to take that path; the encoded
image waits under ``OUT/_spool/<shard>/<uid>`` and the writer streams it into
the tar. A file per uid makes a retried bundle rewrite the same file with the
same bytes, so retries are harmless, and the writer removes a shard's spool
folder once the shard is complete.
"""

from __future__ import annotations

import os
import shutil
import uuid

import apache_beam as beam

from paircurate.schemas import records as R

SPOOL_DIR = "_spool"


def spool_path(out_dir: str, shard: int, uid: str) -> str:
    return os.path.join(out_dir, SPOOL_DIR, f"{shard:05d}", uid)


def spool_image(record: dict, out_dir: str) -> dict:
    """Write the record's bytes to its spool file; return the record without them."""
    path = spool_path(out_dir, record[R.SHARD], record[R.UID])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as fh:
        fh.write(record[R.IMAGE])
    os.replace(tmp, path)
    out = {k: v for k, v in record.items() if k != R.IMAGE}
    out[R.IMAGE_SPOOL] = path
    return out


def load_image(record: dict) -> bytes:
    if record.get(R.IMAGE) is not None:
        return record[R.IMAGE]
    with open(record[R.IMAGE_SPOOL], "rb") as fh:
        return fh.read()


def remove_shard_spool(out_dir: str, shard: int) -> None:
    shutil.rmtree(os.path.join(out_dir, SPOOL_DIR, f"{shard:05d}"), ignore_errors=True)


class SpoolImages(beam.PTransform):
    """Records with image bytes -> records pointing at spooled bytes."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self._out = out_dir

    def expand(self, records):
        out_dir = self._out
        return records | "Spool" >> beam.Map(spool_image, out_dir)
