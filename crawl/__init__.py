"""The HTTP crawler: a polite, bounded client (``client``), the address guard, robots and
per-host limits (``politeness``), and the worker processes that download and decode
batches on every core (``workers``). No Beam here: ``pipeline/download.py`` wraps it."""

import multiprocessing
import multiprocessing.forkserver

WORKERS_MODULE = "paircurate.crawl.workers"


def start_forkserver_early() -> None:
    """Start the fork server that download processes come from, now, in the background.

    It imports the download code (Pillow, urllib3, numpy) while this process is
    still importing Beam, so on a machine with several cores the children are
    ready by the time the pipeline asks for them. Starting it is harmless when
    the run ends up not needing it: it exits with this process.
    """
    multiprocessing.get_context("forkserver").set_forkserver_preload([WORKERS_MODULE])
    multiprocessing.forkserver.ensure_running()
