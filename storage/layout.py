"""The output folder's layout: every name in it, and every way of reading a finished folder back.

    OUT/
      00000.tar              {uid}.jpg {uid}.txt {uid}.json per kept sample (WebDataset)
      00000.parquet          one row per kept sample (schemas.records.sample_schema)
      00000.img.npy          CLIP image embeddings, float16, rows aligned with the Parquet (CLIP on)
      00000.txt.npy          CLIP text embeddings, likewise
      rejected/00000.parquet one row per rejected input row of the shard
      00000_stats.json       written last: its presence means the shard is complete
      stats.json             the run's funnel, config and versions (end of run)
      report.html            paircurate report
      datasheet.md           Datasheet for Datasets, filled in from the run
      shardindex.json        wids shard index
      _history.json          retries and removals of this folder
      _retry.json            the plan of an unfinished --retry-failed
      _paircurate_output.txt the marker: only a folder holding it (or _plan.json) is written into, cleaned or deleted
      _plan.json             inputs and shard size the folder was planned from (resume checks it)
      _clip_cutoff.json      the run-wide --clip-top-percent cutoff (until stats.json has it)
      _balance_counts.json   --balance-cap: samples per entry over the whole run (kept: a resume decides with them)
      _balance_stats.json    --balance-cap: entry counts before/after of this invocation (until stats.json has them)
      _spool/NNNNN/...       samples parked between the last stage and the shard writer (during a run)
      _progress/*.count      per-worker progress counts (during a run)

It is a contract between the writer and every reader of a release (resume,
dedup against an earlier run, inspect, report, verify-train, the user's own
loaders), like ``schemas.records``; it lives in ``storage/`` rather than
``schemas/`` because reading a folder back needs the filesystem layer, and
``schemas/`` imports nothing. Like Beam's ``filebasedsink`` it owns naming and
what "complete" means, in one place; ``pipeline.write`` owns how the bytes are
produced. All access goes through ``storage.filesystem``, so ``OUT`` may be a
local folder or an ``s3://``, ``gs://``, ``memory://`` prefix.

    >>> out = OutputLayout("s3://bucket/release")
    >>> out.tar(12)                     # 's3://bucket/release/00012.tar'
    >>> out.completed_shards()          # frozenset({0, 1, ...}): shards whose stats object exists
    >>> out.shard_files("parquet")      # complete shards' Parquet files, in shard order
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from paircurate import storage

STATS_SUFFIX = "_stats.json"
REJECTED_DIR = "rejected"
RUN_STATS_FILE = "stats.json"
REPORT_FILE = "report.html"
DATASHEET_FILE = "datasheet.md"
SHARD_INDEX_FILE = "shardindex.json"
HISTORY_FILE = "_history.json"  # retries and removals, kept across runs into the same folder
RETRY_FILE = "_retry.json"  # only while a --retry-failed is unfinished
PLAN_FILE = "_plan.json"
MARKER_FILE = "_paircurate_output.txt"
CUTOFF_FILE = "_clip_cutoff.json"
BALANCE_COUNTS_FILE = "_balance_counts.json"
BALANCE_STATS_FILE = "_balance_stats.json"
SPOOL_DIR = "_spool"
PROGRESS_DIR = "_progress"
SHARD_KINDS = ("tar", "parquet", "img.npy", "txt.npy")
_SHARD_FILE = re.compile(r"^(\d+)(?:\.(tar|parquet|img\.npy|txt\.npy)|(_stats\.json))$")


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def parse_shard_file(name: str) -> tuple[int, str] | None:
    """``'00012.tar'`` -> ``(12, 'tar')``, ``'00012_stats.json'`` -> ``(12, 'stats')``; None for other names."""
    m = _SHARD_FILE.match(name)
    if not m:
        return None
    return int(m.group(1)), m.group(2) or "stats"


def embeddings_beside(parquet_path: str, which: str = "img") -> str:
    """The embedding file (``which``: 'img' or 'txt') that sits beside a shard's Parquet file."""
    return sibling(parquet_path, f"{which}.npy")


def sibling(shard_path: str, kind: str) -> str:
    """The same shard's file of another kind: ``sibling('out/00003.tar', 'parquet') == 'out/00003.parquet'``."""
    folder, _, name = shard_path.rpartition("/")
    parsed = parse_shard_file(name)
    if parsed is None or kind not in SHARD_KINDS:
        raise ValueError(f"{shard_path} is not a shard file, or {kind!r} not a shard file kind")
    return f"{folder}/{shard_name(parsed[0])}.{kind}" if folder else f"{shard_name(parsed[0])}.{kind}"


@dataclass(frozen=True)
class OutputLayout:
    root: str

    # --- names -------------------------------------------------------------------------------------

    def path(self, *names: str) -> str:
        return storage.join(self.root, *names)

    def shard_file(self, shard: int, kind: str) -> str:
        if kind not in SHARD_KINDS:
            raise ValueError(f"unknown shard file kind {kind!r} (one of {SHARD_KINDS})")
        return self.path(f"{shard_name(shard)}.{kind}")

    def tar(self, shard: int) -> str:
        return self.shard_file(shard, "tar")

    def parquet(self, shard: int) -> str:
        return self.shard_file(shard, "parquet")

    def embeddings(self, shard: int, which: str) -> str:
        """``which``: 'img' or 'txt'."""
        return self.shard_file(shard, f"{which}.npy")

    def rejected(self, shard: int) -> str:
        return self.path(REJECTED_DIR, f"{shard_name(shard)}.parquet")

    def shard_stats(self, shard: int) -> str:
        return self.path(f"{shard_name(shard)}{STATS_SUFFIX}")

    @property
    def run_stats(self) -> str:
        return self.path(RUN_STATS_FILE)

    @property
    def report(self) -> str:
        return self.path(REPORT_FILE)

    @property
    def datasheet(self) -> str:
        return self.path(DATASHEET_FILE)

    @property
    def shard_index(self) -> str:
        return self.path(SHARD_INDEX_FILE)

    @property
    def history(self) -> str:
        return self.path(HISTORY_FILE)

    @property
    def retry_plan(self) -> str:
        return self.path(RETRY_FILE)

    @property
    def marker(self) -> str:
        return self.path(MARKER_FILE)

    @property
    def plan(self) -> str:
        return self.path(PLAN_FILE)

    @property
    def cutoff(self) -> str:
        return self.path(CUTOFF_FILE)

    @property
    def balance_counts(self) -> str:
        return self.path(BALANCE_COUNTS_FILE)

    @property
    def balance_stats(self) -> str:
        return self.path(BALANCE_STATS_FILE)

    @property
    def spool_dir(self) -> str:
        return self.path(SPOOL_DIR)

    @property
    def progress_dir(self) -> str:
        return self.path(PROGRESS_DIR)

    @property
    def run_files(self) -> tuple[str, ...]:
        """What one invocation leaves for itself only; an earlier invocation's are stale."""
        return (self.cutoff, self.balance_stats, self.progress_dir)

    # --- reading a folder back -----------------------------------------------------------------------

    def is_remote(self) -> bool:
        return storage.is_remote(self.root)

    def exists(self) -> bool:
        return storage.isdir(self.root)

    def shard_numbers(self) -> dict[str, set[int]]:
        """One listing of the top level: kind -> shard numbers present ('tar', 'parquet', ..., 'stats')."""
        found: dict[str, set[int]] = {}
        for name in storage.names(self.root):
            parsed = parse_shard_file(name)
            if parsed:
                found.setdefault(parsed[1], set()).add(parsed[0])
        return found

    def completed_shards(self) -> frozenset[int]:
        """Shards whose stats file exists: finished (in this run or an earlier one)."""
        return frozenset(self.shard_numbers().get("stats", ()))

    def shard_files(self, kind: str) -> list[str]:
        """``NNNNN.<kind>`` of the top level, in shard order (temporaries are never listed)."""
        return [self.shard_file(s, kind) for s in sorted(self.shard_numbers().get(kind, ()))]

    def reject_files(self) -> list[str]:
        numbers = sorted(int(n.split(".")[0]) for n in storage.names(self.path(REJECTED_DIR)) if re.match(r"^\d+\.parquet$", n))
        return [self.rejected(s) for s in numbers]

    def read_shard_stats(self) -> list[dict]:
        return [json.loads(storage.read_bytes(self.shard_stats(s))) for s in sorted(self.completed_shards())]

    def read_json(self, path: str) -> dict | None:
        """A JSON file of the folder (``self.plan``, ``self.cutoff``, ``self.run_stats``); None if absent."""
        if not storage.exists(path):
            return None
        return json.loads(storage.read_bytes(path))

    def write_json(self, path: str, value: dict) -> None:
        storage.write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())

    def load_run_stats(self) -> dict | None:
        return self.read_json(self.run_stats)
