"""The run's funnel: per-shard stats summed into ``stats.json`` and a console summary."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections import Counter, defaultdict

from paircurate.pipeline.write import STATS_SUFFIX
from paircurate.schemas.outcomes import Stage

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
    stats = []
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(STATS_SUFFIX) and name[: -len(STATS_SUFFIX)].isdigit():
            with open(os.path.join(out_dir, name)) as fh:
                stats.append(json.load(fh))
    return stats


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
    return "\n".join(lines)
