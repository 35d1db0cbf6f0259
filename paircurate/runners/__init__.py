"""Which Beam runner a run uses, and what that choice means for the run.

    >>> runner, options = make_runner(("--runner", "dask", "--dask-address", "tcp://127.0.0.1:8786"))

Two properties of the choice shape a run, and are decided here only:

- ``keeps_shuffles_in_memory``: Beam's in-process runner (any mode) holds what
  a pipeline shuffles until it ends, so big inputs run in passes;
- ``is_only_worker``: in its in-memory mode this process is the whole cluster,
  so the download stage starts one process per core itself.
"""

from __future__ import annotations

import argparse
import dataclasses

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from paircurate.crawl.workers import default_processes
from paircurate.schemas.config import ConfigError, PipelineConfig

_IN_PROCESS_RUNNERS = {"", "direct", "directrunner", "fnapirunner"}
_DASK_RUNNERS = {"dask", "daskrunner"}
# Our spelling of the scheduler address -> Beam's DaskOptions flag.
_DASK_ADDRESS_FLAGS = ("--dask-address", "--dask_address", "--dask-client-address")
_BEAM_DASK_ADDRESS = "--dask_client_address"
DEFAULT_ROWS_PER_PASS = 500_000


def beam_option_names() -> frozenset[str]:
    """Every ``--option`` Beam's PipelineOptions declares (and our spellings of the Dask address).

    Beam drops options it does not know with a warning, so the command line
    passes on only these and refuses the rest: a typo of one of our flags
    must not run to the end without it.
    """
    try:  # registers DaskOptions when dask is installed
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    except ImportError:
        pass
    parser = argparse.ArgumentParser(add_help=False)
    pending = list(PipelineOptions.__subclasses__())
    seen = set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:  # an option two option classes both declare
            continue
    return frozenset(name for name in parser._option_string_actions if name.startswith("--")) | frozenset(_DASK_ADDRESS_FLAGS)


def make_runner(beam_args: tuple[str, ...]):
    """Beam runner + options; the in-process FnApiRunner unless another runner is named.

    Beam's DirectRunner would first try to fetch the Prism runner binary, which
    cannot work offline, so "direct" means FnApiRunner here; its
    ``--direct_running_mode`` and ``--direct_num_workers`` still apply.
    ``--runner dask --dask-address tcp://HOST:PORT`` runs on a running
    ``dask.distributed`` scheduler through Beam's DaskRunner (with our fixes);
    any other ``--runner`` is resolved by Beam itself (Flink, Spark, Dataflow).
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
    _check_beam_runner(options.get_all_options().get("runner"))
    return None, options


def _check_beam_runner(name: str) -> None:
    """A runner name Beam cannot resolve is a ConfigError now, not a traceback once the run has started."""
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(name)
    except ValueError as exc:
        raise ConfigError(f"--runner {name}: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"--runner {name} needs a package that is not installed: {exc}") from None


def keeps_shuffles_in_memory(runner) -> bool:
    return isinstance(runner, FnApiRunner)


def is_only_worker(runner, options: PipelineOptions) -> bool:
    return keeps_shuffles_in_memory(runner) and options.get_all_options().get("direct_running_mode") in (None, "in_memory")


def resolve_download_processes(cfg: PipelineConfig, runner, options: PipelineOptions) -> PipelineConfig:
    """``download.processes = 0`` means one per core when this process is the only worker.

    Beam's multi-process direct mode and cluster runners already run one SDK
    worker per core; there it means 1.
    """
    if cfg.download.processes:
        return cfg
    processes = default_processes() if is_only_worker(runner, options) else 1
    return dataclasses.replace(cfg, download=dataclasses.replace(cfg.download, processes=processes))


def rows_per_pass(cfg: PipelineConfig, runner) -> int:
    """Input rows per pass; 0 means one pass.

    The in-process runner keeps what a pass shuffles (rows grouped by uid,
    sample pointers grouped by shard: ~1-3 KiB per row) in memory until the
    pass ends; cluster runners spill their shuffles: one pass, unless set.
    """
    if cfg.runner.rows_per_pass:
        return cfg.runner.rows_per_pass
    return DEFAULT_ROWS_PER_PASS if keeps_shuffles_in_memory(runner) else 0


# Options whose decisions need the whole run seen first (a run-wide quantile,
# run-wide entry counts): one pass only, and what to use instead.
_ONE_PASS_ALTERNATIVES = {
    "--clip-top-percent": "use --clip-threshold, ",
    "--balance-cap": "use a runner that spills its shuffles (one pass), ",
}


def whole_run_options(cfg: PipelineConfig) -> list[str]:
    """The options of ``cfg`` that decide samples from statistics of the whole run."""
    found = []
    if cfg.clip.enabled and cfg.clip.top_percent is not None:
        found.append("--clip-top-percent")
    if cfg.balance.enabled:
        found.append("--balance-cap")
    return found


def refuse_split_whole_run_options(cfg: PipelineConfig, passes: list[list[int]], runner) -> None:
    """ConfigError when options that need the whole run would see it in several passes."""
    whole_run = whole_run_options(cfg)
    if len(passes) > 1 and whole_run:
        raise ConfigError(
            f"{' and '.join(whole_run)} {'needs' if len(whole_run) == 1 else 'need'} the whole input in one pass, "
            f"and this run takes {len(passes)} passes of {rows_per_pass(cfg, runner)} rows; "
            f"{_ONE_PASS_ALTERNATIVES[whole_run[0]]}or --rows-per-pass with at least the number of input rows"
        )


def plan_passes(pending_shards: list[int], cfg: PipelineConfig, runner) -> list[list[int]]:
    """Split the shards to write into passes of ``rows_per_pass`` input rows (whole shards)."""
    rows = rows_per_pass(cfg, runner)
    if not rows or not pending_shards:
        return [pending_shards] if pending_shards else []
    per_pass = max(1, rows // cfg.output.shard_size)
    return [pending_shards[i : i + per_pass] for i in range(0, len(pending_shards), per_pass)]


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


def _make_dask_runner(options: PipelineOptions):
    try:
        import distributed  # noqa: F401  (Beam's DaskRunner needs it at run time)
        from apache_beam.runners.dask.dask_runner import DaskOptions

        from paircurate.runners.dask import PatchedDaskRunner
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
