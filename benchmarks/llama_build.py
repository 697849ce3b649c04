"""llama.cpp's own `llama-server`, built once from llama-cpp-python's source and cached.

`python benchmarks/llama_build.py` prints the binary's path (building it first: about 12 minutes
on 2 cores). The build is the llama.cpp that llama-cpp-python 0.3.36 vendors, so the peer is the
same code the remote-backend tests serve the default GGUF with. It lands under
`.venv/muse-llama-server/` by a temporary name and a rename: a killed build leaves nothing that
looks finished.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".venv" / "muse-llama-server"
BINARY = CACHE / f"llama-server-{VERSION}"


def llama_server_binary(log=print) -> Path:
    """The cached binary, built first when it is missing."""
    if BINARY.exists():
        return BINARY
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        work = Path(scratch)
        log(f"building llama-server from llama-cpp-python {VERSION} (about 12 minutes)...")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"llama-cpp-python=={VERSION}",
                "-d",
                str(work),
            ]
        )
        archive = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = work / "build"
        _run(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build),
                "-G",
                "Ninja",
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
            ]
        )
        _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", "2"])
        partial = CACHE / f".{BINARY.name}.partial"
        shutil.copy2(build / "bin" / "llama-server", partial)
        partial.replace(BINARY)
    return BINARY


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    print(llama_server_binary(log=lambda line: print(line, file=sys.stderr)))
