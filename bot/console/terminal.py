"""The console's terminal: lines read off the event loop, text written and flushed at once.

Lines are read by one daemon thread, on demand: the event loop never blocks on stdin, and a
read still pending at exit (Ctrl-C) does not keep the process alive. Works the same on a
terminal, a pseudo-terminal, a pipe or a redirected file.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import TextIO

log = logging.getLogger("muse.bot.console.terminal")

_Request = tuple[asyncio.AbstractEventLoop, "asyncio.Future[str]"]


class Terminal:
    """`say`/`write` to `stdout`; `await read(prompt)` a line from `stdin` (None at the end)."""

    def __init__(self, stdin: TextIO, stdout: TextIO, interactive: bool | None = None) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self.interactive = stdin.isatty() if interactive is None else interactive
        self.at_eof = False
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def write(self, text: str) -> None:
        """Text as is (streamed deltas), flushed."""
        self._stdout.write(text)
        self._stdout.flush()

    def say(self, text: str = "") -> None:
        """One or more whole lines."""
        self.write(text + "\n")

    async def read(self, prompt: str = "", *, always: bool = False) -> str | None:
        """The next line without its newline; None at end of input (Ctrl-D, a closed pipe).

        `prompt` is shown on a terminal; with `always` it is shown as a line through a pipe too.
        """
        if self.at_eof:
            return None
        if prompt and self.interactive:
            self.write(prompt)
        elif prompt and always:
            self.say(prompt.rstrip())
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._pump, name="muse-stdin", daemon=True)
            self._thread.start()
        self._requests.put((loop, future))
        line = await future
        if not line:
            self.at_eof = True
            if self.interactive:
                self.say()  # Ctrl-D leaves the cursor after the prompt
            return None
        return line.rstrip("\r\n")

    def _pump(self) -> None:
        """The reader thread: one line per request, handed back to the requesting loop."""
        while True:
            loop, future = self._requests.get()
            try:
                line = self._stdin.readline()
            except (OSError, ValueError) as exc:  # a closed or undecodable stdin ends input
                log.warning("stdin: %s", exc)
                line = ""
            try:
                loop.call_soon_threadsafe(_settle, future, line)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                return


def _settle(future: asyncio.Future[str], line: str) -> None:
    if not future.done():
        future.set_result(line)
