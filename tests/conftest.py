import pytest

from paircurate.testing.loopback import LoopbackServer


@pytest.fixture
def loopback_server():
    """A LoopbackServer on 127.0.0.1 with a free port, stopped after the test."""
    with LoopbackServer() as server:
        yield server


@pytest.fixture(autouse=True, scope="session")
def _private_paircurate_cache(tmp_path_factory):
    """Label embeddings and other derived files go to a folder of this test session, not ~/.cache (CLI subprocesses too)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PAIRCURATE_CACHE_DIR", str(tmp_path_factory.mktemp("paircurate-cache")))
    yield
    mp.undo()
