"""LoRA adapters served beside the base model: each row writes what PEFT writes with its adapter,
whatever else shares the batch; refused folders, unknown names, the prefix cache, out of memory,
cancelling and adding an adapter at run time."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from generation.engine.local_engine import Engine, EngineConfig
from generation.errors import AdapterError, UnknownModel
from generation.model.adapters import RoutedLinear
from generation.model.loading import LoadedModel
from generation.model.prefix_cache import PrefixCache
from generation.model.prompting import encode_messages
from generation.types import GenerationChunk, GenerationRequest, Message

TOKENS = 16
SYSTEM = (
    "You are the narrator of a fantasy tavern game. Answer in two short lines of dialogue, "
    "each starting with the speaker's name and a colon, and never break character."
)
SEA = "Write a poem about the sea."
WIZARD = "Tell me a long story about a wizard who lost his hat in the swamp."
FRUITS = "List three fruits."
Reference = Callable[..., str]


@pytest.fixture(scope="module")
def base(loaded: LoadedModel) -> LoadedModel:
    """A model of this module's own: engines here install adapter layers into it (and take
    them out when they stop), which the session's shared model must never see."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


@pytest.fixture(scope="module")
def folders(base: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two PEFT adapters, `x` and `y`, with random (non-trivial) LoRA weights."""
    root = tmp_path_factory.mktemp("adapters")
    made = {}
    for seed, name in enumerate(["x", "y"], start=1):
        torch.manual_seed(seed)
        config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(copy.deepcopy(base.model), config).save_pretrained(root / name)
        made[name] = root / name
    return made


@pytest.fixture(scope="module")
def reference(base: LoadedModel, folders: dict[str, Path]) -> Reference:
    """PEFT's own greedy `generate` with adapter `x`, `y` or none (None) active."""
    model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(folders["x"]), "x")
    model.load_adapter(str(folders["y"]), adapter_name="y")
    model.eval()
    tokenizer = base.tokenizer
    memo: dict[tuple, str] = {}

    def generate(text: str, adapter: str | None, system: str | None = None) -> str:
        key = (text, adapter, system)
        if key not in memo:
            ids = torch.tensor([encode_messages(tokenizer, messages(text, system), 4096)])
            options = dict(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=TOKENS,
                do_sample=False,
                repetition_penalty=1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
            with torch.inference_mode():
                if adapter is None:
                    with model.disable_adapter():
                        out = model.generate(**options)
                else:
                    model.set_adapter(adapter)
                    out = model.generate(**options)
            memo[key] = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        return memo[key]

    return generate


@pytest.fixture
async def serve(base: LoadedModel) -> AsyncIterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(**kwargs) -> Engine:
        config = EngineConfig(**{k: v for k, v in kwargs.items() if k in EngineConfig.__slots__})
        extra = {k: v for k, v in kwargs.items() if k not in EngineConfig.__slots__}
        engine = Engine(lambda: base, config, **extra).start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()
    # A stopped engine gives the model its own layers back.
    assert not any(isinstance(m, RoutedLinear) for m in base.model.modules())


def messages(text: str, system: str | None = None) -> tuple[Message, ...]:
    return ((Message("system", system),) if system else ()) + (Message("user", text),)


def greedy(text: str, model: str | None = None, system: str | None = None, **kwargs):
    kwargs.setdefault("max_new_tokens", TOKENS)
    return GenerationRequest(
        messages=messages(text, system),
        temperature=0.0,
        repetition_penalty=1.0,
        model=model,
        **kwargs,
    )


async def chunks_of(engine: Engine, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.stream(request)]


async def test_an_adapter_writes_what_peft_writes_alone_and_beside_other_models(
    serve, base, folders, reference
):
    engine = serve(adapters=folders, prefix_cache_mb=0)
    await engine.wait_ready()
    assert engine.models() == [base.model_id, "x", "y"]
    alone = await engine.generate(greedy(SEA, "x"))
    assert alone.text == reference(SEA, "x") and alone.model_id == "x"
    assert alone.text != reference(SEA, None)  # the adapter does change the text

    # Prompts of different lengths: one prefill pads them left, then they decode together.
    asked = [(SEA, "x"), (FRUITS, None), (WIZARD, "y"), (FRUITS, "x"), (SEA, "y")]
    engine.max_rows_seen = 0
    together = await asyncio.gather(*(chunks_of(engine, greedy(t, m)) for t, m in asked))
    assert engine.max_rows_seen == len(asked)
    for (text, model), chunks in zip(asked, together, strict=True):
        assert chunks[-1].text == reference(text, model), (text, model)
        assert {c.model_id for c in chunks} == {model or base.model_id}


async def test_base_rows_write_the_same_with_adapters_loaded_and_nothing_is_installed_without(
    serve, base, folders, reference
):
    plain = serve()
    await plain.wait_ready()
    assert plain.models() == [base.model_id]
    assert not any(isinstance(m, RoutedLinear) for m in base.model.modules())
    without = [(await plain.generate(greedy(t))).text for t in (SEA, FRUITS)]
    await plain.aclose()

    engine = serve(adapters=folders)
    await engine.wait_ready()
    assert any(isinstance(m, RoutedLinear) for m in base.model.modules())
    with_adapters = await asyncio.gather(*(engine.generate(greedy(t)) for t in (SEA, FRUITS)))
    assert [r.text for r in with_adapters] == without == [reference(t, None) for t in (SEA, FRUITS)]
    assert {r.model_id for r in with_adapters} == {base.model_id}


def spoil(source: Path, target: Path, how: str) -> Path:
    """A copy of the adapter folder `source`, broken in one way."""
    target.mkdir()
    if how == "empty":
        return target
    (target / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    weights = source / "adapter_model.safetensors"
    if how == "truncated":
        (target / weights.name).write_bytes(weights.read_bytes()[:1000])
    elif how == "misshapen":  # made for a model with narrower layers
        tensors = load_file(weights)
        save_file(
            {k: v[:, :100].contiguous() if "lora_A" in k else v for k, v in tensors.items()},
            target / weights.name,
        )
    elif how == "base-weight":  # one more tensor: a base layer's own weight, doubled
        tensors = load_file(weights)
        lora_a = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
        layer = lora_a.removesuffix(".lora_A.weight")
        size = (tensors[layer + ".lora_B.weight"].shape[0], tensors[lora_a].shape[1])
        save_file(
            {**tensors, layer + ".base_layer.weight": torch.ones(size)}, target / weights.name
        )
    else:  # a setting of adapter_config.json: "dora", "init=pissa", "base=someone/else"
        setting, _, value = how.partition("=")
        config = json.loads((source / "adapter_config.json").read_text())
        config |= {
            "dora": {"use_dora": True},
            "init": {"init_lora_weights": value},
            "base": {"base_model_name_or_path": value},
            "unknown": {"muse_future_setting": value},
        }[setting]
        (target / "adapter_config.json").write_text(json.dumps(config))
        (target / weights.name).write_bytes(weights.read_bytes())
    return target


async def test_refused_adapters_are_logged_by_name_and_why_and_the_others_serve(
    serve, base, folders, reference, tmp_path, caplog
):
    broken = {
        "emptied": ("empty", "has no adapter_config.json"),
        "truncated": ("truncated", "adapter_model.safetensors cannot be read"),
        "misshapen": ("misshapen", "size mismatch"),
        "dora": ("dora", "DoRA"),
        "other-base": ("base=HuggingFaceTB/SmolLM2-360M-Instruct", "not on the served base model"),
    }
    adapters = {
        name: spoil(folders["y"], tmp_path / name, how) for name, (how, _) in broken.items()
    }
    caplog.set_level(logging.ERROR, logger="muse.generation.model.adapters")
    engine = serve(adapters={"x": folders["x"], **adapters, "y": folders["y"]})
    await engine.wait_ready()
    assert engine.models() == [base.model_id, "x", "y"]
    logged = [record.getMessage() for record in caplog.records]
    for name, (_, why) in broken.items():
        assert any(f"adapter {name!r} refused" in line and why in line for line in logged), name
    with pytest.raises(UnknownModel, match="misshapen"):
        engine.stream(greedy(SEA, "misshapen"))
    results = await asyncio.gather(*(engine.generate(greedy(SEA, m)) for m in ("x", None, "y")))
    assert [r.text for r in results] == [reference(SEA, m) for m in ("x", None, "y")]


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights by name, with served adapters' layers around them or not."""
    state = model.state_dict().items()
    return {name.replace(".base_layer", ""): tensor.clone() for name, tensor in state}


async def test_an_adapter_that_would_rewrite_the_base_is_refused_before_peft_runs_it(
    serve, base, folders, reference, tmp_path, caplog
):
    """PiSSA, OLoRA, CorDA... initialise from the base weights and write into them when PEFT
    loads the adapter; a tensor that is no LoRA factor would be loaded into them as it is."""
    crafted = {
        "pissa": ("init=pissa", 'init_lora_weights = "pissa"'),
        "olora": ("init=olora", 'init_lora_weights = "olora"'),
        "corda": ("init=corda", 'init_lora_weights = "corda"'),
        "pissa-fast": ("init=pissa_niter_4", "rewrite the base"),
        "base-weight": ("base-weight", "not a LoRA factor"),
        "unknown": ("unknown=on", "a setting Muse does not know"),
    }
    adapters = {
        name: spoil(folders["y"], tmp_path / name, how) for name, (how, _) in crafted.items()
    }
    before = weights_of(base.model)
    caplog.set_level(logging.ERROR, logger="muse.generation.model.adapters")
    engine = serve(adapters={**adapters, "x": folders["x"]})
    await engine.wait_ready()
    assert engine.models() == [base.model_id, "x"]
    logged = [record.getMessage() for record in caplog.records]
    for name, (_, why) in crafted.items():
        assert any(f"adapter {name!r} refused" in line and why in line for line in logged), name
    after = weights_of(base.model)
    assert [n for n in before if not torch.equal(before[n], after[n])] == []
    results = await asyncio.gather(*(engine.generate(greedy(SEA, m)) for m in (None, "x")))
    assert [r.text for r in results] == [reference(SEA, None), reference(SEA, "x")]


async def test_an_adapter_is_served_on_the_base_its_card_names_and_refused_on_another(
    serve, base, folders, tmp_path
):
    """`muse tune` writes the base it trained on into muse.json; that is what is checked."""
    card = {"base": {"id": base.model_id, "path": "/elsewhere", "revision": base.revision}}
    named = {
        "same": card,
        "other": {"base": {"id": "HuggingFaceTB/SmolLM2-360M-Instruct"}},
        "revised": {"base": {**card["base"], "revision": "0" * 64}},
    }
    adapters = {}
    for name, written in named.items():
        adapters[name] = spoil(folders["x"], tmp_path / name, "base=/elsewhere")
        (adapters[name] / "muse.json").write_text(json.dumps(written))
    engine = serve(adapters=adapters)
    await engine.wait_ready()
    assert engine.models() == [base.model_id, "same"]
    with pytest.raises(AdapterError, match="trained on 'HuggingFaceTB/SmolLM2-360M-Instruct'"):
        await engine.add_adapter("other-again", adapters["other"])
    if base.revision:
        with pytest.raises(AdapterError, match="revision 0000"):
            await engine.add_adapter("revised-again", adapters["revised"])


async def test_a_model_not_served_fails_at_stream_and_names_what_is(serve, base, folders):
    engine = serve(adapters={"x": folders["x"]})
    with pytest.raises(UnknownModel, match="'nope'"):  # before or after the engine is ready
        async for _ in engine.stream(greedy(FRUITS, "nope")):
            pass
    await engine.wait_ready()
    with pytest.raises(UnknownModel) as refused:
        engine.stream(greedy(FRUITS, "nope"))
    assert refused.value.served == [base.model_id, "x"]
    assert f"{base.model_id!r}, 'x'" in str(refused.value)
    by_id = await engine.generate(greedy(FRUITS, base.model_id, max_new_tokens=4))
    assert by_id.model_id == base.model_id and by_id.tokens_out > 0


def test_the_prefix_cache_offers_a_model_only_what_that_model_computed():
    cache = PrefixCache(budget_bytes=10_000, min_tokens=3, min_rest=1)
    block = [(torch.zeros(1, 1, 10, 2), torch.zeros(1, 1, 10, 2))]
    cache.add(list(range(10)), block, model=1)
    assert cache.match(list(range(12))) == (None, 0)  # the base model
    assert cache.match(list(range(12)), model=2) == (None, 0)
    assert cache.match(list(range(12)), model=1) == (tuple(range(10)), 10)
    cache.add(list(range(11)), block, model=0)  # extends it, but for another model: both stay
    assert len(cache) == 2 and cache.match(list(range(12)), model=1)[1] == 10


async def test_rows_reuse_remembered_beginnings_of_their_own_model_only(serve, folders, reference):
    engine = serve(adapters=folders)
    first = await engine.generate(greedy(SEA, "x", SYSTEM))
    later = [
        await engine.generate(greedy(WIZARD, model, SYSTEM)) for model in (None, "y", "x", None)
    ]
    assert [first.text, *(r.text for r in later)] == [
        reference(t, m, SYSTEM) for t, m in [(SEA, "x"), (WIZARD, None), (WIZARD, "y")]
    ] + [reference(WIZARD, "x", SYSTEM), reference(WIZARD, None, SYSTEM)]
    # Only the second `x` row and the second base row found a beginning of their own model's.
    assert engine.prefixes.hits == 2


async def test_out_of_memory_requeues_adapter_rows_and_they_resume_exactly(
    serve, folders, reference
):
    tripped = []

    def oom_once(phase, requests):
        if phase == "decode" and len(requests) == 4 and not tripped:
            tripped.append(len(requests))
            raise torch.OutOfMemoryError("injected OOM")

    engine = serve(adapters=folders, max_batch=4, fault_hook=oom_once)
    asked = [(SEA, "x"), (FRUITS, None), (WIZARD, "y"), (FRUITS, "x")]
    results = await asyncio.gather(*(engine.generate(greedy(t, m)) for t, m in asked))
    assert tripped == [4]
    assert [r.text for r in results] == [reference(t, m) for t, m in asked]
    assert [r.model_id for r in results][::2] == ["x", "y"]


async def test_cancelling_an_adapter_row_leaves_the_other_rows_text_as_it_was(
    serve, folders, reference
):
    engine = serve(adapters=folders, max_batch=4)
    victim = greedy(WIZARD, "x", max_new_tokens=200)
    stream = engine.stream(victim)
    others = [(FRUITS, None), (SEA, "y"), (SEA, "x")]
    survivors = [asyncio.create_task(engine.generate(greedy(t, m))) for t, m in others]
    async for chunk in stream:
        if chunk.tokens_out >= 2:
            engine.abort(victim.request_id)
        last = chunk
    assert last.finish_reason == "cancelled" and last.model_id == "x"
    assert [(await task).text for task in survivors] == [reference(t, m) for t, m in others]


async def test_an_adapter_added_at_run_time_serves_from_the_next_step(
    serve, base, folders, reference, tmp_path
):
    engine = serve()
    await engine.wait_ready()
    with pytest.raises(UnknownModel):
        engine.stream(greedy(SEA, "x"))
    running = engine.stream(greedy(SEA))  # a base row decoding while adapters arrive
    first = await anext(running)
    await engine.add_adapter("x", folders["x"])
    await engine.add_adapter("y", folders["y"])
    assert engine.models() == [base.model_id, "x", "y"]
    with pytest.raises(AdapterError, match="already served"):
        await engine.add_adapter("x", folders["y"])
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        await engine.add_adapter("empty", tmp_path)
    results = await asyncio.gather(*(engine.generate(greedy(SEA, m)) for m in ("x", "y")))
    chunks = [first, *[chunk async for chunk in running]]
    assert chunks[-1].text == reference(SEA, None)
    assert [r.text for r in results] == [reference(SEA, "x"), reference(SEA, "y")]
