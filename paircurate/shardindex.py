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

from paircurate.inspection import shard_files

SHARD_INDEX_FILE = "shardindex.json"


def build_shard_index(out_dir: str) -> dict:
    shardlist = []
    for tar in shard_files(out_dir, "tar"):
        parquet = tar[: -len(".tar")] + ".parquet"
        shardlist.append({
            "url": os.path.basename(tar),
            "nsamples": pq.read_metadata(parquet).num_rows,
            "filesize": os.path.getsize(tar),
        })
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": os.path.basename(os.path.abspath(out_dir)),
        "shardlist": shardlist,
    }


def write_shard_index(out_dir: str) -> str:
    path = os.path.join(out_dir, SHARD_INDEX_FILE)
    tmp = os.path.join(out_dir, f".{SHARD_INDEX_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(build_shard_index(out_dir), fh, indent=2)
    os.replace(tmp, path)
    return path
