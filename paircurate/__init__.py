"""paircurate: image-text pair curation on Apache Beam.

    >>> from paircurate import load_config, run
    >>> run(load_config(yaml_path="curate.yaml"))
"""

__version__ = "0.1.0"

from paircurate.config import load_config  # noqa: E402
from paircurate.schemas.config import PipelineConfig  # noqa: E402


def run(config: PipelineConfig, overwrite: bool = False):
    """Run the curation pipeline; see :func:`paircurate.api.run`."""
    from paircurate.api import run as _run  # Beam is imported only when a run starts

    return _run(config, overwrite=overwrite)


__all__ = ["PipelineConfig", "load_config", "run", "__version__"]
