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


# The longest test files, longest first (their total time in `pytest --durations`,
# 2026-12-07): `make test` hands each xdist worker one file at a time in collection order
# (`--no-loadscope-reorder`: xdist's own order, by number of tests, left the 130 s loop test with
# its one test to the end), so these start first and the short files even out the end.
LONGEST_FIRST = (
    "tests/generation/model/test_native_step.py",
    "tests/generation/model/test_loading.py",
    "tests/bot/console/test_console.py",
    "tests/generation/tuning/test_tuning.py",
    "tests/bot/core/test_loop_real.py",
    "tests/generation/engine/test_local_engine.py",
    "tests/bot/core/test_loop.py",
    "tests/bot/cli/test_faults.py",
    "tests/bot/cli/test_cli_tune.py",
    "tests/generation/model/test_adapters.py",
    "tests/bot/discord/test_shared_database.py",
    "tests/bot/cli/test_durability.py",
    "tests/bot/discord/test_commands.py",
    "tests/bot/discord/test_bad_input.py",
    "tests/bot/cli/test_cli_loop.py",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, every other file and every file's own tests in the order they
    had (after pytest grouped them by their fixtures' parameters)."""
    rank = {path: place for place, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


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
