"""Server-sent events: bytes in, the `data` of each complete event out (a pure decoder).

The part of the SSE format that OpenAI-compatible servers use: `data:` lines (several join with a
newline), comment lines starting with `:`, other fields ignored, a blank line ends an event.
Lines may end with `\\n`, `\\r\\n` or `\\r`, and a network read may end anywhere, even inside a
multi-byte character.
"""

from __future__ import annotations

import codecs


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the data of every event completed by them."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += self._text.decode(chunk)
        events: list[str] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            end, after = cut
            line, self._buffer = self._buffer[:end], self._buffer[after:]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def close(self) -> list[str]:
        """The stream ended: an event without its blank line is incomplete and is dropped."""
        self._buffer += self._text.decode(b"", final=True)
        self._buffer, self._data = "", []
        return []

    def _line(self, line: str) -> str | None:
        if not line:
            if not self._data:
                return None
            event, self._data = "\n".join(self._data), []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


def _line_end(buffer: str) -> tuple[int, int] | None:
    """(end of the first line, start of the next) or None while the line is incomplete."""
    newline, carriage = buffer.find("\n"), buffer.find("\r")
    if carriage == -1 or -1 < newline < carriage:
        return None if newline == -1 else (newline, newline + 1)
    if carriage + 1 == len(buffer):
        return None  # maybe the first half of "\r\n": wait for more
    return carriage, carriage + (2 if buffer[carriage + 1] == "\n" else 1)
