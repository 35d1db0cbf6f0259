"""A one-screen summary of a finished output folder: ``paircurate inspect OUT``.

    >>> from paircurate.inspection import inspect_output, format_inspection
    >>> print(format_inspection(inspect_output("out")))

Reads only what a reader of the release reads (tars' sizes, Parquet schemas
and the ``clip_score`` column, ``stats.json``), never the image bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from paircurate import storage
from paircurate.schemas.config import UserError
from paircurate.storage.layout import RUN_STATS_FILE, OutputLayout
from paircurate.schemas.records import CLIP_SCORE, SCHEMA_VERSION_KEY

QUANTILES = (("min", 0.0), ("p10", 0.10), ("p50", 0.50), ("p90", 0.90), ("max", 1.0))


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


def read_schema(path: str) -> pa.Schema:
    with storage.open_read(path) as fh:
        return pq.read_schema(fh)


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file of an output folder, local or on a store."""
    with storage.open_read(path) as fh:
        return pq.read_table(fh, columns=columns)


def read_column(paths: list[str], column: str) -> np.ndarray:
    """One column across shards as float64, nulls dropped; empty when no file has the column."""
    chunks = []
    for p in paths:
        if column not in read_schema(p).names:
            continue
        col = read_table(p, columns=[column]).column(column).drop_null()
        chunks.append(col.to_numpy().astype(np.float64))
    return np.concatenate(chunks) if chunks else np.zeros(0)


def quantiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {name: float(np.quantile(values, q)) for name, q in QUANTILES}


def inspect_output(out_dir: str) -> Inspection:
    out = OutputLayout(out_dir)
    if not out.exists():
        raise UserError(f"{out_dir} is not a folder")
    tars = out.shard_files("tar")
    parquets = out.shard_files("parquet")
    stats = out.load_run_stats()
    if not tars and not parquets and stats is None:
        raise UserError(f"{out_dir} holds no paircurate output (no NNNNN.tar, NNNNN.parquet or {RUN_STATS_FILE})")
    samples = 0
    for p in parquets:
        with storage.open_read(p) as fh:
            samples += pq.read_metadata(fh).num_rows
    schema: list[tuple[str, str]] = []
    version = None
    if parquets:
        arrow_schema: pa.Schema = read_schema(parquets[0])
        schema = [(f.name, str(f.type)) for f in arrow_schema]
        raw = (arrow_schema.metadata or {}).get(SCHEMA_VERSION_KEY)
        version = raw.decode() if raw is not None else None
    return Inspection(
        out_dir=out_dir,
        tars=tars,
        parquets=parquets,
        samples=samples,
        tar_bytes=sum(storage.size(t) for t in tars),
        schema=schema,
        schema_version=version,
        clip_quantiles=quantiles(read_column(parquets, CLIP_SCORE)),
        stats=stats,
        reject_files=out.reject_files(),
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
        lines.append(f"  no {RUN_STATS_FILE}: the run did not finish")
    return "\n".join(lines)
