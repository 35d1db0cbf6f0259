"""``paircurate remove OUT --blocklist FILE... -o OUT2``: a new version of a finished dataset without what the lists name.

    >>> from paircurate.remove import remove_blocklisted
    >>> remove_blocklisted("out", ["takedowns.txt"], "out-v2")["rows"]
    3

Only the shards holding a match are rewritten (tar without the samples'
members, Parquet and embedding rows dropped, the rows added to the shard's
``rejected/`` Parquet as ``blocklisted`` with no URL or caption, the shard's
stats updated); every other file of OUT is carried over byte for byte (a hard
link where OUT2 is on the same file system: every later write in paircurate
replaces a file rather than changing it). stats.json, report.html,
datasheet.md and shardindex.json are then recomputed from the new folder, and
the removal is recorded in its history. OUT itself is never changed.

Matching uses what the shards store: ``url`` for url/prefix/domain entries,
``sha256`` and ``md5`` of the bytes as downloaded, and ``phash`` (computed from
the stored image when the run did not keep it).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from paircurate.filters.blocklist import BlocklistMatch, Blocklists, load_blocklists, reject_row
from paircurate import storage
from paircurate.pipeline.stats import build_funnel, read_shard_stats
from paircurate.release import append_history, finish_folder, utc
from paircurate.schemas import records as R
from paircurate.schemas.config import UserError
from paircurate.storage.layout import RUN_STATS_FILE, OutputLayout, embeddings_beside, parse_shard_file, sibling

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def remove_blocklisted(out_dir: str, lists: list[str], new_dir: str) -> dict:
    """Write ``new_dir``: ``out_dir`` without the samples ``lists`` name. Returns what was removed, per list."""
    _check_folders(out_dir, new_dir)
    blocklists = load_blocklists(lists)
    parquets = OutputLayout(out_dir).shard_files("parquet")
    if blocklists.needs_md5 and parquets and R.MD5 not in pq.read_schema(parquets[0]).names:
        raise UserError(
            f"{out_dir} stores no md5 column (written by an older paircurate), so md5 entries cannot be matched; "
            "use sha256 entries, or re-run the crawl"
        )
    matches = {path: _find_matches(path, blocklists) for path in parquets}

    shutil.copytree(out_dir, new_dir, copy_function=_link_or_copy)
    removed_by_list: dict[str, int] = {}
    for path, found in matches.items():
        if not found:
            continue
        shard = parse_shard_file(os.path.basename(path))[0]
        _rewrite_shard(new_dir, shard, found)
        for match in found.values():
            removed_by_list[match.list_name] = removed_by_list.get(match.list_name, 0) + 1

    stats = OutputLayout(out_dir).load_run_stats()
    shard_stats = read_shard_stats(new_dir)
    stats["output"] = os.path.abspath(new_dir)
    stats["shards"] = len(shard_stats)
    stats["funnel"] = build_funnel(shard_stats, stats["funnel"]["input_rows"])
    entry = {"when": utc(time.time()), "from": os.path.abspath(out_dir), "lists": list(lists), "rows": sum(removed_by_list.values()), "by_list": removed_by_list}
    append_history(new_dir, "removals", entry)
    finish_folder(new_dir, stats, report=os.path.exists(OutputLayout(out_dir).report), blocklist_entries=blocklists.entry_counts)
    return entry


def _check_folders(out_dir: str, new_dir: str) -> None:
    for folder in (out_dir, new_dir):
        if storage.is_remote(folder):  # the new version hard-links the old one's files
            raise UserError(f"paircurate remove works on local folders; {folder} is on a store: copy it to disk first")
    if not os.path.isfile(OutputLayout(out_dir).run_stats):
        raise UserError(f"{out_dir} holds no finished paircurate run (no {RUN_STATS_FILE}); finish or resume the run first")
    if os.path.abspath(new_dir) == os.path.abspath(out_dir):
        raise UserError(f"-o must name a new folder, not {out_dir} itself: the old version stays as it was")
    if os.path.exists(new_dir) and (not os.path.isdir(new_dir) or os.listdir(new_dir)):
        raise UserError(f"{new_dir} already exists and is not empty; give -o a new folder")
    if os.path.isdir(new_dir):
        os.rmdir(new_dir)  # copytree creates it


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _find_matches(parquet: str, blocklists: Blocklists) -> dict[str, BlocklistMatch]:
    """uid -> the match, for the samples of one shard that a list names."""
    names = pq.read_schema(parquet).names
    columns = [c for c in (R.UID, R.URL, R.SHA256, R.MD5, R.PHASH) if c in names]
    rows = pq.read_table(parquet, columns=columns).to_pylist()
    found: dict[str, BlocklistMatch] = {}
    need_phash = []
    for row in rows:
        match = blocklists.match_url(row.get(R.URL)) or blocklists.match_digests(row.get(R.SHA256), row.get(R.MD5))
        if match is None and blocklists.needs_phash:
            if row.get(R.PHASH):
                match = blocklists.match_phash(row[R.PHASH])
            else:
                need_phash.append(row[R.UID])
        if match is not None:
            found[row[R.UID]] = match
    if need_phash:
        found.update(_phash_matches(sibling(parquet, "tar"), set(need_phash), blocklists))
    return found


def _phash_matches(tar_path: str, uids: set[str], blocklists: Blocklists) -> dict[str, BlocklistMatch]:
    from paircurate.dedup.perceptual import phash

    found = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if key in uids and ext.lower() in _IMAGE_EXTS:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                    match = blocklists.match_phash(phash(img.convert("RGB")))
                if match is not None:
                    found[key] = match
    return found


def _rewrite_shard(new_dir: str, shard: int, found: dict[str, BlocklistMatch]) -> None:
    out = OutputLayout(new_dir)
    table = pq.read_table(out.parquet(shard))
    keep = pc.invert(pc.is_in(table.column(R.UID), pa.array(sorted(found))))
    gone = table.filter(pc.invert(keep)).to_pylist()
    kept_table = table.filter(keep)

    tar_bytes = _rewrite_tar(out.tar(shard), set(found))
    with storage.atomic_writer(out.parquet(shard)) as fh:
        pq.write_table(kept_table, fh)
    mask = keep.to_numpy(zero_copy_only=False)
    for suffix in ("img", "txt"):
        npy = embeddings_beside(out.parquet(shard), suffix)
        if os.path.exists(npy):
            matrix = np.load(npy)[mask]
            with storage.atomic_writer(npy) as fh:
                np.save(fh, matrix)

    reject_path = out.rejected(shard)
    old_rejects = pq.read_table(reject_path)
    new_rows = [reject_row(row, found[row[R.UID]]) for row in gone]
    rejects = pa.concat_tables([old_rejects, R.to_table(new_rows, old_rejects.schema)])
    rejects = rejects.sort_by([(R.SOURCE_FILE, "ascending"), (R.SOURCE_ROW, "ascending")])
    with storage.atomic_writer(reject_path) as fh:
        pq.write_table(rejects, fh)

    stats = out.read_json(out.shard_stats(shard))
    stats["kept"] -= len(gone)
    stats["image_bytes"] -= sum(row.get(R.BYTE_SIZE) or 0 for row in gone)
    stats["tar_bytes"] = tar_bytes
    for row in new_rows:
        reasons = stats["rejected"].setdefault(row[R.STAGE], {})
        reasons[row[R.REASON]] = reasons.get(row[R.REASON], 0) + 1
    stats["rejected"] = {stage: dict(sorted(c.items())) for stage, c in sorted(stats["rejected"].items())}
    out.write_json(out.shard_stats(shard), stats)


def _rewrite_tar(path: str, uids: set[str]) -> int:
    """Copy the tar without the members of ``uids``; headers and bytes of the rest as they were."""
    with tarfile.open(path) as src, storage.atomic_writer(path) as fh:
        with tarfile.open(fileobj=fh, mode="w|", format=tarfile.PAX_FORMAT) as dst:
            for member in src:
                if member.name.partition(".")[0] in uids:
                    continue
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        return fh.tell()
