"""/forget removes every row about a user; the retention purge removes old generations."""

from __future__ import annotations

import io

import pytest

from storage.export_rows import Pseudonyms
from storage.rows import ModelRecord
from storage.store import Store
from tests.storage.peek import foreign_key_problems, rows, tables_with

SECRET = "the secret words of user one"


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _rows_mentioning(database, user_id: int) -> dict[str, int]:
    found = {}
    for table in tables_with(database, "user_id"):
        count = rows(database, f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", user_id)[0][0]
        if count:
            found[table] = count
    return found


async def test_forget_user_removes_everything_about_them(store: Store, database, make_generation):
    g1 = await make_generation(user_id=1, messages=_user(SECRET))
    await store.record_feedback(g1, 2, thumbs="up")
    await store.record_feedback(g1, 1, thumbs="up")  # a self-vote
    g2 = await make_generation(user_id=2, messages=_user(SECRET), parent_id=g1)  # 🔁 by user 2
    await store.record_feedback(g2, 3, stars=5)
    g3 = await make_generation(user_id=2, messages=_user("user two's own prompt"))
    g4 = await make_generation(user_id=2, messages=_user("user two's own prompt"))
    await store.record_feedback(g3, 1, thumbs="down")  # user 1's vote on someone else's
    await store.record_feedback(g3, 3, thumbs="up")
    await store.record_comparison("two", g3, g4, 1, "A")
    await store.record_comparison("two", g3, g4, 3, "B")
    mine = await store.create_conversation(500, user_id=1)  # user 1's thread
    await make_generation(user_id=1, task="chat", messages=_user(SECRET), conversation_id=mine.id)
    await make_generation(user_id=2, task="chat", messages=_user("hi"), conversation_id=mine.id)
    theirs = await store.create_conversation(600, user_id=3)  # user 3's thread
    g7 = await make_generation(
        user_id=3, task="chat", messages=_user("q"), conversation_id=theirs.id
    )
    await make_generation(user_id=1, task="chat", messages=_user(SECRET), conversation_id=theirs.id)
    await make_generation(
        user_id=3, task="chat", messages=_user(SECRET), conversation_id=theirs.id
    )  # a later turn whose history repeats user 1's words
    await store.set_opted_out(1, True)
    await store.mark_notice_shown(1)

    counts = await store.forget_user(1)

    assert counts == {
        "generations": 6,  # g1, its regeneration g2, two in user 1's thread, two in user 3's
        "feedback": 4,  # on g1 by users 2 and 1, on g2 by user 3, user 1's on g3
        "feedback_events": 4,
        "comparisons": 1,
        "conversations": 1,
        "users": 1,
        "models": 0,
    }
    assert _rows_mentioning(database, 1) == {}
    assert sorted(r[0] for r in rows(database, "SELECT id FROM generations")) == [g3, g4, g7]
    assert rows(database, "SELECT user_id FROM feedback") == [(3,)]
    assert rows(database, "SELECT user_id FROM comparisons") == [(3,)]
    assert rows(database, "SELECT thread_id FROM conversations") == [(600,)]
    assert foreign_key_problems(database) == []
    salt = rows(database, "SELECT value FROM meta")[0][0]
    raw = io.StringIO()
    await store.export("raw", raw)
    assert raw.getvalue().count("\n") == 3
    assert SECRET not in raw.getvalue()
    assert Pseudonyms(salt).of(1) not in raw.getvalue()
    assert await store.forget_user(1) == dict.fromkeys(counts, 0)
    assert await store.mark_notice_shown(1) is True  # a forgotten user is a new user


async def test_forget_reaches_edits(store: Store, database, make_generation) -> None:
    mine = await make_generation(user_id=1, messages=_user(SECRET), output="mine")
    theirs = await make_generation(user_id=2, messages=_user("user two's prompt"), output="theirs")
    of_mine = await store.record_edit(mine, 2, "user two's edit of mine", guild_id=1, channel_id=1)
    edit_chain = await store.record_edit(of_mine, 3, "and user three's", guild_id=1, channel_id=1)
    my_edit = await store.record_edit(theirs, 1, "user one's edit", guild_id=1, channel_id=1)
    await store.record_feedback(of_mine, 3, thumbs="up")
    await store.record_feedback(my_edit, 2, thumbs="down")
    await store.record_feedback(theirs, 1, stars=2)
    await store.record_feedback(theirs, 3, stars=5)

    counts = await store.forget_user(1)

    # mine, the two edits under it (they repeat user 1's prompt), and user 1's own edit
    assert counts == {
        "generations": 4, "feedback": 3, "feedback_events": 3, "comparisons": 0,
        "conversations": 0, "users": 0, "models": 0,
    }  # fmt: skip
    assert _rows_mentioning(database, 1) == {}
    for gone in (mine, of_mine, edit_chain, my_edit):
        assert await store.get_generation(gone) is None
    assert [g.id for g in await store.children(theirs)] == []
    assert (await store.get_generation(theirs)).output == "theirs"
    assert rows(database, "SELECT generation_id, user_id FROM feedback") == [(theirs, 3)]
    raw = io.StringIO()
    await store.export("raw", raw)
    assert SECRET not in raw.getvalue() and "user one's edit" not in raw.getvalue()


async def test_forgetting_an_editor_keeps_the_later_turns(store: Store, make_generation) -> None:
    thread = await store.create_conversation(700, user_id=3)
    turn = await make_generation(user_id=3, task="chat", output="a", conversation_id=thread.id)
    edit = await store.record_edit(turn, 1, "a, edited", guild_id=1, channel_id=700)
    later = await make_generation(user_id=3, task="chat", output="b", conversation_id=thread.id)
    assert (await store.forget_user(1))["generations"] == 1  # the history never showed the edit
    assert await store.get_generation(edit) is None
    assert [await store.get_generation(g) is not None for g in (turn, later)] == [True, True]


async def test_forgotten_generation_cannot_be_rated(store: Store, make_generation) -> None:
    generation_id = await make_generation(user_id=1)
    await store.forget_user(1)
    with pytest.raises(LookupError):
        await store.record_feedback(generation_id, 2, thumbs="up")
    assert await store.get_generation(generation_id) is None


async def test_purge_older_than(store: Store, clock, make_generation) -> None:
    old_thread = await store.create_conversation(1, user_id=1)
    old = await make_generation(user_id=1, conversation_id=old_thread.id)
    old_b = await make_generation(user_id=2)
    await store.record_feedback(old, 2, thumbs="up")
    await store.record_feedback(old, 3, thumbs="down")
    await store.record_comparison("p", old, old_b, 3, "A")
    clock.advance(days=40)
    child = await make_generation(user_id=2, parent_id=old)  # a recent regeneration of it
    new_thread = await store.create_conversation(2, user_id=1)
    await store.record_feedback(child, 1, stars=4)

    counts = await store.purge_older_than(30)

    assert counts == {
        "generations": 2, "feedback": 2, "feedback_events": 2, "comparisons": 1,
        "conversations": 1,
    }  # fmt: skip
    assert await store.get_generation(old) is None
    survivor = await store.get_generation(child)
    assert survivor is not None and survivor.parent_id is None and survivor.root_id == old
    assert await store.get_conversation(2) == new_thread
    assert await store.purge_older_than(30) == dict.fromkeys(counts, 0)
    with pytest.raises(ValueError):
        await store.purge_older_than(0)


async def test_forget_retires_every_model_the_members_rows_trained(store: Store) -> None:
    mine, theirs = await store.pseudonym(1), await store.pseudonym(2)
    assert mine != theirs and mine == await store.pseudonym(1)
    for name, contributors in (("with-me", (mine, theirs)), ("without-me", (theirs,))):
        record = ModelRecord(name, "base", f"/a/{name}", "sft", contributors=contributors)
        await store.register_model(record)
    assert await store.models_trained_on(1) == ["with-me"]
    assert (await store.forget_user(1))["models"] == 1
    retired = await store.get_model("with-me")
    assert retired.retired and "/forget" in (retired.retired_reason or "")
    assert not (await store.get_model("without-me")).retired
    assert await store.models_trained_on(1) == []
