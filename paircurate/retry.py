"""``paircurate run ... --retry-failed``: re-attempt exactly the rows of an output folder that failed for transient reasons.

    paircurate run pairs.parquet -o out                    # first attempt
    paircurate run pairs.parquet -o out --retry-failed     # rows rejected as timeout, connection_error, http_5xx, http_429

The rows come from the folder's own ledger (``rejected/*.parquet`` rows whose
reason is in ``runner.retry_reasons``) and are read again from the input files
by position, so they get exactly their first-run treatment. They go into new
shards numbered after the folder's last one; the shards already written are
dedup's pinned keepers, so nothing written before is contradicted. When the
retry's shards are complete, the retried rows' old reject rows are dropped
from their shards (and those shards' stats recounted), and every reject row of
the new shards gets ``attempts`` = its earlier attempts + 1. Over the whole
folder every input row stays exactly once in kept + rejected.

A retry is planned in ``OUT/_retry.json`` before anything runs; a retry that
is killed is finished by running the same command again (the plan is reused,
finished shards are kept), and a plain run refuses the folder until then.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from paircurate import storage
from paircurate.inspection import read_schema, read_table
from paircurate.release import append_history, utc
from paircurate.schemas import records as R
from paircurate.schemas.config import ConfigError
from paircurate.storage.layout import OutputLayout, parse_shard_file



@dataclass(frozen=True)
class RetryPlan:
    started: str
    reasons: tuple[str, ...]
    rows: dict[int, int]  # global input row -> the new shard it is written to
    attempts: dict[int, int]  # global input row -> attempts before this one
    by_reason: dict[str, int]  # rows retried per reason they had failed with

    def to_json(self) -> dict:
        return {
            "started": self.started,
            "reasons": list(self.reasons),
            "rows": [[g, self.rows[g], self.attempts[g]] for g in sorted(self.rows)],
            "by_reason": self.by_reason,
        }

    @classmethod
    def from_json(cls, data: dict) -> "RetryPlan":
        return cls(
            started=data["started"],
            reasons=tuple(data["reasons"]),
            rows={g: s for g, s, _ in data["rows"]},
            attempts={g: a for g, _, a in data["rows"]},
            by_reason=dict(data["by_reason"]),
        )


def check_retry_folder(out_dir: str, cfg, overwrite: bool) -> None:
    """Before the output folder is touched: --retry-failed needs a folder with a run in it."""
    if not cfg.runner.retry_failed:
        return
    if overwrite:
        raise ConfigError("--retry-failed retries into the existing output folder; it cannot be combined with --overwrite")
    out = OutputLayout(out_dir)
    if not storage.exists(out.run_stats) and not storage.exists(out.retry_plan):
        raise ConfigError(f"--retry-failed needs a finished run in {out_dir}, and there is none; run once without --retry-failed first")


def prepare_retry(out_dir: str, files, cfg, work) -> RetryPlan | None:
    """The retry to run (None without ``--retry-failed``); ConfigError for a folder that cannot be retried."""
    out = OutputLayout(out_dir)
    path = out.retry_plan
    if not cfg.runner.retry_failed:
        if storage.exists(path):
            raise ConfigError(f"{out_dir} holds an unfinished --retry-failed ({path}); run the same command with --retry-failed to finish it")
        return None
    if cfg.clip.enabled and cfg.clip.top_percent is not None:
        raise ConfigError("--retry-failed cannot use --clip-top-percent (a retry scores only the retried rows); use --clip-threshold")
    previous = out.read_json(path)
    if previous is not None:
        return RetryPlan.from_json(previous)  # a killed retry: finish the same rows into the same shards
    if work.pending_rows or not storage.exists(out.run_stats):
        raise ConfigError(
            f"--retry-failed needs a finished run in {out_dir}, and {work.pending_rows or work.input_rows} input rows are not written there yet; "
            "run once without --retry-failed first"
        )
    plan = plan_retry(out_dir, files, cfg.runner.retry_reasons, cfg.output.shard_size)
    if plan.rows:
        storage.write_bytes(path, json.dumps(plan.to_json()).encode())
    return plan


def plan_retry(out_dir: str, files, reasons: tuple[str, ...], shard_size: int) -> RetryPlan:
    """Select the ledger's rows rejected for ``reasons``; give them new shards after the folder's last one."""
    first_row = {f.path: f.first_row for f in files}
    attempts: dict[int, int] = {}
    by_reason: Counter = Counter()
    for path in OutputLayout(out_dir).reject_files():
        names = read_schema(path).names
        columns = [R.SOURCE_FILE, R.SOURCE_ROW, R.REASON] + ([R.ATTEMPTS] if R.ATTEMPTS in names else [])
        table = read_table(path, columns=columns)
        table = table.filter(pc.is_in(table.column(R.REASON), pa.array(list(reasons))))
        for row in table.to_pylist():
            attempts[first_row[row[R.SOURCE_FILE]] + row[R.SOURCE_ROW]] = row.get(R.ATTEMPTS) or 1
            by_reason[row[R.REASON]] += 1
    next_shard = max(OutputLayout(out_dir).completed_shards(), default=-1) + 1
    rows = {g: next_shard + i // shard_size for i, g in enumerate(sorted(attempts))}
    return RetryPlan(utc(time.time()), tuple(reasons), rows, attempts, dict(sorted(by_reason.items())))


def finish_retry(out_dir: str, plan: RetryPlan) -> None:
    """Move the retried rows' ledger entries to the new shards, count attempts, record the retry. Safe to run twice."""
    out = OutputLayout(out_dir)
    new_shards = set(plan.rows.values())
    first_rows = _first_rows(out_dir)
    recovered = still_failing = 0
    for shard in sorted(new_shards):
        still_failing += _set_attempts(out_dir, shard, plan, first_rows)
        recovered += out.read_json(out.shard_stats(shard))["kept"]
    for path in out.reject_files():
        shard = parse_shard_file(path.rsplit("/", 1)[-1])[0]
        if shard not in new_shards:
            _drop_retried(out_dir, shard, path, plan, first_rows)
    append_history(out_dir, "retries", {
        "started": plan.started,
        "finished": utc(time.time()),
        "reasons": list(plan.reasons),
        "retried": len(plan.rows),
        "retried_by_reason": plan.by_reason,
        "recovered": recovered,
        "still_rejected": still_failing,
        "shards": sorted(new_shards),
    })
    storage.remove(out.retry_plan)


def _global_rows(table: pa.Table, files_first_row: dict[str, int]) -> list[int]:
    return [files_first_row[f] + r for f, r in zip(table.column(R.SOURCE_FILE).to_pylist(), table.column(R.SOURCE_ROW).to_pylist(), strict=True)]


def _first_rows(out_dir: str) -> dict[str, int]:
    out = OutputLayout(out_dir)
    plan = out.read_json(out.plan)
    first, offset = {}, 0
    for path, rows in plan["files"]:
        first[path] = offset
        offset += rows
    return first


def _set_attempts(out_dir: str, shard: int, plan: RetryPlan, first_rows: dict[str, int]) -> int:
    """Every reject row of a retry shard: attempts = earlier attempts + 1. Returns the shard's reject count."""
    path = OutputLayout(out_dir).rejected(shard)
    table = read_table(path)
    attempts = pa.array([plan.attempts[g] + 1 for g in _global_rows(table, first_rows)], pa.int32())
    table = table.set_column(table.schema.get_field_index(R.ATTEMPTS), table.schema.field(R.ATTEMPTS), attempts)
    with storage.atomic_writer(path) as fh:
        pq.write_table(table, fh)
    return table.num_rows


def _drop_retried(out_dir: str, shard: int, path: str, plan: RetryPlan, first_rows: dict[str, int]) -> None:
    """Remove the rows this retry re-attempted from an earlier shard's rejects, and recount its stats."""
    table = read_table(path)
    flags = [g in plan.rows for g in _global_rows(table, first_rows)]
    if not any(flags):
        return
    retried = pa.array(flags, pa.bool_())
    table = table.filter(pc.invert(retried))
    with storage.atomic_writer(path) as fh:
        pq.write_table(table, fh)
    out = OutputLayout(out_dir)
    stats = out.read_json(out.shard_stats(shard))
    by_stage: dict[str, Counter] = defaultdict(Counter)
    for stage, reason in zip(table.column(R.STAGE).to_pylist(), table.column(R.REASON).to_pylist(), strict=True):
        by_stage[stage][reason] += 1
    stats["rejected"] = {stage: dict(sorted(c.items())) for stage, c in sorted(by_stage.items())}
    stats["input_rows"] = stats["kept"] + table.num_rows
    out.write_json(out.shard_stats(shard), stats)
