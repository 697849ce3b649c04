"""Exports load with `datasets` into the columns and types TRL's trainers expect."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import datasets
import pytest

from storage.store import Store

CHAT = {"role": datasets.Value("string"), "content": datasets.Value("string")}


def _load(path: Path, cache: Path) -> datasets.Dataset:
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


def _is_chat(feature: object) -> bool:
    return isinstance(feature, datasets.List) and dict(feature.feature) == CHAT


async def _write(store: Store, fmt: str, path: Path) -> int:
    out = io.StringIO()
    count = await store.export(fmt, out)
    await asyncio.to_thread(path.write_text, out.getvalue(), encoding="utf-8")
    return count


@pytest.fixture
async def files(store: Store, rated, tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for fmt in ("sft", "dpo", "kto", "raw"):
        paths[fmt] = tmp_path / f"{fmt}.jsonl"
        assert await _write(store, fmt, paths[fmt]) > 0
    return paths


async def test_trl_columns_and_types(files: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "hf-cache"
    sft, dpo, kto, raw = await asyncio.to_thread(
        lambda: [_load(files[fmt], cache) for fmt in ("sft", "dpo", "kto", "raw")]
    )
    assert sft.num_rows == 3 and _is_chat(sft.features["messages"])
    assert [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]

    assert dpo.num_rows == 2
    for column in ("prompt", "chosen", "rejected"):
        assert _is_chat(dpo.features[column]), column
    assert dpo[0]["chosen"][0]["role"] == "assistant"

    assert kto.num_rows == 4 and _is_chat(kto.features["prompt"])
    assert _is_chat(kto.features["completion"])
    assert kto.features["label"] == datasets.Value("bool")
    assert kto["label"] == [True, False, True, True]

    for dataset in (sft, dpo, kto, raw):
        assert "metadata" in dataset.column_names
    assert sft.features["metadata"]["self_vote"] == datasets.Value("bool")
    assert raw.num_rows == 9 and _is_chat(raw.features["messages"])
    assert isinstance(raw.features["feedback"], datasets.List)


async def test_with_edits_every_format_loads(
    store: Store, edited, make_generation, tmp_path: Path
) -> None:
    thread = await store.create_conversation(900, user_id=3, guild_id=100, channel_id=300)
    turn = await make_generation(user_id=3, output="hi", conversation_id=thread.id)
    await store.set_followup_message_ids(turn, [901, 902])
    paths = {}
    for fmt in ("sft", "dpo", "kto", "raw"):
        paths[fmt] = tmp_path / f"{fmt}-edits.jsonl"
        await _write(store, fmt, paths[fmt])
    cache = tmp_path / "hf-cache"
    sft, dpo, kto, raw = await asyncio.to_thread(
        lambda: [_load(paths[fmt], cache) for fmt in ("sft", "dpo", "kto", "raw")]
    )
    string = datasets.Value("string")
    assert sft.num_rows == 7 and _is_chat(sft.features["messages"])
    assert [m["source"] for m in sft["metadata"]] == ["model"] * 3 + ["edit"] * 4
    assert sft.features["metadata"]["source"] == sft.features["metadata"]["persona"] == string
    assert [m["persona"] for m in sft["metadata"]].count("Pirate") == 1

    assert dpo.num_rows == 5
    for column in ("prompt", "chosen", "rejected"):
        assert _is_chat(dpo.features[column]), column
    assert [m["source"] for m in dpo["metadata"]] == ["comparison", "takes", "edit", "edit", "edit"]
    assert [m["chosen"]["source"] for m in dpo["metadata"]][2:] == ["edit"] * 3
    assert dpo.features["metadata"]["chosen"]["source"] == string

    assert kto.num_rows == 8 and kto.features["label"] == datasets.Value("bool")
    assert kto["label"] == [True, False, True, True, True, True, True, True]
    assert kto.features["metadata"]["source"] == string

    assert raw.num_rows == 16 and raw["source"].count("edit") == 5
    for column in ("guild_id", "channel_id", "message_id", "thread_id"):
        assert raw.features[column] == string, column
    assert raw.features["followup_message_ids"] == datasets.List(string)
