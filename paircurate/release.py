"""The folder-level files every run (and every ``paircurate remove``) ends with.

    stats.json        funnel + per-host failures + blocklist counts + retry and removal history
    report.html       (unless the run was asked for none)
    datasheet.md      Datasheets for Datasets, filled in from the above
    shardindex.json   wids shard list

All of it is computed from the shards on disk, so it describes the folder
as it is, whatever mix of runs, resumes, retries and removals wrote it.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone

from paircurate import storage
from paircurate.pipeline.ledger import blocklist_counts, host_stats
from paircurate.storage.layout import OutputLayout


def utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with storage.open_read(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clip_weights_file(clip: dict) -> str | None:
    """The checkpoint file CLIP scoring loaded, when it is one on disk (the bundled model, or a path); else None."""
    if not clip.get("enabled"):
        return None
    pretrained = clip.get("pretrained") or ""
    from paircurate.embeddings.clip import TINY_CHECKPOINT_PATH, TINY_MODEL  # CLIP ran: torch is loaded already

    if pretrained == TINY_MODEL:
        return str(TINY_CHECKPOINT_PATH)
    return pretrained if os.path.isfile(pretrained) else None


def read_history(out_dir: str) -> dict:
    out = OutputLayout(out_dir)
    return out.read_json(out.history) or {"retries": [], "removals": []}


def append_history(out_dir: str, kind: str, entry: dict) -> None:
    out = OutputLayout(out_dir)
    history = read_history(out_dir)
    history.setdefault(kind, []).append(entry)
    out.write_json(out.history, history)


def finish_folder(out_dir: str, stats: dict, report: bool = True, blocklist_entries: dict | None = None) -> dict:
    """Add the folder-level facts to ``stats``, then write stats.json, report.html, datasheet.md and shardindex.json."""
    from paircurate.datasheet import write_datasheet
    from paircurate.shardindex import write_shard_index

    for item in stats.get("inputs", []):
        if "sha256" not in item and (storage.is_remote(item["path"]) or os.path.isfile(item["path"])):
            item["sha256"] = file_sha256(item["path"])
    weights = clip_weights_file(stats.get("config", {}).get("clip") or {})
    if weights is not None and "clip_weights_sha256" not in stats:
        stats["clip_weights_sha256"] = file_sha256(weights)
    stats["hosts"] = host_stats(out_dir)
    lists = list((stats.get("config", {}).get("blocklist") or {}).get("paths", []))
    counts = blocklist_counts(out_dir, lists)
    for name, entries in (blocklist_entries or {}).items():
        counts.setdefault(name, {"rows": 0, "by_kind": {}})["entries"] = entries
    stats["blocklists"] = counts
    stats.update(read_history(out_dir))
    out = OutputLayout(out_dir)
    out.write_json(out.run_stats, stats)
    if report:
        from paircurate.report import write_report  # matplotlib only when a report is wanted

        write_report(out_dir)
    write_datasheet(out_dir, stats)
    write_shard_index(out_dir)
    return stats
