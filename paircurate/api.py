"""The Python entry point: ``paircurate.run(config)``.

    >>> from paircurate import PipelineConfig, run
    >>> cfg = PipelineConfig.from_dict({"input": {"paths": ["pairs.parquet"]}, "output": {"path": "out"}})
    >>> summary = run(cfg)
    >>> summary.stats["funnel"]["kept"]
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Mapping

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from paircurate import storage
from paircurate.filters.blocklist import load_blocklists
from paircurate.filters.similarity import combined_threshold, resolve_threshold
from paircurate.pipeline.graph import build_graph
from paircurate.pipeline.progress import ProgressMonitor
from paircurate.pipeline.read import InputFile, plan_inputs
from paircurate.pipeline.score import prepare_scoring
from paircurate.pipeline.stage import METRICS_NAMESPACE, stage_seconds
from paircurate.pipeline.stats import build_funnel, internal_error_summary, package_versions
from paircurate.release import finish_folder, utc
from paircurate.retry import check_retry_folder, finish_retry, prepare_retry
from paircurate.pipeline.balance import balance_stats, load_recorded_counts
from paircurate.runners import (
    keeps_shuffles_in_memory,
    make_runner,
    plan_passes,
    refuse_split_whole_run_options,
    resolve_download_processes,
)
from paircurate.schemas.config import ConfigError, PipelineConfig
from paircurate.storage.layout import MARKER_FILE, PLAN_FILE, OutputLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    output: str
    stats: dict

    @property
    def error_rate_exceeded(self) -> bool:
        """More rows ended as ``internal_error`` than ``runner.max_error_rate`` allows (the CLI then exits 3)."""
        return bool(self.stats.get("internal_errors", {}).get("exceeded"))


@dataclass(frozen=True)
class WorkPlan:
    """What a run over these inputs still has to write in this folder."""

    input_rows: int
    num_shards: int
    done: frozenset[int]
    pending_rows: int

    @property
    def pending_shards(self) -> list[int]:
        return [s for s in range(self.num_shards) if s not in self.done]


def run(cfg: PipelineConfig, overwrite: bool = False) -> RunSummary:
    _refuse_in_worker_import()
    cfg.validate_for_run()
    blocklists = load_blocklists(cfg.blocklist.paths)  # a bad list stops the run here, naming file and line
    check_label_files(cfg)
    started = time.time()
    # Device, weights (fetched on first use) and heads before anything else starts:
    # a wrong name or an unreachable hub ends the run here, in one line.
    scoring = prepare_scoring(cfg.clip) if cfg.clip.enabled else {}
    files = plan_inputs(cfg.input)  # checked before anything in the output folder is touched
    out_dir = cfg.output.path
    check_retry_folder(out_dir, cfg, overwrite)
    make_runner(cfg.runner.beam_args)  # a runner that cannot be made fails here, before the folder is touched
    _prepare_output(out_dir, files, cfg, overwrite)
    work = plan_work(out_dir, files, cfg.output.shard_size)
    if work.done:
        log.info("resuming: %d of %d shards already complete in %s", len(work.done), work.num_shards, out_dir)
    retry = prepare_retry(out_dir, files, cfg, work)  # --retry-failed: the rows to re-attempt, and their new shards
    timings = None
    if retry is not None:
        if retry.rows:
            cfg, timings = _run_passes(cfg, files, work, retry_rows=retry.rows)
        finish_retry(out_dir, retry)
    elif work.pending_rows:
        cfg, timings = _run_passes(cfg, files, work)
    storage.remove(OutputLayout(out_dir).spool_dir, recursive=True)
    stats = _run_stats(out_dir, cfg, files, work, started, scoring)
    stats["stage_seconds"] = timings
    # stats.json, report.html, datasheet.md and shardindex.json, from the folder as it now is
    finish_folder(out_dir, stats, report=cfg.runner.report, blocklist_entries=blocklists.entry_counts)
    return RunSummary(output=out_dir, stats=stats)


def plan_work(out_dir: str, files: list[InputFile], shard_size: int) -> WorkPlan:
    input_rows = sum(f.num_rows for f in files)
    num_shards = -(-input_rows // shard_size) if input_rows else 0
    done = OutputLayout(out_dir).completed_shards()
    pending_rows = sum(min(shard_size, input_rows - s * shard_size) for s in range(num_shards) if s not in done)
    return WorkPlan(input_rows, num_shards, done, pending_rows)


def _run_passes(
    cfg: PipelineConfig, files: list[InputFile], work: WorkPlan, retry_rows: Mapping[int, int] | None = None
) -> tuple[PipelineConfig, dict | None]:
    """Run the pipeline over the pending shards, one pass after another.

    Returns the config as resolved for the runner, and the wall and CPU
    seconds per stage over all passes (None where the runner reports no
    metrics, as Beam's Dask runner does).

    ``retry_rows`` ({global input row: new shard}, from ``--retry-failed``):
    read only those rows, into those shards, instead of the pending shards.
    """
    out = OutputLayout(cfg.output.path)
    runner, options = make_runner(cfg.runner.beam_args)
    cfg = resolve_download_processes(cfg, runner, options)
    pending = work.pending_shards if retry_rows is None else sorted(set(retry_rows.values()) - work.done)
    total = work.pending_rows if retry_rows is None else sum(1 for s in retry_rows.values() if s not in work.done)
    passes = plan_passes(pending, cfg, runner)
    refuse_split_whole_run_options(cfg, passes, runner)
    # A resumed balanced run decides its remaining samples with the counts of the whole run.
    balance_counts = load_recorded_counts(out.root, cfg.balance, cfg.concepts) if cfg.balance.enabled and work.done else None
    all_shards = frozenset(range(work.num_shards))
    counters: list[tuple[str, int]] | None = []
    spool_dir, local_spool = _spool_dir(cfg, out, runner)
    try:
        with ProgressMonitor(out.progress_dir, total=total, enabled=cfg.runner.progress):
            for number, shards in enumerate(passes, start=1):
                if len(passes) > 1:
                    log.info("pass %d of %d: shards %d to %d", number, len(passes), shards[0], shards[-1])
                # Shards written by earlier passes (or the run being resumed) are dedup's pinned keepers.
                written = tuple(out.shard_files("parquet"))
                rows = None if retry_rows is None else {g: s for g, s in retry_rows.items() if s in set(shards)}
                pipeline = beam.Pipeline(runner=runner, options=options)
                build_graph(
                    pipeline, cfg, files, skip_shards=all_shards - set(shards), progress_dir=out.progress_dir,
                    written_shards=written, rows=rows, spool_dir=spool_dir, balance_counts=balance_counts,
                )
                counters = _timing_counters(_wait_for(pipeline), counters)
    finally:
        if local_spool:
            shutil.rmtree(local_spool, ignore_errors=True)
    storage.remove(out.progress_dir, recursive=True)
    return cfg, None if counters is None else stage_seconds(counters)


def _timing_counters(result, so_far: list[tuple[str, int]] | None) -> list[tuple[str, int]] | None:
    """The stage timing counters of one pass added to those of earlier passes."""
    if so_far is None:
        return None
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    except NotImplementedError:  # Beam's Dask runner collects no metrics
        return None
    return so_far + [(c.key.metric.name, c.committed if c.committed is not None else c.attempted) for c in found]


def _spool_dir(cfg: PipelineConfig, out: OutputLayout, runner) -> tuple[str | None, str | None]:
    """Where finished samples wait for their shard: (spool folder or None for the shuffle, local folder to remove).

    The in-process runner's workers share this machine's disk, so they spool
    to OUT/_spool, or to a local temporary folder when OUT is on a store
    (appending to a local file beats a PUT per batch). Any other runner's
    workers may share nothing but the output store, so the spool lives there.
    """
    mode = cfg.output.spool
    if mode == "shuffle":
        return None, None
    if mode == "auto" and keeps_shuffles_in_memory(runner) and out.is_remote():
        local = tempfile.mkdtemp(prefix="paircurate-spool-")
        return local, local
    return out.spool_dir, None


def _wait_for(pipeline: beam.Pipeline):
    """Run ``pipeline`` to its end and return the result; a store's refusal anywhere in it surfaces as its one line (``PUT s3://...: AccessDenied``)."""
    try:
        result = pipeline.run()
        result.wait_until_finish()
        return result
    except Exception as exc:
        line = storage.storage_error_line(exc)
        if line is None:
            raise
        raise storage.StorageError(line) from None


def check_label_files(cfg: PipelineConfig) -> None:
    """Read the --concepts and --balance-entries label sets once in the driver: a bad file fails before the run."""
    from paircurate.concepts.labels import load_label_set

    if cfg.concepts.labels:
        load_label_set(cfg.concepts.labels, option="--concepts")
    if cfg.balance.enabled and cfg.balance.by == "caption":
        load_label_set(cfg.balance.entries, option="--balance-entries")


def _refuse_in_worker_import() -> None:
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A download process is importing the script that called run() without
        # a main guard; running the pipeline again here would redo the work.
        raise RuntimeError(
            "paircurate.run() was called while a worker process imported your script: "
            "put the call under `if __name__ == \"__main__\":`"
        )


def _prepare_output(out_dir: str, files: list[InputFile], cfg: PipelineConfig, overwrite: bool) -> None:
    """Make ``out_dir`` ready for this run; called once the inputs and the config have been checked.

    A folder paircurate did not make is never touched: not written into, not
    cleaned, not deleted.
    """
    out = OutputLayout(out_dir)
    state = output_folder_state(out_dir)
    if state == "not_a_folder":
        raise ConfigError(f"output {out_dir} exists and is not a folder; give -o a folder path")
    if state == "foreign":
        raise ConfigError(
            f"output folder {out_dir} is not empty and was not made by paircurate (it holds no {MARKER_FILE}); "
            "nothing in it was touched: give -o a new or empty folder"
        )
    if overwrite and state == "ours":
        _refuse_to_delete(out_dir, files, cfg)
        storage.remove(out_dir, recursive=True)
    storage.makedirs(out_dir)
    _write_marker(out)
    _check_plan(out, files, cfg)
    if not out.is_remote():
        _remove_stale_temporaries(out_dir)  # a store never shows an upload that did not complete
    for stale in out.run_files:  # run-level facts of an earlier invocation
        storage.remove(stale, recursive=True)


def output_folder_state(out_dir: str) -> str:
    """``missing``, ``empty``, ``ours`` (holds the marker, or _plan.json from before the marker), ``foreign`` or ``not_a_folder``.

    On a store a prefix with no object under it is ``missing``; an object named like the folder is ``not_a_folder``.
    """
    if storage.is_remote(out_dir):
        names = storage.names(out_dir)
        if not names:
            return "not_a_folder" if storage.exists(out_dir) and not storage.isdir(out_dir) else "missing"
    else:
        if not os.path.lexists(out_dir):
            return "missing"
        if not os.path.isdir(out_dir):
            return "not_a_folder"
        names = os.listdir(out_dir)
        if not names:
            return "empty"
    if MARKER_FILE in names or PLAN_FILE in names:
        return "ours"
    return "foreign"


def _refuse_to_delete(out_dir: str, files: list[InputFile], cfg: PipelineConfig) -> None:
    """--overwrite deletes an output folder, never one a user could not mean to lose with it."""
    remote = storage.is_remote(out_dir)
    target = out_dir.rstrip("/") if remote else os.path.realpath(out_dir)

    def inside(path: str) -> bool:
        if remote or storage.is_remote(path):
            return path.rstrip("/") == target or path.startswith(target + "/")
        return os.path.commonpath([target, os.path.realpath(path)]) == target

    protected = [] if remote else [("the root folder", os.path.sep), ("the working directory", os.getcwd()), ("your home folder", os.path.expanduser("~"))]
    for what, path in protected:
        if inside(path):
            raise ConfigError(f"--overwrite would delete {out_dir}, which is or holds {what}; give -o a folder of its own")
    needed = [f.path for f in files] + list(cfg.blocklist.paths) + [p for p in (cfg.dedup.dedup_against, cfg.dedup.decontaminate_against) if p]
    for path in needed:
        if inside(path):
            raise ConfigError(f"--overwrite would delete {out_dir}, which holds {path}, an input of this run; move the input or choose another -o")


def _write_marker(out: OutputLayout) -> None:
    if not storage.exists(out.marker):
        storage.write_bytes(out.marker, b"This folder was made by paircurate; `paircurate run --overwrite` may delete it.\n")


def _clip_stats(cfg: PipelineConfig, out_dir: str) -> dict:
    """The CLIP threshold applied and where it came from; the top-percent cutoff is known only after the run."""
    if not cfg.clip.enabled:
        return {}
    threshold, source = resolve_threshold(cfg.clip)
    stats = {
        "clip_model": cfg.clip.model,
        "clip_pretrained": cfg.clip.pretrained,
        "clip_threshold": threshold,
        "clip_threshold_source": source,
        "clip_top_percent": cfg.clip.top_percent,
        "min_aesthetic": cfg.clip.min_aesthetic,
        "max_punsafe": cfg.clip.max_punsafe,
    }
    recorded = OutputLayout(out_dir).read_json(OutputLayout(out_dir).cutoff) if cfg.clip.top_percent is not None else None
    if recorded is not None:
        cutoff = recorded["clip_top_percent_cutoff"]
        stats["clip_top_percent_cutoff"] = cutoff
        stats["clip_threshold"] = combined_threshold(threshold, cutoff)
    return stats


def _run_stats(out_dir: str, cfg: PipelineConfig, files: list[InputFile], work: WorkPlan, started: float,
               scoring: dict) -> dict:
    out = OutputLayout(out_dir)
    shard_stats = out.read_shard_stats()
    funnel = build_funnel(shard_stats, work.input_rows)
    stats = {
        "output": out_dir if out.is_remote() else os.path.abspath(out_dir),
        "shards": len(shard_stats),
        "funnel": funnel,
        "internal_errors": internal_error_summary(out_dir, funnel, cfg.runner.max_error_rate),
        "resumed_shards": sorted(work.done),
        "started": utc(started),
        "finished": utc(time.time()),
        "wall_seconds": round(time.time() - started, 3),
        "inputs": [{"path": f.path, "format": f.format, "rows": f.num_rows} for f in files],
        "config": cfg.to_dict(),
        "versions": package_versions(),
        **_clip_stats(cfg, out_dir),
        **scoring,  # where the weights and heads came from
        **balance_stats(out_dir),
    }
    return stats


def _check_plan(out: OutputLayout, files: list[InputFile], cfg: PipelineConfig) -> None:
    """Refuse to resume into a folder planned from other inputs or shard size."""
    plan = {
        "shard_size": cfg.output.shard_size,
        "files": [[f.path, f.num_rows] for f in files],
    }
    previous = out.read_json(out.plan)
    if previous is not None:
        if previous != plan:
            raise ConfigError(
                f"{out.root} holds a run over other inputs or another shard size ({out.plan}); "
                "use a new output folder, or --overwrite to replace it"
            )
        return
    out.write_json(out.plan, plan)


def _remove_stale_temporaries(out_dir: str) -> None:
    """Temp files of a killed run are never complete; nothing reads them."""
    for root, _dirs, names in os.walk(out_dir):
        for name in names:
            if name.startswith(".") and ".tmp-" in name:
                os.remove(os.path.join(root, name))
