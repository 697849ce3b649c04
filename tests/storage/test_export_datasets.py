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
