"""The single writer: one thread, one sqlite3 connection, group commit.

Why a plain thread and not an aiosqlite connection: aiosqlite is itself a thread, but every
`execute` and `commit` is a round trip between the event loop and that thread. A group commit
through it costs several hops per operation (SAVEPOINT, the statements, RELEASE) plus the
commit. Here each write is one sync function run inside the thread; the loop hands it over
once (a queue put) and is woken once per group (`call_soon_threadsafe`) to resolve all the
futures of that group. `benchmarks/storage.py`, 50 tasks writing feedback: aiosqlite with one
commit per write ~2,500/s; this thread with one commit per write ~9,500/s; with group commit
~18,000/s.

How a group runs: the thread blocks for the first queued operation, drains whatever else is
queued (up to `max_batch`), runs them in one `BEGIN IMMEDIATE` transaction, each inside its own
SAVEPOINT, commits, and only then resolves the futures. An operation that raises is rolled back
to its savepoint and only its caller gets the exception; the others still commit. If SQLite
aborts the whole transaction (disk full, I/O error), every operation of that transaction fails
and the rest of the group runs in a new one.
No write is acknowledged before its COMMIT returned (WAL + synchronous=NORMAL: durable against
a killed process).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from storage.errors import StoreClosed

log = logging.getLogger("muse.storage.writer")

T = TypeVar("T")


@dataclass(slots=True)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    outcome: Any = None
    failed: bool = False


class _Stop:
    """Queued by `close()`: everything queued before it still runs."""


class Writer:
    """Runs write operations `fn(conn, *args)` in one thread, grouping them into transactions."""

    def __init__(
        self,
        opener: Callable[[], Any],
        *,
        max_batch: int = 1024,
        errors: tuple[type[Exception], ...] = (sqlite3.Error,),
        lost: tuple[type[Exception], ...] = (),
        retry_s: float = 30.0,
    ) -> None:
        """`opener` runs in the writer thread: connect, configure, migrate. The connection is
        an `sqlite3.Connection` or one shaped like it (`storage.pg_conn.PgConnection`), and
        `errors` are its driver's. `lost`: errors that mean the connection (and with it the
        open transaction) was lost, as a database server's restart does; such a transaction
        runs again, for up to `retry_s`, before its callers get the error."""
        self._opener = opener
        self._errors = errors
        self._lost = lost
        self._retry_s = retry_s
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="muse-storage-writer", daemon=True)
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._closed = False
        self.groups = 0
        self.operations = 0

    async def start(self) -> None:
        """Start the thread and wait until `opener` returned (or raise what it raised)."""
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if self._start_error is not None:
            self._closed = True
            raise self._start_error

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue `fn(conn, *args)`; the future resolves after its transaction committed.

        Cancelling the awaiting task does not withdraw the write: it may still commit.
        """
        if self._closed:
            raise StoreClosed("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, args, future, loop))
        return future

    async def close(self) -> None:
        """Commit what is queued, then stop the thread and close the connection."""
        if self._closed and not self._thread.is_alive():
            return
        self._closed = True
        self._queue.put(_Stop())
        await asyncio.to_thread(self._thread.join)

    # --- inside the writer thread -------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = self._opener()
        except BaseException as exc:  # reported to start(); the thread ends
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(conn)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("storage writer died")
            self._closed = True
            self._fail_queued(exc)
        finally:
            conn.close()

    def _loop(self, conn: Any) -> None:
        while True:
            first = self._queue.get()
            if isinstance(first, _Stop):
                return
            group = [first]
            stopping = False
            while len(group) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Stop):
                    stopping = True
                    break
                group.append(item)
            try:
                self._run_group(conn, group)
            except Exception as exc:  # e.g. a savepoint statement failed: fail the group
                log.exception("storage writer group failed")
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                _fail(group, exc)
            self.groups += 1
            self.operations += len(group)
            self._deliver(group)
            if stopping:
                return

    def _run_group(self, conn: Any, group: list[_Job]) -> None:
        """Run `group` in as few transactions as possible (one, unless SQLite aborts one).

        A transaction whose connection was lost (`lost`) never committed (or, lost during
        COMMIT, may have: its operations then run twice, which the upserts absorb): its jobs
        run again on a new connection, until `retry_s` has passed."""
        deadline = time.monotonic() + self._retry_s
        start = 0
        while start < len(group):
            try:
                start = self._run_transaction(conn, group, start)
            except self._lost as exc:
                if time.monotonic() > deadline:
                    _fail(group[start:], exc)
                    return
                log.warning("database connection lost; running %d writes again", len(group) - start)
                for job in group[start:]:
                    job.outcome, job.failed = None, False

    def _run_transaction(self, conn: Any, group: list[_Job], start: int) -> int:
        """Run jobs from `start` in one transaction; return the index of the first job not run."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except self._errors as exc:
            _fail(group[start:], exc)
            return len(group)
        index = start
        while index < len(group):
            job = group[index]
            index += 1
            if self._run_job(conn, job):
                continue
            if not conn.in_transaction:  # SQLite rolled the whole transaction back
                if isinstance(job.outcome, self._lost):
                    raise job.outcome
                _fail(group[start:index], job.outcome)
                return index
        try:
            conn.execute("COMMIT")
        except self._errors as exc:
            if isinstance(exc, self._lost):
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _fail(group[start:index], exc)
        return index

    def _run_job(self, conn: Any, job: _Job) -> bool:
        """Run one job inside a savepoint; on error undo just that job. True if it succeeded."""
        conn.execute("SAVEPOINT job")
        try:
            job.outcome = job.fn(conn, *job.args)
        except Exception as exc:
            job.outcome, job.failed = exc, True
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                except self._errors:
                    conn.execute("ROLLBACK")
            return False
        conn.execute("RELEASE job")
        return True

    def _deliver(self, group: list[_Job]) -> None:
        """Wake each event loop once for the whole group."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in group:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, jobs)
            except RuntimeError:  # the loop was closed; nobody is waiting any more
                log.debug("dropping %d results for a closed event loop", len(jobs))

    def _fail_queued(self, exc: BaseException) -> None:
        pending: list[_Job] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                pending.append(item)
        _fail(pending, StoreClosed(f"the storage writer stopped: {exc!r}"))
        self._deliver(pending)


def _fail(jobs: list[_Job], exc: BaseException) -> None:
    for job in jobs:
        job.outcome, job.failed = exc, True


def _resolve(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future.done():
            continue
        if job.failed:
            job.future.set_exception(job.outcome)
        else:
            job.future.set_result(job.outcome)
