"""The written-out decoding step (generation/model/llama_step.py) against transformers' own forward:
the same numbers, bit for bit, on the real default model with each kind of weights, for batches
with and without padding, and for rows routed through an adapter. (The C++ step of an int
model: tests/generation/model/test_native_step.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from generation.model import prefill_mode
from generation.model.adapters import Adapters
from generation.model.batch_runner import BatchRunner, KVBatch
from generation.model.llama_step import LlamaStep
from generation.model.loading import LoadedModel, with_weights
from generation.model.prompting import encode_messages
from tests.generation.helpers import ask

PROMPTS = ["Write a poem about the sea.", "List three fruits.", "Describe a lighthouse."]


def transformers_step(runner: BatchRunner, batch: KVBatch, tokens: list[int]) -> torch.Tensor:
    """A decoding step through the model's own forward (what `BatchRunner.step` did before)."""
    ids = torch.tensor(tokens).unsqueeze(1)
    mask = F.pad(batch.mask, (0, 1), value=1)
    with torch.inference_mode():
        logits = runner._forward(ids, mask, batch.lengths.unsqueeze(1), batch.cache, batch.slots)
    batch.mask, batch.lengths = mask, batch.lengths + 1
    return logits


def steps_agree(runner: BatchRunner, prompts: list[list[int]], slots: list[int], steps: int = 4):
    ours, _ = runner.prefill(prompts, slots=slots)
    theirs, logits = runner.prefill(prompts, slots=slots)
    for _ in range(steps):
        tokens = [int(t) for t in logits.argmax(-1)]
        logits = transformers_step(runner, theirs, tokens)
        assert torch.equal(runner.step(ours, tokens), logits)
    assert all(
        torch.equal(a.keys, b.keys)
        for a, b in zip(ours.cache.layers, theirs.cache.layers, strict=True)
    )


@pytest.mark.parametrize("kind", ["fp32", "int8", "int4"])
def test_the_step_gives_transformers_numbers_bit_for_bit(fp32: LoadedModel, kind: str):
    loaded = with_weights(fp32, kind, copy=True) if kind != "fp32" else fp32
    runner = BatchRunner(loaded.model, loaded.tokenizer.pad_token_id)
    assert runner._decode is not None  # the default model is a Llama
    # Rows of an int model take the C++ step, which agrees to rounding only
    # (tests/generation/model/test_native_step.py); here the Python step's rows.
    assert (runner._decode.native is not None) == (kind != "fp32")
    runner._decode.native = None
    prompts = [encode_messages(loaded.tokenizer, ask(p).messages, 4096) for p in PROMPTS]
    steps_agree(runner, prompts[:1], [0])  # one row: no mask at all
    steps_agree(runner, [prompts[0], prompts[1][:7], prompts[2]], [0, 0, 0])  # left padding
    many = [prompt[: len(prompt) - i] for i in range(4) for prompt in prompts]
    assert len(many) >= prefill_mode.WIDE_ROWS  # int4: the bf16 weights
    steps_agree(runner, many, [0] * len(many), steps=2)


def test_rows_through_an_adapter_get_transformers_numbers_too(fp32: LoadedModel, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(4)
    folder = tmp_path / "bold"
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(copy.deepcopy(fp32.model), config).save_pretrained(folder)
    loaded = with_weights(fp32, "int4", copy=True)
    adapters = Adapters(loaded.model, loaded.model_id)
    slot = adapters.add("bold", folder)
    runner = BatchRunner(loaded.model, loaded.tokenizer.pad_token_id, adapters)
    runner._decode.native = None  # rows without an adapter would take the C++ step
    prompts = [encode_messages(loaded.tokenizer, ask(p).messages, 4096) for p in PROMPTS[:2]]
    steps_agree(runner, prompts, [slot, 0])
    steps_agree(runner, prompts, [0, 0])  # with an adapter served but no row using it
    adapters.remove_all()


def test_only_llama_layers_take_the_written_out_step(fp32: LoadedModel):
    assert LlamaStep.supports(fp32.model)
    other = copy.deepcopy(fp32.model.config)
    other.attention_bias = True  # a bias the step does not add
    assert not LlamaStep.supports(type("Model", (), {"config": other})())
