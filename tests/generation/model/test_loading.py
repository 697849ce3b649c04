"""Model loading: the GGUF conversion cache, a local folder as a Hugging Face model, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from generation.errors import ModelLoadError
from generation.model.loading import default_model_path, load_model
from tests.generation.model.pages import resident


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


# --- the served cache (issue #28): int weights with their scales, mapped; MUSE_MEMORY -----------


def _served(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_the_cache_holds_the_served_int4_weights_and_no_float_copy(fresh_cache):
    cache, first = fresh_cache
    folder = next(p for p in cache.iterdir())
    tensors = _served(folder)
    layers = first.model.config.num_hidden_layers
    packed = {name: t for name, t in tensors.items() if name.endswith(".scales_and_zeros")}
    joined = {name for name in packed if ".qkv_proj." in name or ".gate_up_proj." in name}
    assert len(packed) == (7 + 2) * layers  # every projection int4, each part's scales kept
    assert len(joined) == 2 * layers  # query/key/value and gate/up stored joined
    for name in packed:
        weight = tensors.get(name.replace(".scales_and_zeros", ".weight"))
        if name in joined or ".o_proj." in name or ".down_proj." in name:
            assert weight.dtype == torch.uint8 and packed[name].dtype == torch.bfloat16
        else:  # a joined part: its weights are rows of the joined ones
            assert weight is None
    assert tensors["lm_head.weight"].dtype == torch.int8  # the head int8, as quantise does
    embeddings = "model.embed_tokens.weight"
    floats = [name for name, t in tensors.items() if t.is_floating_point() and t.dim() == 2]
    assert floats == [embeddings]  # no float linear layer: only the embeddings' lookup table
    linear = sum(m.weight.numel() for m in first.model.modules() if type(m) is torch.nn.Linear)
    served = sum(t.numel() * t.element_size() for name, t in tensors.items() if name != embeddings)
    assert served < linear  # under a byte a weight, where fp32 took 4


def test_the_joined_projections_are_mapped_from_the_cache_not_copied(fresh_cache):
    # A copy made at load (the step joining the layers with torch.cat) kept the weights resident
    # twice: the copy, and the file's pages it was read from.
    from functools import partial

    from generation.model.aligned_file import data_offset
    from generation.model.llama_step import LlamaStep

    cache, _ = fresh_cache
    model = load_model(None, "cpu", cache, "auto", memory="1MiB").model
    folder = next(p for p in cache.iterdir() if (p / "muse.json").is_file())
    file_offset = partial(data_offset, folder / "model.safetensors")

    embeddings = model.model.embed_tokens.weight
    mapping = embeddings.data_ptr() - file_offset("model.embed_tokens.weight")
    step = LlamaStep(model)
    for index, (mine, layer) in enumerate(zip(step.layers, model.model.layers, strict=True)):
        for parts, joined, name in [
            (mine.qkv, (layer.self_attn.q_proj, layer.self_attn.k_proj), "self_attn.qkv_proj"),
            (mine.gate_up, (layer.mlp.gate_proj, layer.mlp.up_proj), "mlp.gate_up_proj"),
        ]:
            assert len(parts) == 1  # one call for the group
            weight = parts[0].weight
            assert weight.data_ptr() - mapping == file_offset(f"model.layers.{index}.{name}.weight")
            first, second = joined
            assert first.weight.data_ptr() == weight.data_ptr()
            assert second.weight.data_ptr() == weight.data_ptr() + first.weight.nbytes


def test_a_served_model_once_dropped_leaves_nothing_behind(fresh_cache):
    # Its joined layers refer to their parts: kept anywhere but on the parts themselves (a
    # module-level table), they kept every layer, and the file's mapping, alive for good.
    import gc
    import weakref

    from generation.model.llama_step import LlamaStep

    cache, _ = fresh_cache
    model = load_model(None, "cpu", cache, "auto", memory="1MiB").model
    LlamaStep(model)
    part = weakref.ref(model.model.layers[0].self_attn.q_proj)
    del model
    gc.collect()
    assert part() is None


def test_a_cached_model_loads_again_with_the_same_logits_and_greedy_text(fresh_cache):
    cache, _ = fresh_cache
    one, two = (load_model(None, "cpu", cache, "auto") for _ in range(2))
    assert one.from_cache and two.from_cache
    ids = one.tokenizer("The lighthouse keeper", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(one.model(ids).logits, two.model(ids).logits)
        texts = [m.model.generate(ids, max_new_tokens=12, do_sample=False) for m in (one, two)]
    assert torch.equal(*texts)


def test_the_served_weights_are_those_quantised_from_the_exact_ones(fresh_cache):
    from generation.model.loading import with_weights

    cache, _ = fresh_cache
    served = load_model(None, "cpu", cache, "auto")
    quantised = with_weights(load_model(None, "cpu", cache, "fp32"), "int4")
    ids = served.tokenizer("The lighthouse keeper", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(served.model(ids).logits, quantised.model(ids).logits)


def test_muse_memory_decides_the_bf16_copy(fresh_cache, monkeypatch):
    from generation.model import memory
    from generation.model.memory import has_wide
    from generation.model.prefill_mode import prefilling
    from generation.model.quantize import Int4Linear, int4_matmul, int8_matmul

    cache, _ = fresh_cache
    small = load_model(None, "cpu", cache, "auto", memory="1MiB")
    # The weights are mapped from the cache where torch's kernels can read them: the int8 head
    # of many rows (a prefill's last tokens, a step of many requests) once crashed the process.
    assert all(t.data_ptr() % 64 == 0 for t in [*small.model.parameters(), *small.model.buffers()])
    head = small.model.lm_head
    rows = torch.randn(16, head.in_features)
    assert torch.equal(head(rows), int8_matmul(rows, head.weight.clone(), head.scales.clone()))
    roomy = load_model(None, "cpu", cache, "auto", memory="64GiB")
    assert not has_wide(small.model) and has_wide(roomy.model)
    assert small.model.lm_head.wide is None and roomy.model.lm_head.wide is not None
    monkeypatch.setattr(memory, "widens_int4", lambda: False)  # a CPU without AMX
    assert has_wide(load_model(None, "cpu", cache, "auto", memory="auto").model)  # a small copy
    monkeypatch.undo()
    layer = next(m for m in small.model.modules() if isinstance(m, Int4Linear))
    x = torch.randn(16, layer.in_features)
    with prefilling():  # many rows without the copy: the int4 kernel
        kernel = int4_matmul(x, layer.weight, layer.scales_and_zeros)
        assert torch.equal(layer(x), kernel)
    ids = small.tokenizer("The lighthouse keeper", return_tensors="pt").input_ids[:, :1]
    with torch.no_grad():  # one row takes the int4 kernel either way
        assert torch.equal(small.model(ids).logits, roomy.model(ids).logits)


def test_auto_keeps_no_large_bf16_copy(fresh_cache, monkeypatch):
    from generation.model import memory

    cache, _ = fresh_cache
    monkeypatch.setattr(memory, "widens_int4", lambda: False)  # a CPU without AMX
    monkeypatch.setattr(memory, "AUTO_WIDE_MAX", 8 << 20)  # as if the copy were a 1.7B model's
    auto = load_model(None, "cpu", cache, "auto").model
    assert 0 < memory.wide_kept_bytes(auto) <= 8 << 20  # as much as fits, and no more
    assert auto.lm_head.wide is None  # the head's copy (56 MiB) does not fit: layers' do
    roomy = load_model(None, "cpu", cache, "auto", memory="8GiB").model
    assert memory.wide_kept_bytes(roomy) == memory.wide_bytes(roomy)


def test_auto_keeps_only_the_head_s_copy_where_many_rows_widen_as_they_go(fresh_cache, monkeypatch):
    """With AMX the extension multiplies many rows of int4 weights about as fast without the
    copy (`generation/model/int4_rows.py`): `auto` keeps only the int8 head's (it has no such
    kernel); a size still keeps what fits."""
    from generation.model import memory
    from generation.model.quantize import Int4Linear

    cache, _ = fresh_cache
    monkeypatch.setattr(memory, "widens_int4", lambda: True)
    auto = load_model(None, "cpu", cache, "auto").model
    head = auto.lm_head
    assert head.wide is not None
    assert memory.wide_kept_bytes(auto) == 2 * head.in_features * head.out_features
    assert all(m.wide is None for m in auto.modules() if isinstance(m, Int4Linear))
    roomy = load_model(None, "cpu", cache, "auto", memory="8GiB").model
    assert memory.wide_kept_bytes(roomy) == memory.wide_bytes(roomy)


def test_a_small_memory_budget_keeps_the_remembered_prompts_small(monkeypatch):
    # The prefix cache's fp32 keys and values were 256 MiB whatever MUSE_MEMORY said: with a
    # 1.7B model, a third of the peak over llama.cpp's.
    from bot.cli.wiring import build_backend
    from bot.core.settings import Settings
    from generation.model.memory import prefix_cache_mb

    assert prefix_cache_mb("1GiB", 256) == 128 and prefix_cache_mb("256MiB", 256) == 32
    assert prefix_cache_mb("64GiB", 256) == 256  # never more than the engine's own cap
    monkeypatch.setenv("MUSE_MEMORY", "512MiB")
    engine = build_backend(Settings.load(env_file=None))
    try:
        assert engine.prefixes.budget_bytes == 64 * 2**20
    finally:
        engine.close()


def test_the_conversion_lets_go_of_each_gguf_tensor_it_has_read():
    # The reader maps the whole file: read through, an 8B model's 4.7 GB stayed resident to
    # the end of its conversion (6.8 GiB at peak, 4.1 without).
    from gguf import GGUFReader

    from generation.model.served_cache import _release

    reader = GGUFReader(str(default_model_path()))
    tensor = max(reader.tensors, key=lambda t: t.n_bytes)
    address = reader.data.ctypes.data + tensor.data_offset
    float(np.asarray(tensor.data, dtype=np.float32).sum())  # read, as the conversion does
    assert resident(address, tensor.n_bytes) > 0.9 * tensor.n_bytes
    _release(reader, tensor.data_offset, tensor.n_bytes)
    assert resident(address, tensor.n_bytes) < 0.1 * tensor.n_bytes


def test_a_killed_conversion_leaves_nothing_that_is_served(tmp_path):
    from generation.model.loading import _remove_killed_conversions, gguf_cache_folder

    code = (
        "import sys; from pathlib import Path; from generation.model.loading import convert_gguf;"
        "convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    folder = gguf_cache_folder(default_model_path(), tmp_path)
    child = subprocess.Popen([sys.executable, "-c", code, str(default_model_path()), str(folder)])
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob(".*")), "the conversion never started"
    finally:
        child.kill()
        child.wait()
    assert not folder.exists()  # nothing a start would load
    leftover = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    alive = tmp_path / f".{folder.name}-{os.getpid()}-running"  # a conversion still at work
    alive.mkdir()
    _remove_killed_conversions(folder)  # what the next conversion does first
    assert leftover and not any(p.exists() for p in leftover) and alive.is_dir()
