"""Edits (✏️): a member's corrected text stored as a finished generation under the original."""

from __future__ import annotations

import sqlite3

import pytest

from storage.errors import GenerationGone
from storage.store import Store


async def test_an_edit_copies_the_prompt_and_keeps_its_own_place(
    store: Store, clock, make_generation
) -> None:
    original = await make_generation(
        user_id=1, output="The dragon sleeped.", fields={"topic": "dragon"},
        model_revision="abc", channel_id=30, message_id=40,
    )  # fmt: skip
    regeneration = await make_generation(user_id=2, parent_id=original)
    clock.advance(minutes=5)
    edit_id = await store.record_edit(
        regeneration, 3, "The dragon slept.", guild_id=100, channel_id=31, message_id=41
    )
    source = await store.get_generation(regeneration)
    edit = await store.get_generation(edit_id)
    assert (edit.source, source.source) == ("edit", "model")
    assert (edit.parent_id, edit.root_id, edit.user_id) == (regeneration, original, 3)
    assert (edit.guild_id, edit.channel_id, edit.message_id) == (100, 31, 41)
    for name in ("task", "fields", "messages", "params", "model_id", "model_revision"):
        assert getattr(edit, name) == getattr(source, name), name
    assert (edit.output, edit.status, edit.finish_reason) == ("The dragon slept.", "done", "stop")
    assert edit.created_utc == edit.finished_utc == clock.now
    assert (edit.tokens_in, edit.tokens_out, edit.total_ms) == (None, None, None)
    await store.set_message_id(edit_id, 42)
    await store.set_followup_message_ids(edit_id, [43])
    edit = await store.get_generation(edit_id)
    assert (edit.message_id, edit.followup_message_ids) == (42, (43,))


async def test_edits_are_refused_for_gone_originals_and_unchanged_text(
    store: Store, make_generation
) -> None:
    original = await make_generation(output="  Same words.\n")
    for text in ("", "   \n", "Same words.", "\nSame words.  "):
        with pytest.raises(ValueError):
            await store.record_edit(original, 2, text, guild_id=None, channel_id=None)
    with pytest.raises(GenerationGone) as missing:
        await store.record_edit(999, 2, "new", guild_id=None, channel_id=None)
    assert missing.value.reason == "missing or forgotten"
    await store.mark_deleted(original)
    with pytest.raises(GenerationGone) as deleted:
        await store.record_edit(original, 2, "new", guild_id=None, channel_id=None)
    assert deleted.value.reason == "deleted"


async def test_an_edit_of_a_running_or_failed_reply(store: Store, make_generation) -> None:
    running = await make_generation(status="running")
    failed = await make_generation(status="failed", output="cut o")
    for original in (running, failed):
        edit = await store.record_edit(original, 2, "cut off", guild_id=1, channel_id=2)
        assert (await store.get_generation(edit)).status == "done"


async def test_children_are_direct_and_not_deleted(store: Store, make_generation) -> None:
    root = await make_generation()
    first = await make_generation(parent_id=root)
    edit = await store.record_edit(root, 5, "Better.", guild_id=100, channel_id=1)
    gone = await make_generation(parent_id=root)
    await store.mark_deleted(gone)
    await make_generation(parent_id=first)  # a grandchild
    assert [g.id for g in await store.children(root)] == [first, edit]
    assert [g.source for g in await store.children(root)] == ["model", "edit"]
    assert await store.children(edit) == []
    assert await store.children(12345) == []


async def test_an_edit_joins_the_conversation_but_not_its_history(
    store: Store, make_generation
) -> None:
    thread = await store.create_conversation(777, user_id=1)
    turn = await make_generation(
        task="chat", messages=[{"role": "user", "content": "q"}], output="a",
        conversation_id=thread.id,
    )  # fmt: skip
    edit = await store.record_edit(turn, 2, "a, edited", guild_id=100, channel_id=777)
    assert (await store.get_generation(edit)).conversation_id == thread.id
    assert await store.conversation_history(thread.id, 100) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


async def test_the_schema_refuses_an_unknown_source(store: Store, db_path, make_generation):
    generation_id = await make_generation()
    with sqlite3.connect(db_path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE generations SET source = 'human' WHERE id = ?", (generation_id,))
