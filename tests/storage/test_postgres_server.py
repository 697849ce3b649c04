"""The test suite's own PostgreSQL server starts on a fresh machine and takes passwords."""

from __future__ import annotations

import psycopg
import pytest

from tests.postgres_server import STARTED, PostgresServer


def test_the_server_listens_on_loopback_and_wants_the_password(
    postgres_server: PostgresServer,
) -> None:
    with psycopg.connect(postgres_server.url()) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
        address = conn.execute("SELECT inet_server_addr()::text").fetchone()[0]
    assert int(version) >= 150000
    assert address.startswith("127.0.0.1")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(postgres_server.url(password=False), connect_timeout=5).close()


def test_one_server_serves_every_module_of_the_process(postgres_server: PostgresServer) -> None:
    """tests/storage's conftest and this module both use the fixture: still one server (a
    fixture imported per module would start one per module)."""
    assert [postgres_server.port] == STARTED
