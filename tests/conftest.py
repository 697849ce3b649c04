"""Process-wide test settings."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator

import pytest

from tests.postgres_server import PostgresServer, session_server

_exit_status = 0


def pytest_configure(config: pytest.Config) -> None:
    """Share the cores out between xdist's workers, for this process and the processes its tests
    start: torch's default of one thread per core in every worker oversubscribes them, and its
    threads then wait on each other many times over (benchmarks/README.md, "Decisions":
    pytest workers)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
    os.environ["OMP_NUM_THREADS"] = threads
    os.environ.setdefault("MKL_NUM_THREADS", threads)
    import torch

    torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL test server: one per pytest process (each xdist worker has its own),
    started when a test first asks for it."""
    with session_server() as server:
        yield server


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without the interpreter's teardown once pytest has reported.

    After every test has passed, the bot suite's interpreter sometimes aborts while it is being
    torn down ("terminate called without an active exception": a native thread of torch's is
    still alive when Python finalises). The report is complete by then, so exit with pytest's
    own status rather than let the teardown turn a green run red. Finding that thread is open
    work."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(_exit_status)
