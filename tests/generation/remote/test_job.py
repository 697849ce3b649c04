"""A remote request's text: the response prefix, stop strings and Retry-After (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from generation.remote.http import retry_after_s as _retry_after
from generation.remote.job import RemoteJob
from tests.generation.helpers import ask


def job(**kwargs) -> RemoteJob:
    return RemoteJob(ask("hi", **kwargs), 16, "model")


def drain(job: RemoteJob) -> list:
    items = []
    while not job.outbox.empty():
        items.append(job.outbox.get_nowait())
    return items


async def test_a_server_that_continues_the_prefix():
    remote = job(response_prefix="Innkeeper:")
    for delta in [" Welcome", ", traveller."]:
        remote.add(delta)
    remote.finish("stop")
    chunks = drain(remote)
    assert chunks[-1].text == "Innkeeper: Welcome, traveller."
    assert "".join(c.delta for c in chunks) == chunks[-1].text


async def test_a_server_that_restates_the_prefix_does_not_show_it_twice():
    remote = job(response_prefix="Innkeeper:")
    for delta in ["Inn", "keeper", ":", " Welcome."]:
        remote.add(delta)
    remote.finish("stop")
    chunks = drain(remote)
    assert chunks[-1].text == "Innkeeper: Welcome."
    assert "".join(c.delta for c in chunks) == chunks[-1].text


async def test_an_answer_shorter_than_the_prefix_is_shown_whole():
    remote = job(response_prefix="Innkeeper:")
    remote.add("Inn")
    remote.finish("length")
    assert drain(remote)[-1].text == "Innkeeper:Inn"


async def test_a_stop_string_split_over_deltas_is_never_shown():
    remote = job(stop=("END",))
    assert not remote.add("one two E")
    assert remote.add("ND three")
    remote.finish("stop")
    chunks = drain(remote)
    assert chunks[-1].text == "one two "
    assert all("E" not in c.text for c in chunks)


async def test_usage_from_the_server_wins_over_counted_deltas():
    remote = job()
    remote.apply({"model": "m", "choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]})
    remote.apply({"choices": [{"delta": {"content": " there"}, "finish_reason": "length"}]})
    assert drain(remote)[-1].tokens_out == 2 and remote.server_reason == "length"
    remote.apply({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    remote.finish("length")
    last = drain(remote)[-1]
    assert (last.tokens_in, last.tokens_out, last.model_id, last.text) == (9, 3, "m", "Hi there")


def test_retry_after_in_seconds_or_as_a_date():
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < _retry_after(later) <= 30
