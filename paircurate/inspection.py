"""A one-screen summary of a finished output folder: ``paircurate inspect OUT``.

    >>> from paircurate.inspection import inspect_output, format_inspection
    >>> print(format_inspection(inspect_output("out")))

Reads only what a reader of the release reads (tars' sizes, Parquet schemas
and the ``clip_score`` column, ``stats.json``), never the image bytes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from paircurate.schemas.config import UserError
from paircurate.schemas.records import CLIP_SCORE, SCHEMA_VERSION_KEY

STATS_FILE = "stats.json"
REJECTED_DIR = "rejected"
QUANTILES = (("min", 0.0), ("p10", 0.10), ("p50", 0.50), ("p90", 0.90), ("max", 1.0))
_SHARD_NAME = re.compile(r"^(\d+)\.(tar|parquet)$")


@dataclass
class Inspection:
    out_dir: str
    tars: list[str]
    parquets: list[str]
    samples: int
    tar_bytes: int
    schema: list[tuple[str, str]]
    schema_version: str | None
    clip_quantiles: dict[str, float] | None
    stats: dict | None
    reject_files: list[str] = field(default_factory=list)


def shard_files(out_dir: str, ext: str) -> list[str]:
    """``NNNNN.tar`` / ``NNNNN.parquet`` of the top level, in shard order (temporaries excluded)."""
    found = []
    for name in os.listdir(out_dir):
        m = _SHARD_NAME.match(name)
        if m and m.group(2) == ext:
            found.append((int(m.group(1)), os.path.join(out_dir, name)))
    return [p for _, p in sorted(found)]


def reject_files(out_dir: str) -> list[str]:
    rdir = os.path.join(out_dir, REJECTED_DIR)
    if not os.path.isdir(rdir):
        return []
    return sorted(os.path.join(rdir, n) for n in os.listdir(rdir) if re.match(r"^\d+\.parquet$", n))


def load_stats(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, STATS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def read_column(paths: list[str], column: str) -> np.ndarray:
    """One column across shards as float64, nulls dropped; empty when no file has the column."""
    chunks = []
    for p in paths:
        if column not in pq.read_schema(p).names:
            continue
        col = pq.read_table(p, columns=[column]).column(column).drop_null()
        chunks.append(col.to_numpy().astype(np.float64))
    return np.concatenate(chunks) if chunks else np.zeros(0)


def quantiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {name: float(np.quantile(values, q)) for name, q in QUANTILES}


def inspect_output(out_dir: str) -> Inspection:
    if not os.path.isdir(out_dir):
        raise UserError(f"{out_dir} is not a folder")
    tars = shard_files(out_dir, "tar")
    parquets = shard_files(out_dir, "parquet")
    stats = load_stats(out_dir)
    if not tars and not parquets and stats is None:
        raise UserError(f"{out_dir} holds no paircurate output (no NNNNN.tar, NNNNN.parquet or {STATS_FILE})")
    samples = sum(pq.read_metadata(p).num_rows for p in parquets)
    schema: list[tuple[str, str]] = []
    version = None
    if parquets:
        arrow_schema: pa.Schema = pq.read_schema(parquets[0])
        schema = [(f.name, str(f.type)) for f in arrow_schema]
        raw = (arrow_schema.metadata or {}).get(SCHEMA_VERSION_KEY)
        version = raw.decode() if raw is not None else None
    return Inspection(
        out_dir=out_dir,
        tars=tars,
        parquets=parquets,
        samples=samples,
        tar_bytes=sum(os.path.getsize(t) for t in tars),
        schema=schema,
        schema_version=version,
        clip_quantiles=quantiles(read_column(parquets, CLIP_SCORE)),
        stats=stats,
        reject_files=reject_files(out_dir),
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_inspection(ins: Inspection) -> str:
    from paircurate.pipeline.stats import format_summary

    lines = [
        f"{ins.out_dir}",
        f"  shards: {len(ins.tars)} tar ({human_bytes(ins.tar_bytes)}, {ins.tar_bytes} bytes), "
        f"{len(ins.parquets)} parquet, {len(ins.reject_files)} reject files",
        f"  samples: {ins.samples}",
    ]
    if ins.schema:
        lines.append(f"  schema (version {ins.schema_version or 'unknown'}):")
        width = max(len(n) for n, _ in ins.schema)
        lines += [f"    {name:<{width}}  {typ}" for name, typ in ins.schema]
    if ins.clip_quantiles:
        q = ins.clip_quantiles
        lines.append("  clip_score: " + "  ".join(f"{k}={v:.4f}" for k, v in q.items()))
    else:
        lines.append("  clip_score: none (run without --clip)")
    if ins.stats is not None:
        lines.append(format_summary(ins.stats))
    else:
        lines.append(f"  no {STATS_FILE}: the run did not finish")
    return "\n".join(lines)
