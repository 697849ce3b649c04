"""The server-sent-events decoder, fed the way a network delivers bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from generation.remote.sse import SSEDecoder

STREAM = (
    ": keep-alive comment\r\n\r\n"
    'data: {"a": "é"}\r\n\r\n'
    "event: ignored\n"
    "data: line one\n"
    "data: line two\n\n"
    "id: 7\rdata:no space\r\r"
    "data: [DONE]\n\n"
).encode()
EVENTS = ['{"a": "é"}', "line one\nline two", "no space", "[DONE]"]


def test_whole_stream_at_once():
    assert SSEDecoder().feed(STREAM) == EVENTS


def test_one_byte_at_a_time():
    decoder = SSEDecoder()
    assert [event for i in range(len(STREAM)) for event in decoder.feed(STREAM[i : i + 1])] == (
        EVENTS
    )


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=8))
def test_any_split_gives_the_same_events(cuts):
    decoder = SSEDecoder()
    bounds = [0, *sorted(cuts), len(STREAM)]
    pieces = [STREAM[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    events = [event for piece in pieces for event in decoder.feed(piece)]
    assert events == EVENTS


def test_an_event_cut_off_by_the_end_of_the_stream_is_dropped():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"partial"') == []
    assert decoder.close() == []
