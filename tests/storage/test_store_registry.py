"""Personas per channel, the models registry, and a guild's default model."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from datetime import UTC, datetime

import pytest

from storage.errors import ModelExists
from storage.rows import GuildSettings, ModelRecord, Persona
from storage.store import Store


async def test_personas_set_replace_get_and_clear(store: Store, clock) -> None:
    assert await store.get_persona(10) is None
    pirate = await store.set_persona(1, 10, "Pirate", "Talk like a pirate.")
    assert pirate == Persona(10, 1, "Pirate", "Talk like a pirate.", clock.now)
    assert await store.get_persona(10) == pirate
    with pytest.raises(FrozenInstanceError):
        pirate.name = "Parrot"  # type: ignore[misc]
    clock.advance(minutes=1)
    bard = await store.set_persona(1, 10, "Bard", "Speak in verse.")
    assert (bard.name, bard.prompt, bard.updated_utc) == ("Bard", "Speak in verse.", clock.now)
    await store.set_persona(1, 11, "Butler", "Be formal.")
    assert await store.get_persona(10) == bard
    assert await store.clear_persona(10) is True
    assert await store.clear_persona(10) is False
    assert await store.get_persona(10) is None
    assert (await store.get_persona(11)).name == "Butler"
    for name, prompt in (("", "x"), ("x", "  ")):
        with pytest.raises(ValueError):
            await store.set_persona(1, 12, name, prompt)


def _record(name: str, **changes) -> ModelRecord:
    record = ModelRecord(
        name=name, base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        adapter_path=f"/models/{name}", method="sft",
        data={"rows": 120, "export": "sft"}, metrics={"eval_loss": 1.25},
    )  # fmt: skip
    return replace(record, **changes)


async def test_register_get_and_list_models(store: Store, clock) -> None:
    assert await store.get_model("muse-v1") is None
    registered = clock.now
    await store.register_model(_record("muse-v1"))
    clock.advance(days=1)
    await store.register_model(_record("muse-v2", method="dpo"))
    older = datetime(2024, 1, 1, tzinfo=UTC)
    await store.register_model(_record("imported", created_utc=older))
    first = await store.get_model("muse-v1")
    assert first == _record("muse-v1", created_utc=registered)
    assert (first.data, first.metrics, first.retired) == (
        {"rows": 120, "export": "sft"}, {"eval_loss": 1.25}, False,
    )  # fmt: skip
    assert [m.name for m in await store.list_models()] == ["muse-v2", "muse-v1", "imported"]
    assert (await store.get_model("imported")).created_utc == older


async def test_a_taken_name_needs_replace(store: Store, clock) -> None:
    await store.register_model(_record("muse-v1"))
    with pytest.raises(ModelExists) as caught:
        await store.register_model(_record("muse-v1", method="kto"))
    assert caught.value.name == "muse-v1" and "muse-v1" in str(caught.value)
    assert (await store.get_model("muse-v1")).method == "sft"
    clock.advance(hours=1)
    await store.register_model(_record("muse-v1", method="kto"), replace=True)
    replaced = await store.get_model("muse-v1")
    assert (replaced.method, replaced.created_utc) == ("kto", clock.now)
    with pytest.raises(ValueError):
        await store.register_model(_record(" "))
    with pytest.raises(TypeError):
        await store.register_model(_record("odd", data={"when": object()}))
    assert await store.get_model("odd") is None


async def test_retire_and_bring_back(store: Store) -> None:
    await store.register_model(_record("old"))
    await store.register_model(_record("new"))
    assert await store.retire_model("old") is True
    assert await store.retire_model("old") is False
    assert await store.retire_model("never") is False
    assert (await store.get_model("old")).retired is True
    assert [m.name for m in await store.list_models()] == ["new"]
    assert {m.name for m in await store.list_models(include_retired=True)} == {"old", "new"}
    with pytest.raises(ModelExists):
        await store.register_model(_record("old"))  # retired, but the name is still taken
    await store.register_model(_record("old"), replace=True)
    assert (await store.get_model("old")).retired is False
    await store.register_model(_record("gone", retired=True))
    assert (await store.get_model("gone")).retired is True
    assert "gone" not in {m.name for m in await store.list_models()}


async def test_a_guild_default_model(store: Store) -> None:
    settings = await store.update_guild_settings(5, default_model="muse-v2", temperature=0.7)
    assert settings == GuildSettings(temperature=0.7, default_model="muse-v2")
    assert (await store.get_guild_settings(5)).default_model == "muse-v2"
    assert settings.to_json() == '{"default_model": "muse-v2", "temperature": 0.7}'
    reset = await store.update_guild_settings(5, default_model=None)
    assert reset == GuildSettings(temperature=0.7)
    assert reset.to_json() == '{"temperature": 0.7}'
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError, match="default_model"):
            await store.update_guild_settings(5, default_model=bad)
    assert await store.get_guild_settings(5) == reset


async def test_a_model_keeps_its_owner_contributors_and_why_it_was_retired(store: Store) -> None:
    owned = _record("guild-style", owner_guild_id=100, contributors=("b2", "a1", "b2"))
    await store.register_model(owned)
    await store.register_model(_record("host-wide"))
    got = await store.get_model("guild-style")
    assert (got.owner_guild_id, got.contributors) == (100, ("a1", "b2"))  # sorted, once each
    assert got.visible_to(100) and not got.visible_to(200) and not got.visible_to(None)
    assert (await store.get_model("host-wide")).visible_to(200)
    assert await store.retire_model("guild-style", "a member's /forget")
    retired = await store.get_model("guild-style")
    assert retired.retired and retired.retired_reason == "a member's /forget"
