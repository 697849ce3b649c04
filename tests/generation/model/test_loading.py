"""Model loading: the GGUF conversion cache, a local folder as a Hugging Face model, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from generation.errors import ModelLoadError
from generation.model.loading import default_model_path, load_model


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory) -> tuple[Path, object]:
    """One real conversion into an empty cache (about 17 s)."""
    cache = tmp_path_factory.mktemp("cache")
    return cache, load_model(None, "cpu", cache)


def test_gguf_is_converted_once_then_loaded_from_the_cache(fresh_cache):
    cache, first = fresh_cache
    assert not first.from_cache
    folders = [p for p in cache.iterdir()]
    assert len(folders) == 1 and not folders[0].name.startswith(".")  # no half-written folder
    assert {"config.json", "model.safetensors", "muse.json", "generation_config.json"} <= {
        p.name for p in folders[0].iterdir()
    }
    assert "quantization_config" not in (folders[0] / "config.json").read_text()
    again = load_model(None, "cpu", cache)
    assert again.from_cache and again.load_s < first.load_s
    assert again.revision == first.revision and len(again.revision) == 64


def test_cached_model_gives_the_same_logits_as_the_gguf(fresh_cache):
    from transformers import AutoModelForCausalLM

    _, converted = fresh_cache
    path = default_model_path()
    direct = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    ids = converted.tokenizer("The lighthouse keeper", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, converted.model(ids).logits)


def test_a_local_folder_loads_like_a_hugging_face_model(fresh_cache):
    cache, _ = fresh_cache
    folder = next(p for p in cache.iterdir())
    local = load_model(str(folder), "cpu", cache)
    assert local.model_id == str(folder) and not local.from_cache
    assert local.tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/nowhere/model.gguf", "does not exist"),
        ("/nowhere/folder", "Could not load the model '/nowhere/folder'"),
        ("someone/not-a-model-here", "Set MUSE_MODEL"),
    ],
)
def test_a_model_that_fails_to_load_says_which_and_what_to_do(tmp_path, spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec, "cpu", tmp_path)


def test_a_bad_device_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="MUSE_DEVICE"):
        load_model(None, "tpu", tmp_path)


def test_muse_generate_streams_to_the_terminal(fresh_cache):
    cache, _ = fresh_cache
    env = {**os.environ, "MUSE_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "generate",
            "--task",
            "dialogue",
            "--characters",
            "Innkeeper, Stranger",
            "--lines",
            "2",
            "--max-tokens",
            "24",
            "--seed",
            "1",
            "a tavern",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Innkeeper:")
    assert "tokens in" in result.stderr and "tokens/s" in result.stderr


def test_muse_generate_explains_bad_fields(fresh_cache):
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "generate", "--task", "poem", "--form", "ode", "rain"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "form must be one of free, haiku, sonnet, limerick" in result.stderr
