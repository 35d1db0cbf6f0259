"""The HTTP crawler: a polite, bounded client (``client``), the address guard, robots and
per-host limits (``politeness``), and the worker processes that download and decode
batches on every core (``workers``). No Beam here: ``pipeline/download.py`` wraps it."""
