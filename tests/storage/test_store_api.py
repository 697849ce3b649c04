"""The store's face for the bot: generations, conversations, settings, users."""

from __future__ import annotations

import pytest

from storage.errors import ConversationGone, GenerationGone
from storage.rows import GuildSettings
from storage.store import Store


async def test_record_then_finish_a_generation(store: Store, clock, prompt) -> None:
    generation_id = await store.record_generation(
        user_id=11, guild_id=22, channel_id=33, task="poem", messages=prompt,
        params={"seed": 42, "temperature": 0.9}, model_id="smol", model_revision="abc123",
        fields={"topic": "rain", "form": "haiku"},
    )  # fmt: skip
    assert isinstance(generation_id, int)
    running = await store.get_generation(generation_id)
    assert running.status == "running" and running.output is None
    assert running.root_id == generation_id and running.parent_id is None
    assert running.created_utc == clock.now
    clock.advance(seconds=3)
    await store.set_message_id(generation_id, 44)
    await store.finish_generation(generation_id, "Rain falls", "length", 30, 64, 120.5, 3000.0)
    done = await store.get_generation(generation_id)
    assert (done.status, done.output, done.finish_reason) == ("done", "Rain falls", "length")
    assert (done.tokens_in, done.tokens_out, done.ttft_ms, done.total_ms) == (30, 64, 120.5, 3000)
    assert (done.user_id, done.guild_id, done.channel_id, done.message_id) == (11, 22, 33, 44)
    assert done.messages == prompt and done.params == {"seed": 42, "temperature": 0.9}
    assert done.fields == {"topic": "rain", "form": "haiku"}
    assert (done.model_id, done.model_revision) == ("smol", "abc123")
    assert done.finished_utc == clock.now


async def test_failed_generation_keeps_its_error(store: Store, make_generation) -> None:
    generation_id = await make_generation(status="running")
    await store.finish_generation(
        generation_id, "", "error", 5, 0, None, 10.0, status="failed", error="CUDA OOM"
    )
    failed = await store.get_generation(generation_id)
    assert (failed.status, failed.error, failed.ttft_ms) == ("failed", "CUDA OOM", None)


async def test_invalid_input_is_refused_before_writing(store: Store) -> None:
    with pytest.raises(ValueError, match="chat message"):
        await store.record_generation(
            user_id=1, task="story", messages=[{"role": "robot", "content": "x"}],
            params={}, model_id="m",
        )  # fmt: skip
    with pytest.raises(ValueError, match="status"):
        await store.finish_generation(1, "x", "stop", 1, 1, 1.0, 1.0, status="running")


async def test_regenerations_share_the_root(store: Store, make_generation) -> None:
    first = await make_generation()
    second = await make_generation(parent_id=first, user_id=2)
    third = await make_generation(parent_id=second, user_id=3)
    assert (await store.get_generation(third)).root_id == first
    assert (await store.get_generation(third)).parent_id == second
    with pytest.raises(GenerationGone):
        await make_generation(parent_id=9999)


async def test_deleted_generation(store: Store, make_generation, clock) -> None:
    generation_id = await make_generation(status="running")
    await store.mark_deleted(generation_id)
    await store.mark_deleted(generation_id)  # idempotent
    await store.finish_generation(generation_id, "late", "stop", 1, 1, 1.0, 1.0)
    deleted = await store.get_generation(generation_id)
    assert (deleted.status, deleted.output, deleted.deleted_utc) == ("deleted", "late", clock.now)
    with pytest.raises(GenerationGone) as caught:
        await store.record_feedback(generation_id, 5, thumbs="up")
    assert caught.value.reason == "deleted"


async def test_missing_generation(store: Store) -> None:
    assert await store.get_generation(12345) is None
    for call in (
        store.finish_generation(12345, "x", "stop", 1, 1, 1.0, 1.0),
        store.set_message_id(12345, 1),
        store.mark_deleted(12345),
        store.record_feedback(12345, 1, stars=3),
    ):
        with pytest.raises(GenerationGone):
            await call


async def test_recent_generations(store: Store, make_generation) -> None:
    a = await make_generation(user_id=1, guild_id=100)
    b = await make_generation(user_id=1, guild_id=200)
    c = await make_generation(user_id=1, guild_id=100)
    d = await make_generation(user_id=1, guild_id=100)
    await make_generation(user_id=2, guild_id=100)
    await store.mark_deleted(d)
    assert [g.id for g in await store.recent_generations(1)] == [c, b, a]
    assert [g.id for g in await store.recent_generations(1, guild_id=100)] == [c, a]
    assert [g.id for g in await store.recent_generations(1, limit=1)] == [c]


async def test_conversations_and_history(store: Store, make_generation) -> None:
    assert await store.get_conversation(777) is None
    conversation = await store.create_conversation(777, user_id=1, guild_id=100, channel_id=5)
    assert await store.create_conversation(777, user_id=2) == conversation  # idempotent
    assert await store.get_conversation(777) == conversation
    history: list[dict[str, str]] = []
    for n in range(4):
        messages = [*history, {"role": "user", "content": f"q{n}"}]
        await make_generation(
            task="chat", messages=messages, output=f"answer {n}", conversation_id=conversation.id
        )
        history = [*messages, {"role": "assistant", "content": f"answer {n}"}]
    await make_generation(
        task="chat", messages=[{"role": "user", "content": "q4"}], output="cut off",
        conversation_id=conversation.id, status="cancelled",
    )  # fmt: skip

    def words(text: str) -> int:  # "qN" is one token, "answer N" two
        return len(text.split())

    assert await store.conversation_history(conversation.id, 100, count_tokens=words) == (history)
    assert await store.conversation_history(conversation.id, 6, count_tokens=words) == [
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "answer 2"},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "answer 3"},
    ]
    assert await store.conversation_history(conversation.id, 2, count_tokens=words) == []
    assert await store.conversation_history(999, 100) == []
    with pytest.raises(ConversationGone):
        await make_generation(conversation_id=999)


async def test_guild_settings(store: Store) -> None:
    assert await store.get_guild_settings(5) == GuildSettings()
    updated = await store.update_guild_settings(
        5, temperature=0.5, enabled_tasks=["story", "poem"], channels=[10, 11]
    )
    assert updated == GuildSettings(
        temperature=0.5, enabled_tasks=("story", "poem"), channels=(10, 11)
    )
    again = await store.update_guild_settings(5, max_tokens=256, temperature=None)
    assert again == GuildSettings(
        max_tokens=256, enabled_tasks=("story", "poem"), channels=(10, 11)
    )
    assert await store.get_guild_settings(5) == again
    assert await store.get_guild_settings(6) == GuildSettings()
    with pytest.raises(ValueError, match="unknown"):
        await store.update_guild_settings(5, colour="red")
    with pytest.raises(ValueError, match="temperature"):
        await store.update_guild_settings(5, temperature=3.5)


async def test_privacy_flags_and_first_use_notice(store: Store) -> None:
    assert await store.is_opted_out(1) is False
    await store.set_opted_out(1, True)
    assert await store.is_opted_out(1) is True
    await store.set_opted_out(1, False)
    assert await store.is_opted_out(1) is False
    assert await store.mark_notice_shown(1) is True
    assert await store.mark_notice_shown(1) is False
    assert await store.mark_notice_shown(2) is True
