"""llama-cpp-python's OpenAI-compatible server in a child process, on a free loopback port.

Used by `benchmarks/throughput.py` and by the remote-backend tests (a session fixture), which
import it from here. (llama.cpp's own `llama-server` is `benchmarks/llama_build.py`'s.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bot.cli.engine_process import free_port
from generation.model.loading import default_model_path

# `python -m llama_cpp.server`, with the model's weights kept out of ggml's "extra" CPU buffers
# (AMX and repacked layouts): llama-cpp-python 0.3.36 built natively on a CPU with AMX (this
# machine's) segfaults in `ggml_backend_amx_mul_mat` at the first decode otherwise.
LAUNCH = """
import runpy
import llama_cpp.llama_cpp as llama_cpp
default_params = llama_cpp.llama_model_default_params
def model_params():
    params = default_params()
    params.use_extra_bufts = False
    return params
llama_cpp.llama_model_default_params = model_params
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


class LlamaServer:
    """llama-cpp-python's server serving a GGUF (default: Muse's default model).

    Requests are served one after another (`--interrupt_requests False`: a new request waits
    instead of cutting the one streaming, which llama-cpp-python does by default). One thread by
    default: OpenMP's spinning threads crawl on a busy 2-core machine.
    """

    def __init__(
        self, model: Path | None = None, n_ctx: int = 2048, threads: int | None = None
    ) -> None:
        self.model = Path(model or default_model_path())
        self.n_ctx = n_ctx
        self.threads = threads or 1
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 90.0) -> LlamaServer:
        """Start the server and wait until it lists its model; raise with its log if it dies."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise RuntimeError(
                "llama-cpp-python is not installed: `make test` installs it "
                "(`pip install -c constraints.txt 'llama-cpp-python[server]'`)"
            )
        # Its own arguments: see `python -m llama_cpp.server --help`.
        command = [
            sys.executable,
            "-c",
            LAUNCH,
            "--model",
            str(self.model),
            "--model_alias",
            self.model.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.threads),
            "--interrupt_requests",
            "False",
            "--verbose",
            "False",
        ]
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the file
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-cpp-python's server exited:\n{self.log_tail()}")
            if self.models() is not None:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama-cpp-python's server did not start:\n{self.log_tail()}")

    def models(self) -> list[str] | None:
        """The model ids `GET /v1/models` lists; None while the server does not answer."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                return [m["id"] for m in json.load(resp)["data"]]
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
