"""The test session's PostgreSQL server (`benchmarks/postgres_server.py` starts it).

The `postgres_server` fixture (tests/conftest.py) starts one per pytest process: a fixture
imported into several test modules would be one definition per module, so one server each.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest

from benchmarks.postgres_server import (
    PASSWORD,
    USER,
    PostgresServer,
    PostgresUnavailable,
    start_server,
)

__all__ = ["PASSWORD", "USER", "PostgresServer", "STARTED", "session_server"]

#: The ports of the servers `session_server` started in this process (one, if it is shared).
STARTED: list[int] = []


@contextlib.contextmanager
def session_server() -> Iterator[PostgresServer]:
    """A server for the block, removed after (the `postgres_server` fixture's body); a server
    that cannot start fails the test, never skips it."""
    try:
        server = start_server()
    except PostgresUnavailable as exc:
        pytest.fail(f"the PostgreSQL test server could not start: {exc}", pytrace=False)
    STARTED.append(server.port)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data.parent, ignore_errors=True)
