"""Who a store is: a random instance id per open store (one per process and database), and
whether another instance's process is provably gone on this machine.

Every store writes its instance's row and a heartbeat (`storage.owners`); a row whose heartbeat
is older than `EXPIRES_S` belongs to a process that is gone, wherever it ran. On the machine it
ran on, a dead process is known sooner: its pid no longer runs the same program (`is_gone_here`).
That check only ever shortens the wait, never extends a life: an expired heartbeat decides.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

#: How often a live store writes its heartbeat. Often enough that a dead process's replies are
#: fixed within a minute; rare enough to cost nothing (one small write).
HEARTBEAT_S = 5.0

#: A heartbeat older than this means its process is gone. Six missed beats: a process whose
#: event loop or disk stalls for a few seconds (a slow fsync, a long write queue, the busy
#: timeout of a locked file) keeps its generations; only a process that is gone loses them.
EXPIRES_S = 30.0


@dataclass(frozen=True, slots=True)
class Instance:
    """One open store: `id` owns its generations; `machine`, `pid` and `pid_start` let another
    process on the same machine see that this one is gone without waiting for its heartbeat."""

    id: str
    machine: str | None
    pid: int
    pid_start: int | None


def this_instance() -> Instance:
    """A new instance of this process (a fresh random id at every open). Reads /proc: call it
    off the event loop."""
    pid = os.getpid()
    return Instance(secrets.token_hex(8), this_machine(), pid, process_start(pid))


def this_machine() -> str | None:
    """What makes pids comparable: the host name, this boot and this pid namespace (two
    containers on one host see different pids). None where /proc cannot tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{namespace}"


def process_start(pid: int) -> int | None:
    """When the process `pid` started (clock ticks after boot), or None if it is not running
    (a zombie, killed but not yet reaped, counts as not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the name in (...) may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_gone_here(machine: str | None, pid: int, pid_start: int | None, here: str | None) -> bool:
    """True when the instance ran on this machine (`here`) and its process no longer runs:
    its pid is free or reused by a later process. False when this cannot be told."""
    if machine is None or here is None or machine != here or pid_start is None:
        return False
    return process_start(pid) != pid_start
