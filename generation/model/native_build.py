"""Where the C++ step (`generation/model/native_step.py`) is built, whether a build may be loaded,
and its first run in a child process.

It is compiled with `-march=native`: a build made on another CPU (a copied volume, an NFS home
shared by several machines) can die of SIGILL at its first step, and a shared library is code
that runs in the serving process. So:
- its folder is keyed by the Python and torch versions and by this CPU's feature flags;
- a folder not owned by this user, or writable by group or others, is not used;
- a new build is compiled and run once on a tiny random model in a child process (`python -m
  generation.model.native_smoke FOLDER`); only when the child passed does the serving process load
  it, and the pass is written down (`SMOKE_FILE`: the library's, the source's and the CPU's
  hashes) so later starts skip the child. A child that faults or fails leaves the Python step
  serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch

NAME = "muse_quantised_step"
SOURCE = Path(__file__).with_name("native") / "quantised_step.cpp"
# Every file the build reads: a change to any of them is a new build, run in a child again.
SOURCES = (SOURCE, SOURCE.with_name("int4_rows.cpp"), SOURCE.with_name("int4_rows.h"))
ROOT = Path(__file__).resolve().parents[2]  # where the child imports `generation` from
SMOKE_FILE = "smoke.json"
CPUINFO = Path("/proc/cpuinfo")
# Tests only: make the child fault (`sigill`, `segv`) after its build, as a build for another
# CPU would at its first step.
FAULT = "MUSE_TEST_NATIVE_FAULT"
# How many rows multiply int4 weights without a copy (native/int4_rows.cpp reads it at every
# call). `WITHOUT_AMX` is set in the serving process where a child's first run faulted with AMX
# and passed without it (a virtual machine may announce AMX and fault on it): the VNNI way (the
# AVX512-BF16 one where the build has no VNNI).
NO_AMX = "MUSE_INT4_ROWS"
WITHOUT_AMX = "vnni"
CHILD_TIMEOUT_S = 900.0  # a first compile takes tens of seconds, minutes on a busy small machine


def cpu_features() -> str:
    """This CPU's feature flags (the `flags` line of /proc/cpuinfo, ARM's `Features`), else what
    the platform and torch say of it."""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return " ".join(sorted(value.split()))
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{platform.machine()} {platform.processor()} {capability}"


def cpu_key(features: str | None = None) -> str:
    """A short hash of the CPU's feature flags (default: this CPU's)."""
    return hashlib.sha256((features or cpu_features()).encode()).hexdigest()[:12]


def source_key() -> str:
    """A short hash of where the C++ source lives. torch's builder writes the source's path into
    the folder's build.ninja, so two checkouts sharing one folder would rebuild it in turn (and a
    build killed meanwhile leaves a lock that stalls the other): each checkout gets its own."""
    return hashlib.sha256(str(SOURCE.resolve()).encode()).hexdigest()[:8]


def build_folder(root: Path, features: str | None = None) -> Path:
    """The build folder under `root` for this Python, torch, CPU (`features`) and checkout."""
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    version = torch.__version__.replace("+", "_")
    return root / f"{NAME}_{python}_torch{version}_flags{cpu_key(features)}_src{source_key()}"


def unsafe(path: Path) -> str | None:
    """Why `path` may not be loaded from (another owner, writable by group or others), or None."""
    info = path.lstat()
    if info.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def make_folder(folder: Path) -> None:
    """Create `folder` 0700 (its parents as the umask says); OSError where it cannot be."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)


def library(folder: Path) -> Path:
    return folder / f"{NAME}.so"


def load_extension(folder: Path) -> ModuleType:
    """torch's extension builder on `folder`: compiles when the source changed, then imports."""
    from torch.utils.cpp_extension import load

    # -fopenmp: at::parallel_for splits its work over torch's threads only in code compiled
    # with OpenMP; without it every loop ran on one thread.
    return load(
        name=NAME,
        sources=[str(path) for path in SOURCES if path.suffix == ".cpp"],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        verbose=False,
    )


def passed(folder: Path) -> bool:
    """Whether a child already built and ran the library now in `folder` on this CPU."""
    try:
        smoke = json.loads((folder / SMOKE_FILE).read_text())
        # A record without the kernel's race is an older child's: it runs again, and races.
        return smoke.items() >= smoke_record(folder).items() and "many_rows" in smoke
    except (OSError, ValueError, AttributeError):
        return False


def amx_passed(folder: Path) -> bool:
    """Whether the child that passed in `folder` ran with the AMX kernel allowed."""
    try:
        return bool(json.loads((folder / SMOKE_FILE).read_text()).get("amx", True))
    except (OSError, ValueError, AttributeError):
        return True


def kernel_beats_copy(folder: Path, kind: str) -> bool:
    """Whether the many-rows kernel's way `kind` (`int4_rows_kind()`) multiplies as fast as the
    bf16 copy or faster: AMX's always, the others as the child that passed in `folder`
    measured them on this CPU (`native_smoke.race`)."""
    if kind == "amx":
        return True
    try:
        kernel_ms, copy_ms = json.loads((folder / SMOKE_FILE).read_text())["many_rows"][kind]
        return float(kernel_ms) <= float(copy_ms)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def build_in_child(folder: Path) -> str | None:
    """Build and run the step in a child process; None when it passed, else why not. A child
    that died of SIGILL is run once more with the many-rows kernel kept off AMX (`NO_AMX`):
    where that one passes, the step serves without AMX (`amx_passed`)."""
    failed = _child(folder, {})
    if failed is None or "died of SIGILL" not in failed:
        return failed
    return None if _child(folder, {NO_AMX: WITHOUT_AMX}) is None else failed


def _child(folder: Path, extra_env: dict[str, str]) -> str | None:
    command = [sys.executable, "-m", "generation.model.native_smoke", str(folder)]
    try:
        # Off in the child: its model's step must not start a build of its own.
        env = {**os.environ, "MUSE_NATIVE_STEP": "0", **extra_env}
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"its build did not finish in {CHILD_TIMEOUT_S:.0f} s"
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return f"its first run in a child process died of {name}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return f"its build failed: {lines[-1] if lines else f'exit {done.returncode}'}"
    return None


def smoke_record(folder: Path) -> dict[str, str]:
    """What a child that passed writes down: the library it ran, from which source, on which
    CPU (a new source is rebuilt, and so run in a child again)."""
    return {"library": digest(library(folder)), "source": digest(*SOURCES), "cpu": cpu_key()}


def digest(*paths: Path) -> str:
    """A hash of the files' contents, in order."""
    hashed = hashlib.sha256()
    for path in paths:
        hashed.update(hashlib.sha256(path.read_bytes()).digest())
    return hashed.hexdigest()
