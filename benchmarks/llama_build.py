"""llama.cpp's own tools, built once from llama-cpp-python's source and cached: `llama-server`
(the peer), `llama-quantize` and the `convert_hf_to_gguf.py` script with its `gguf-py`
(`benchmarks/make_gguf.py`).

`python benchmarks/llama_build.py` prints the server binary's path (building the tools first:
about 12 minutes on 2 cores). The build is the llama.cpp that llama-cpp-python 0.3.36 vendors,
so the peer is the same code the remote-backend tests serve the default GGUF with. Everything
lands under `.venv/muse-llama-server/` by a temporary name and a rename: a killed build leaves
nothing that looks finished.
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
QUANTIZE = CACHE / f"llama-quantize-{VERSION}"
CONVERTER = CACHE / f"convert-{VERSION}"  # convert_hf_to_gguf.py and its gguf-py
TARGETS = {"llama-server": BINARY, "llama-quantize": QUANTIZE}


def llama_server_binary(log=print) -> Path:
    """The cached server binary, built first when it is missing."""
    _build(log)
    return BINARY


def llama_quantize_binary(log=print) -> Path:
    """The cached `llama-quantize`, built first when it is missing."""
    _build(log)
    return QUANTIZE


def convert_script(log=print) -> Path:
    """The cached `convert_hf_to_gguf.py` (beside its `conversion` package and `gguf-py`),
    taken from the same source (downloaded again if the build did not keep it)."""
    if not (CONVERTER / "conversion").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            _keep_converter(_source(Path(scratch)), Path(scratch))
    return CONVERTER / "convert_hf_to_gguf.py"


def _build(log) -> None:
    if all(path.exists() for path in TARGETS.values()):
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        work = Path(scratch)
        log(f"building llama.cpp's tools from llama-cpp-python {VERSION} (about 12 minutes)...")
        source = _source(work)
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
        _run(["cmake", "--build", str(build), "--target", *TARGETS, "-j", "2"])
        for name, final in TARGETS.items():
            partial = CACHE / f".{final.name}.partial"
            shutil.copy2(build / "bin" / name, partial)
            partial.replace(final)
        _keep_converter(source, work)


def _source(work: Path) -> Path:
    """llama.cpp's source as llama-cpp-python vendors it, downloaded and unpacked into `work`."""
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
    return next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))


def _keep_converter(source: Path, work: Path) -> None:
    """Copy the converter script and what it imports out of `source` into `CONVERTER`."""
    converter = work / "converter"
    converter.mkdir()
    shutil.copy2(source / "convert_hf_to_gguf.py", converter)
    for package in ("conversion", "gguf-py"):
        shutil.copytree(source / package, converter / package)
    shutil.rmtree(CONVERTER, ignore_errors=True)
    converter.replace(CONVERTER)


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    print(llama_server_binary(log=lambda line: print(line, file=sys.stderr)))
