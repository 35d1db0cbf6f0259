"""``OUT/shardindex.json``: the shard list in webdataset's ``wids`` format, so training code reads it without opening a tar.

    {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "out",
     "shardlist": [{"url": "00000.tar", "nsamples": 9312, "filesize": 301989888}, ...]}

URLs are relative to the index file, so the folder can be moved or uploaded
as a whole; ``wids.ShardListDataset("OUT/shardindex.json")`` resolves them.
Sample counts come from each shard's Parquet footer (one row per sample in the tar).
"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq

from paircurate import storage
from paircurate.storage.layout import OutputLayout, sibling


def build_shard_index(out_dir: str) -> dict:
    out = OutputLayout(out_dir)
    shardlist = []
    for tar in out.shard_files("tar"):
        with storage.open_read(sibling(tar, "parquet")) as fh:
            nsamples = pq.read_metadata(fh).num_rows
        shardlist.append({
            "url": tar.rsplit("/", 1)[-1] if out.is_remote() else os.path.basename(tar),
            "nsamples": nsamples,
            "filesize": storage.size(tar),
        })
    name = out_dir.rstrip("/").rsplit("/", 1)[-1] if out.is_remote() else os.path.basename(os.path.abspath(out_dir))
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": shardlist,
    }


def write_shard_index(out_dir: str) -> str:
    out = OutputLayout(out_dir)
    storage.write_bytes(out.shard_index, json.dumps(build_shard_index(out_dir), indent=2).encode())
    return out.shard_index
