"""The run's funnel: per-shard stats summed into ``stats.json`` and a console summary."""

from __future__ import annotations

import importlib.metadata
import platform
from collections import Counter, defaultdict

import pyarrow.parquet as pq
from paircurate import storage
from paircurate.pipeline.stage import internal_error_type
from paircurate.schemas import records as R
from paircurate.schemas.outcomes import Reason, Stage
from paircurate.storage.layout import REJECTED_DIR, OutputLayout

_TOP_TYPES = 5

_VERSIONED_PACKAGES = ("paircurate", "apache-beam", "pyarrow", "Pillow", "webdataset", "ftfy", "numpy", "urllib3", "torch", "open_clip_torch", "faiss-cpu")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def read_shard_stats(out_dir: str) -> list[dict]:
    return OutputLayout(out_dir).read_shard_stats()


def build_funnel(shard_stats: list[dict], input_rows: int) -> dict:
    """Counts per stage, in pipeline order: rows in, rows rejected per reason, rows out."""
    rejected: dict[str, Counter] = defaultdict(Counter)
    for s in shard_stats:
        for stage, reasons in s["rejected"].items():
            rejected[stage].update(reasons)
    stages = []
    remaining = input_rows
    for stage in Stage:
        reasons = rejected.get(stage.value, Counter())
        out = remaining - sum(reasons.values())
        stages.append({"stage": stage.value, "in": remaining, "rejected": dict(sorted(reasons.items())), "out": out})
        remaining = out
    reasons_total = Counter()
    for c in rejected.values():
        reasons_total.update(c)
    return {
        "input_rows": input_rows,
        "kept": sum(s["kept"] for s in shard_stats),
        "rejected": sum(reasons_total.values()),
        "stages": stages,
        "reasons": dict(sorted(reasons_total.items())),
    }


def internal_error_summary(out_dir: str, funnel: dict, max_error_rate: float) -> dict:
    """How many rows ended as ``internal_error``, their share, and the exception types most of them raised."""
    rows = funnel["reasons"].get(Reason.INTERNAL_ERROR.value, 0)
    rate = rows / funnel["input_rows"] if funnel["input_rows"] else 0.0
    types: Counter = Counter()
    if rows:
        for path in OutputLayout(out_dir).reject_files():
            with storage.open_read(path) as fh:
                table = pq.read_table(fh, columns=[R.REASON, R.DETAIL], filters=[(R.REASON, "==", Reason.INTERNAL_ERROR.value)])
            types.update(internal_error_type(d) for d in table.column(R.DETAIL).to_pylist())
    return {
        "rows": rows,
        "rate": round(rate, 6),
        "max_error_rate": max_error_rate,
        "exceeded": rate > max_error_rate,
        "top_types": [[name, count] for name, count in types.most_common(_TOP_TYPES)],
    }


def format_error_rate_failure(stats: dict) -> str:
    """One line: why a run whose internal errors passed --max-error-rate counts as failed."""
    errors = stats["internal_errors"]
    top = ", ".join(f"{name} ({count})" for name, count in errors["top_types"]) or "unknown"
    return (
        f"{errors['rows']} of {stats['funnel']['input_rows']} rows ({errors['rate']:.2%}) ended as internal_error, "
        f"above --max-error-rate {errors['max_error_rate']:.2%}; top exception types: {top}. Everything was written: "
        f"see reason internal_error in {OutputLayout(stats['output']).path(REJECTED_DIR, '*.parquet')}"
    )


def format_summary(stats: dict) -> str:
    funnel = stats["funnel"]
    lines = [
        f"paircurate: {funnel['input_rows']} input rows -> {funnel['kept']} kept, {funnel['rejected']} rejected "
        f"in {stats['wall_seconds']:.1f}s ({stats['shards']} shards in {stats['output']})",
        f"  {'stage':<10}{'in':>9}{'out':>9}  rejected",
    ]
    for stage in funnel["stages"]:
        reasons = ", ".join(f"{k}={v}" for k, v in stage["rejected"].items()) or "-"
        lines.append(f"  {stage['stage']:<10}{stage['in']:>9}{stage['out']:>9}  {reasons}")
    if "clip_threshold" in stats:
        lines.append(f"  clip threshold applied: {stats['clip_threshold']}")
    if stats.get("balance"):
        b = stats["balance"]
        lines.append(
            f"  balance: cap {b['balance_cap']}, {b['before']['entries']} entries matched; "
            f"entropy {b['before']['entropy_bits']} -> {b['after']['entropy_bits']} bits, "
            f"entries over the cap {b['before']['entries_over_cap']} -> {b['after']['entries_over_cap']}"
        )
    return "\n".join(lines)
