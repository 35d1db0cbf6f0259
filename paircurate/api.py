"""The Python entry point: ``paircurate.run(config)``.

    >>> from paircurate import PipelineConfig, run
    >>> cfg = PipelineConfig.from_dict({"input": {"paths": ["pairs.parquet"]}, "output": {"path": "out"}})
    >>> summary = run(cfg)
    >>> summary.stats["funnel"]["kept"]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from paircurate.schemas.config import ConfigError, PipelineConfig
from paircurate.pipeline.fetch_workers import default_processes
from paircurate.pipeline.graph import build_graph
from paircurate.pipeline.progress import PROGRESS_DIR, ProgressMonitor
from paircurate.pipeline.read import InputFile, plan_inputs
from paircurate.pipeline.spool import SPOOL_DIR
from paircurate.pipeline.stats import build_funnel, package_versions, read_shard_stats
from paircurate.pipeline.write import completed_shards, shard_name

log = logging.getLogger(__name__)

PLAN_FILE = "_plan.json"
STATS_FILE = "stats.json"
_IN_PROCESS_RUNNERS = {"", "direct", "directrunner", "fnapirunner"}


@dataclass(frozen=True)
class RunSummary:
    output: str
    stats: dict


_DASK_RUNNERS = {"dask", "daskrunner"}
# Our spelling of the scheduler address -> Beam's DaskOptions flag.
_DASK_ADDRESS_FLAGS = ("--dask-address", "--dask_address", "--dask-client-address")
_BEAM_DASK_ADDRESS = "--dask_client_address"


def _translate_dask_args(beam_args: tuple[str, ...]) -> list[str]:
    """``--dask-address X`` (or ``=X``) becomes Beam's ``--dask_client_address X``."""
    out = []
    for arg in beam_args:
        flag, eq, value = arg.partition("=")
        if flag in _DASK_ADDRESS_FLAGS:
            out.append(f"{_BEAM_DASK_ADDRESS}={value}" if eq else _BEAM_DASK_ADDRESS)
        else:
            out.append(arg)
    return out


def make_runner(beam_args: tuple[str, ...]):
    """Beam runner + options; the in-process FnApiRunner unless another runner is named.

    Beam's DirectRunner would first try to fetch the Prism runner binary, which
    cannot work offline, so "direct" means FnApiRunner here; its
    ``--direct_running_mode`` and ``--direct_num_workers`` still apply.

    ``--runner dask --dask-address tcp://HOST:PORT`` runs on a running
    ``dask.distributed`` scheduler through Beam's DaskRunner:

        >>> runner, options = make_runner(("--runner", "dask", "--dask-address", "tcp://127.0.0.1:8786"))
    """
    args = _translate_dask_args(beam_args)
    if any(a.startswith("--dask_") for a in args):
        try:  # registers DaskOptions, so PipelineOptions does not discard the --dask_* flags
            import apache_beam.runners.dask.dask_runner  # noqa: F401
        except ImportError:
            pass  # reported below if --runner dask was asked for
    options = PipelineOptions(args)
    requested = (options.get_all_options().get("runner") or "").lower()
    if requested in _IN_PROCESS_RUNNERS:
        return FnApiRunner(), options
    if requested in _DASK_RUNNERS:
        return _make_dask_runner(options)
    return None, options  # Beam resolves --runner itself (Flink, Spark, Dataflow)


def resolve_download_processes(cfg: PipelineConfig, runner, options: PipelineOptions) -> PipelineConfig:
    """``download.processes = 0`` means one per core when this process is the only worker.

    On the in-process runner the pipeline runs in this one process, so its
    download stage should use every core. Beam's multi-process direct mode and
    cluster runners already run one SDK worker per core; there it means 1.
    """
    if cfg.download.processes:
        return cfg
    in_memory = isinstance(runner, FnApiRunner) and options.get_all_options().get("direct_running_mode") in (None, "in_memory")
    processes = default_processes() if in_memory else 1
    return dataclasses.replace(cfg, download=dataclasses.replace(cfg.download, processes=processes))


DEFAULT_ROWS_PER_PASS = 500_000


def rows_per_pass(cfg: PipelineConfig, runner) -> int:
    """Input rows per pass; 0 means one pass.

    Beam's in-process runner keeps what a pass shuffles (rows grouped by
    uid, sample pointers grouped by shard: ~1-3 KiB per row) in memory until
    the pass ends, so a big input runs as several pipelines, one after
    another. Cluster runners spill their shuffles: one pass, unless set.
    """
    if cfg.runner.rows_per_pass:
        return cfg.runner.rows_per_pass
    return DEFAULT_ROWS_PER_PASS if isinstance(runner, FnApiRunner) else 0


def plan_passes(pending_shards: list[int], cfg: PipelineConfig, runner) -> list[list[int]]:
    """Split the shards to write into passes of ``rows_per_pass`` input rows (whole shards)."""
    rows = rows_per_pass(cfg, runner)
    if not rows or not pending_shards:
        return [pending_shards] if pending_shards else []
    per_pass = max(1, rows // cfg.output.shard_size)
    return [pending_shards[i : i + per_pass] for i in range(0, len(pending_shards), per_pass)]


def _make_dask_runner(options: PipelineOptions):
    try:
        import distributed  # noqa: F401  (Beam's DaskRunner needs it at run time)
        from apache_beam.runners.dask.dask_runner import DaskOptions

        from paircurate.dask_runner import PatchedDaskRunner
    except ImportError as exc:
        raise ConfigError(
            f"--runner dask needs the dask and distributed packages ({exc}); "
            "install them with: pip install 'paircurate[dask]' (or pip install -e '.[dask]' in a checkout)"
        ) from exc
    dask_opts = options.view_as(DaskOptions)
    if not dask_opts.address and not dask_opts.scheduler_file:
        # Without an address Beam would silently start a private LocalCluster
        # on this machine, which is never what a cluster run means.
        raise ConfigError(
            "--runner dask needs the scheduler's address: --dask-address tcp://HOST:PORT "
            "(or --dask_scheduler_file PATH)"
        )
    return PatchedDaskRunner(), options


def _check_plan(out_dir: str, files: list[InputFile], cfg: PipelineConfig) -> None:
    """Refuse to resume into a folder planned from other inputs or shard size."""
    plan = {
        "shard_size": cfg.output.shard_size,
        "files": [[f.path, f.num_rows] for f in files],
    }
    path = os.path.join(out_dir, PLAN_FILE)
    if os.path.exists(path):
        with open(path) as fh:
            previous = json.load(fh)
        if previous != plan:
            raise ConfigError(
                f"{out_dir} holds a run over other inputs or another shard size ({path}); "
                "use a new output folder, or --overwrite to replace it"
            )
        return
    with open(path, "w") as fh:
        json.dump(plan, fh, indent=2)


def _remove_stale_temporaries(out_dir: str) -> None:
    """Temp files of a killed run are never complete; nothing reads them."""
    for root, _dirs, names in os.walk(out_dir):
        for name in names:
            if name.startswith(".") and ".tmp-" in name:
                os.remove(os.path.join(root, name))


def run(cfg: PipelineConfig, overwrite: bool = False) -> RunSummary:
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A download process is importing the script that called run() without
        # a main guard; running the pipeline again here would redo the work.
        raise RuntimeError(
            "paircurate.run() was called while a worker process imported your script: "
            "put the call under `if __name__ == \"__main__\":`"
        )
    cfg.validate_for_run()
    started = time.time()
    out_dir = cfg.output.path
    if overwrite and os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    files = plan_inputs(cfg.input)
    os.makedirs(out_dir, exist_ok=True)
    _check_plan(out_dir, files, cfg)
    _remove_stale_temporaries(out_dir)
    for name in os.listdir(out_dir):
        if name.startswith("_stage_"):  # run-level facts of an earlier invocation
            os.remove(os.path.join(out_dir, name))
    progress_dir = os.path.join(out_dir, PROGRESS_DIR)
    shutil.rmtree(progress_dir, ignore_errors=True)

    input_rows = sum(f.num_rows for f in files)
    num_shards = -(-input_rows // cfg.output.shard_size) if input_rows else 0
    done = completed_shards(out_dir)
    pending_rows = sum(
        min(cfg.output.shard_size, input_rows - s * cfg.output.shard_size) for s in range(num_shards) if s not in done
    )
    if done:
        log.info("resuming: %d of %d shards already complete in %s", len(done), num_shards, out_dir)

    if pending_rows:
        runner, options = make_runner(cfg.runner.beam_args)
        cfg = resolve_download_processes(cfg, runner, options)
        passes = plan_passes([s for s in range(num_shards) if s not in done], cfg, runner)
        if len(passes) > 1 and cfg.clip.enabled and cfg.clip.top_percent is not None:
            raise ConfigError(
                f"--clip-top-percent needs the whole input in one pass, and this run takes {len(passes)} passes "
                f"of {rows_per_pass(cfg, runner)} rows; use --clip-threshold, "
                "or --rows-per-pass with at least the number of input rows"
            )
        all_shards = frozenset(range(num_shards))
        with ProgressMonitor(progress_dir, total=pending_rows, enabled=cfg.runner.progress):
            for number, shards in enumerate(passes, start=1):
                if len(passes) > 1:
                    log.info("pass %d of %d: shards %d to %d", number, len(passes), shards[0], shards[-1])
                # Shards written by earlier passes (or the run being resumed) are dedup's pinned keepers.
                written = tuple(os.path.join(out_dir, f"{shard_name(s)}.parquet") for s in sorted(completed_shards(out_dir)))
                pipeline = beam.Pipeline(runner=runner, options=options)
                build_graph(pipeline, cfg, files, skip_shards=all_shards - set(shards), progress_dir=progress_dir, written_shards=written)
                result = pipeline.run()
                result.wait_until_finish()
    shutil.rmtree(progress_dir, ignore_errors=True)
    shutil.rmtree(os.path.join(out_dir, SPOOL_DIR), ignore_errors=True)

    shard_stats = read_shard_stats(out_dir)
    stats = {
        "output": os.path.abspath(out_dir),
        "shards": len(shard_stats),
        "funnel": build_funnel(shard_stats, input_rows),
        "resumed_shards": sorted(done),
        "wall_seconds": round(time.time() - started, 3),
        "inputs": [{"path": f.path, "format": f.format, "rows": f.num_rows} for f in files],
        "config": cfg.to_dict(),
        "versions": package_versions(),
    }
    for extra in read_stage_stats(out_dir):
        stats.update(extra)
    tmp = os.path.join(out_dir, f".{STATS_FILE}.tmp")
    with open(tmp, "w") as fh:
        json.dump(stats, fh, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, STATS_FILE))
    if cfg.runner.report:
        from paircurate.report import write_report  # matplotlib only when a report is wanted

        write_report(out_dir)
    return RunSummary(output=out_dir, stats=stats)


def read_stage_stats(out_dir: str) -> list[dict]:
    """Run-level facts that stages leave in ``_stage_*.json`` (e.g. the CLIP threshold applied)."""
    found = []
    for name in sorted(os.listdir(out_dir)):
        if name.startswith("_stage_") and name.endswith(".json"):
            with open(os.path.join(out_dir, name)) as fh:
                found.append(json.load(fh))
    return found
