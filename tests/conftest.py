import pytest

from paircurate.testing.loopback import LoopbackServer


@pytest.fixture
def loopback_server():
    """A LoopbackServer on 127.0.0.1 with a free port, stopped after the test."""
    with LoopbackServer() as server:
        yield server
