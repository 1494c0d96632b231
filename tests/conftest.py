"""Shared test configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import blockbuster_ctx

from gatewayd.logs import reset_logging


@pytest.fixture(autouse=True)
def no_blocking_calls_in_the_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any async test in which gatewayd code blocks the event loop (docs/architecture.md).

    blockbuster patches time.sleep, file and socket I/O and friends to raise when called from
    code under gatewayd/ while an event loop runs in this thread; work that must block belongs
    in a thread (asyncio.to_thread, an executor, the store's writer thread).
    """
    if request.node.get_closest_marker("asyncio") is None:
        yield
        return
    with blockbuster_ctx(scanned_modules=["gatewayd"]):
        yield


@pytest.fixture(autouse=True)
def no_logging_left_configured() -> Iterator[None]:
    """Undo any logging a test configured (`cli.main` does, from the config): its handler
    writes to that test's captured output, which is closed once the test ends, and a later
    test's log lines would go nowhere ("I/O operation on closed file")."""
    yield
    reset_logging()


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command line run as a user would run it: no config, state or credentials directory
    inherited from the environment."""
    for name in ("GATEWAYD_CONFIG", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
