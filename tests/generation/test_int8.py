"""`MUSE_WEIGHTS=int8`: weight-only int8 linear layers, on the real default model.

The engine's batching tests run on these weights too with MUSE_TEST_WEIGHTS=int8; here the
layer itself, the quality guard against fp32 and the paths the CPU default must keep working
(mixed batches, adapters) run in every test run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from generation.adapters import Adapters
from generation.kv_batch import BatchRunner
from generation.models import (
    LoadedModel,
    ModelLoadError,
    describe,
    load_model,
    weights_for,
    with_weights,
)
from generation.prompting import encode_messages
from generation.quantize import KERNEL_ROWS, Int8Linear, quantise_int8
from tests.generation.conftest import ask, logit_tolerance

PROMPTS = [
    "Write two lines of dialogue for a blacksmith in a fantasy game.",
    "Write a poem about the sea.",
    "Tell me a story about a wizard who lost his hat.",
    "List three fruits.",
    "Describe a haunted lighthouse.",
    "Write a product description for a lantern.",
]


@pytest.fixture(scope="module")
def fp32(model_cache_dir) -> LoadedModel:
    """The exact weights, whatever MUSE_TEST_WEIGHTS gives the session's model."""
    return load_model(None, "cpu", model_cache_dir, "fp32")


@pytest.fixture(scope="module")
def int8(fp32: LoadedModel) -> LoadedModel:
    return with_weights(fp32, "int8", copy=True)


def test_an_int8_layer_computes_what_its_weights_stand_for_with_few_rows_and_many():
    torch.manual_seed(0)
    linear = nn.Linear(576, 1536, bias=True)
    layer = Int8Linear(linear)
    assert layer.weight.dtype == torch.int8 and isinstance(layer, nn.Linear)
    for rows in (1, KERNEL_ROWS, KERNEL_ROWS + 1, 200):  # the int8 kernel, then widened weights
        x = torch.randn(2, rows, 576)
        want = F.linear(x, layer.dequantised().float(), linear.bias.detach())
        got = layer(x)
        assert got.dtype == x.dtype and got.shape == (2, rows, 1536)
        assert (got - want).abs().max() < 0.05 * want.abs().max()
    # And what they stand for is close to the original weights: half a step of each row's
    # scale, plus the scale's and the result's bf16 rounding (within two steps in all).
    error = (layer.dequantised().float() - linear.weight).abs().max()
    assert error <= 2 * linear.weight.abs().max() / 127


def test_quantising_replaces_every_linear_layer_and_unties_the_head(fp32: LoadedModel):
    model = torch.nn.Module()
    model.inner = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    assert quantise_int8(model) == 2
    assert all(type(m) is not nn.Linear for m in model.modules())
    copy = with_weights(fp32, "int8", copy=True)
    head, embeddings = copy.model.lm_head, copy.model.get_input_embeddings()
    assert isinstance(head, Int8Linear) and embeddings.weight.dtype == torch.float32
    assert describe(copy) == "int8 + torch.float32" and describe(fp32) == "torch.float32"
    assert type(fp32.model.lm_head) is nn.Linear  # the copy left the original alone


def test_weights_choices_and_their_refusals(fp32: LoadedModel):
    assert weights_for(torch.device("cpu"), "auto") == "int8"
    assert weights_for(torch.device("cuda"), "auto") == "native"
    with pytest.raises(ModelLoadError, match="MUSE_WEIGHTS='int4' is not one of"):
        weights_for(torch.device("cpu"), "int4")
    assert with_weights(fp32, None) is fp32 and with_weights(fp32, "fp32") is fp32


def test_quality_guard_int8_logits_stay_within_tolerance_of_fp32(
    fp32: LoadedModel, int8: LoadedModel
):
    """The guard the CPU default is held to, on fp32's own greedy text (teacher-forced, 32
    tokens, six prompts): the same top token at ≥ 90 % of the positions, every disagreement a
    near tie for fp32 (its two best within 1 logit), and no logit more than 3 away. (Measured:
    181/192 positions agree, the widest tie that flipped 0.56, the largest difference 2.15.)"""
    agree = positions = 0
    for text in PROMPTS:
        want, got = teacher_forced(fp32, int8, text)
        best = want.topk(2).values
        margin = best[:, 0] - best[:, 1]
        same = want.argmax(-1) == got.argmax(-1)
        assert bool((margin[~same] < 1.0).all()), (text, margin[~same])
        assert float((want - got).abs().max()) < 3.0, text
        agree, positions = agree + int(same.sum()), positions + len(same)
    assert agree >= 0.9 * positions, (agree, positions)


def teacher_forced(
    reference: LoadedModel, other: LoadedModel, text: str, tokens: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' next-token logits along `reference`'s greedy continuation of `text`."""
    ids = encode_messages(reference.tokenizer, ask(text).messages, 4096)
    with torch.inference_mode():
        prompt = torch.tensor([ids])
        whole = reference.model.generate(prompt, max_new_tokens=tokens, do_sample=False)
        span = slice(len(ids) - 1, -1)
        want = reference.model(whole).logits[0, span].float()
        got = other.model(whole).logits[0, span].float()
    return want, got


def test_rows_in_one_batch_match_each_row_alone(int8: LoadedModel):
    runner = BatchRunner(int8.model, int8.tokenizer.pad_token_id)
    prompts = [encode_messages(int8.tokenizer, ask(p).messages, 4096) for p in PROMPTS[:4]]
    _, together = runner.prefill(prompts)
    for row, ids in enumerate(prompts):
        _, alone = runner.prefill([ids])
        assert (together[row] - alone[0]).abs().max() < logit_tolerance(int8)  # bf16 rounding
        best = alone[0].topk(2).values  # so the top token moves only where it was a near tie
        if int(together[row].argmax()) != int(alone[0].argmax()):
            assert float(best[0] - best[1]) < 2 * logit_tolerance(int8)


def test_an_adapter_loads_onto_int8_weights_and_routes_per_row(
    fp32: LoadedModel, tmp_path, int8: LoadedModel
):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
    folder = tmp_path / "strong"
    get_peft_model(copy.deepcopy(fp32.model), config).save_pretrained(folder)
    adapters = Adapters(int8.model, int8.model_id)
    slot = adapters.add("strong", folder)
    runner = BatchRunner(int8.model, int8.tokenizer.pad_token_id, adapters)
    ids = encode_messages(int8.tokenizer, ask(PROMPTS[0]).messages, 4096)
    _, both = runner.prefill([ids, ids], slots=[0, slot])
    _, base = runner.prefill([ids], slots=[0])
    _, adapted = runner.prefill([ids], slots=[slot])
    assert (both[0] - base[0]).abs().max() < 0.5  # the base row is the base model
    assert (both[1] - adapted[0]).abs().max() < 0.5  # the adapted row its adapter
    assert (adapted[0] - base[0]).abs().max() > 1.0  # and the adapter changes it
    adapters.remove_all()
    assert all(type(m) is Int8Linear for n, m in int8.model.named_modules() if n.endswith("q_proj"))
