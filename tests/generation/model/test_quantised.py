"""`MUSE_WEIGHTS=int8` / `int4`: weight-only quantised linear layers, on the real default model.

The engine's batching tests run on these weights too with MUSE_TEST_WEIGHTS=int8 / int4; here
the layers themselves, the quality guard against fp32 and the paths the CPU default must keep
working (mixed batches, adapters) run in every test run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from generation.model import prefill_mode
from generation.model.adapters import Adapters
from generation.model.agreement import teacher_forced
from generation.model.batch_runner import BatchRunner
from generation.model.bf16_products import plain_weights
from generation.model.fusion import fuse
from generation.model.loading import (
    LoadedModel,
    ModelLoadError,
    default_model_path,
    describe,
    gguf_weight_bits,
    weights_for,
    with_weights,
)
from generation.model.prefill_mode import prefilling
from generation.model.prompting import encode_messages
from generation.model.quantize import GROUP, Int4Linear, Int8Linear, quantise
from tests.generation.helpers import ask, logit_tolerance
from tests.generation.model.guards import GUARDS, PROMPTS

LAYERS = {"int8": Int8Linear, "int4": Int4Linear}


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_a_quantised_layer_computes_what_its_weights_stand_for_with_few_rows_and_many(kind):
    torch.manual_seed(0)
    linear = nn.Linear(576, 1536, bias=True)
    layer = LAYERS[kind](linear)
    assert isinstance(layer, nn.Linear) and layer.weight.dtype in (torch.int8, torch.uint8)
    x = torch.randn(2, 100, 576)
    want = F.linear(x, layer.dequantised().float(), linear.bias.detach())
    with prefilling():  # bf16 weights
        wide = layer(x)
    flat = x.view(-1, 576)  # one row a call: the int kernel
    kernel = torch.cat([layer(flat[i : i + 1]) for i in range(len(flat))]).view_as(wide)
    for got in (wide, kernel):
        assert got.dtype == x.dtype and got.shape == (2, 100, 1536)
        assert (got - want).abs().max() < 0.05 * want.abs().max()
    # With the int kernels a row's numbers do not depend on how many rows share the call; with
    # the bf16 weights oneDNN's choice of kernel by the number of rows can move an output by
    # one bf16 rounding step (measured: 10, 16 and 32 rows differ from 200 rows that way).
    # Outside a prefill, int4 takes the bf16 weights from WIDE_ROWS rows on, int8 its kernel.
    one_step = wide.abs().max() * 2**-7
    for rows in (1, 3, 5, 16, 32, 33):  # twice as many rows in the call
        got = layer(x[:, :rows])
        if kind == "int4" and 2 * rows >= prefill_mode.WIDE_ROWS:
            assert (got - wide[:, :rows]).abs().max() <= one_step
        else:
            assert torch.equal(got, kernel[:, :rows])
        with prefilling():
            assert (layer(x[:, :rows]) - wide[:, :rows]).abs().max() <= one_step
    # And what they stand for is close to the original weights: half a step of each row's
    # (int8) or group's (int4) scale, plus the scale's bf16 rounding (within two steps in all).
    error = (layer.dequantised().float() - linear.weight).abs()
    if kind == "int8":
        assert error.max() <= 2 * linear.weight.abs().max() / 127
    else:
        groups = linear.weight.detach().view(1536, -1, GROUP)
        step = (groups.amax(-1) - groups.amin(-1)) / 15
        assert bool((error.view(1536, -1, GROUP) <= 2 * step[..., None]).all())


def test_int4_holds_a_q4_gguf_s_groups_as_they_are():
    """Weights made as a Q4_1 file holds them (each group of 32: a scale and a minimum, levels
    0–15 with both ends used) come back as they were, up to the bf16 rounding of each group's
    scale and zero; and the bf16 copy for prefills is what the packed weights stand for (which
    checks the reading of torch's packed layout)."""
    torch.manual_seed(2)
    levels = torch.randint(0, 16, (128, 8, GROUP)).float()
    levels[..., 0], levels[..., 1] = 0, 15
    scale, minimum = torch.rand(128, 8, 1) * 0.02 + 0.001, torch.randn(128, 8, 1) * 0.1
    weights = (levels * scale + minimum).view(128, 8 * GROUP)
    linear = nn.Linear(8 * GROUP, 128, bias=False)
    linear.weight.data.copy_(weights)
    layer = Int4Linear(linear)
    assert torch.equal(plain_weights(layer.wide), layer.dequantised())
    error = (layer.dequantised().float() - weights).abs()
    # bf16 keeps 8 bits: each group's zero (~|minimum| + 8 steps) and scale round by 2^-8.
    bound = (minimum.abs() + 16 * scale) * 2**-8 + weights.abs().view(128, 8, GROUP) * 2**-8
    assert bool((error.view(128, 8, GROUP) <= bound).all())


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_fused_layers_compute_each_layer_s_numbers_without_more_memory(kind):
    torch.manual_seed(3)
    layers = [LAYERS[kind](nn.Linear(576, out, bias=False)) for out in (576, 192, 192)]
    x = torch.randn(1, 576)
    alone = [layer(x) for layer in layers]
    fused = fuse(layers)
    assert fused is not None and fused.out_features == 960
    together = fused(x).split([576, 192, 192], dim=-1)
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)
    storage = fused.weight.untyped_storage().data_ptr()
    assert all(layer.weight.untyped_storage().data_ptr() == storage for layer in layers)
    assert [torch.equal(layer(x), a) for layer, a in zip(layers, alone, strict=True)] == [True] * 3
    assert fuse([layers[0], nn.Linear(576, 64)]) is None  # not all quantised alike


def test_quantising_replaces_every_linear_layer_and_unties_the_head(fp32: LoadedModel):
    model = torch.nn.Module()
    model.inner = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    assert quantise(model, 4) == 2
    # A shape the packed int4 layout cannot hold (4 outputs) is int8 instead.
    assert [type(m) for m in model.inner if not isinstance(m, nn.ReLU)] == [Int4Linear, Int8Linear]
    for kind, head_type in (("int8", Int8Linear), ("int4", Int8Linear)):
        made = with_weights(fp32, kind, copy=True)
        head, embeddings = made.model.lm_head, made.model.get_input_embeddings()
        assert type(head) is head_type and embeddings.weight.dtype == torch.float32
        layer = made.model.model.layers[0].self_attn.q_proj
        assert type(layer) is LAYERS[kind]  # the head stays 8-bit, as the GGUF keeps it
        assert describe(made) == f"{kind} + torch.float32"
    assert describe(fp32) == "torch.float32"
    assert type(fp32.model.lm_head) is nn.Linear  # the copies left the original alone


def test_a_quantised_model_copies_and_its_copy_computes_the_same(quantised: LoadedModel):
    """copy.deepcopy (as PEFT users and the adapter tests do) of layers holding bf16 weights laid
    out for oneDNN: the copy lays them out again and gives the same numbers, either way."""
    copied = copy.deepcopy(quantised.model)
    head, original = copied.lm_head, quantised.model.lm_head
    assert head.wide is not original.wide or head.wide is None
    x = torch.randn(prefill_mode.WIDE_ROWS, 1, quantised.model.config.hidden_size)
    with torch.inference_mode():
        for rows in (1, prefill_mode.WIDE_ROWS):  # the int kernels, then the bf16 weights
            assert torch.equal(copied.lm_head(x[:rows]), original(x[:rows]))
            layer = copied.model.layers[0].mlp.down_proj
            wide = torch.randn(rows, layer.in_features)
            assert torch.equal(layer(wide), quantised.model.model.layers[0].mlp.down_proj(wide))


def test_weights_choices_and_their_refusals(fp32: LoadedModel):
    cpu = torch.device("cpu")
    assert gguf_weight_bits(default_model_path()) == 4 and fp32.file_bits == 4  # Q4_1
    assert weights_for(cpu, "auto", 4) == "int4"  # a 4-bit file: nothing it had is lost
    assert weights_for(cpu, "auto", 8) == weights_for(cpu, "auto") == "int8"
    assert weights_for(torch.device("cuda"), "auto", 4) == "native"
    with pytest.raises(ModelLoadError, match="MUSE_WEIGHTS='int3' is not one of"):
        weights_for(cpu, "int3")
    assert with_weights(fp32, None) is fp32 and with_weights(fp32, "fp32") is fp32


# Measured: int8 180/192 positions agree, the widest tie that flipped 0.43, the largest
# difference 2.1; int4 186/192, 0.11, 0.82 (its groups are the GGUF's own).


def test_quality_guard_quantised_logits_stay_within_tolerance_of_fp32(
    fp32: LoadedModel, quantised: LoadedModel, monkeypatch
):
    """The guard the CPU defaults are held to, on fp32's own greedy text (teacher-forced, 32
    tokens, six prompts): the same top token at most positions, every disagreement a near tie
    for fp32 (its two best within `tie` logits), and no logit more than `largest` away. For
    each way the weights multiply: the int kernels (a decoding step of few rows) and, int4
    only, the bf16 weights (many rows)."""
    kind = describe(quantised).split()[0]
    agreement, tie, largest = GUARDS[kind]
    # The teacher-forced forward has ~70 rows: WIDE_ROWS decides which way it multiplies.
    for wide_rows in [10**9] + ([prefill_mode.WIDE_ROWS] if kind == "int4" else []):
        monkeypatch.setattr(prefill_mode, "WIDE_ROWS", wide_rows)
        agree = positions = 0
        for text in PROMPTS:
            want, got = teacher_forced(fp32, quantised, text)
            best = want.topk(2).values
            margin = best[:, 0] - best[:, 1]
            same = want.argmax(-1) == got.argmax(-1)
            assert bool((margin[~same] < tie).all()), (wide_rows, text, margin[~same])
            assert float((want - got).abs().max()) < largest, (wide_rows, text)
            agree, positions = agree + int(same.sum()), positions + len(same)
        assert agree >= agreement * positions, (wide_rows, agree, positions)


def test_rows_in_one_batch_match_each_row_alone(quantised: LoadedModel):
    runner = BatchRunner(quantised.model, quantised.tokenizer.pad_token_id)
    prompts = [encode_messages(quantised.tokenizer, ask(p).messages, 4096) for p in PROMPTS[:4]]
    tolerance = logit_tolerance(quantised)  # bf16 rounding
    batch, together = runner.prefill(prompts)
    for row, ids in enumerate(prompts):
        _, alone = runner.prefill([ids])
        assert (together[row] - alone[0]).abs().max() < tolerance
        best = alone[0].topk(2).values  # so the top token moves only where it was a near tie
        if int(together[row].argmax()) != int(alone[0].argmax()):
            assert float(best[0] - best[1]) < 2 * tolerance
    # And a decoding step of the batch gives each row what it gives that row alone.
    tokens = [int(t) for t in together.argmax(-1)]
    stepped = runner.step(batch, tokens)
    for row, ids in enumerate(prompts):
        single, _ = runner.prefill([ids])
        assert (runner.step(single, [tokens[row]])[0] - stepped[row]).abs().max() < tolerance


def test_an_adapter_loads_onto_quantised_weights_and_routes_per_row(
    fp32: LoadedModel, tmp_path, quantised: LoadedModel
):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
    folder = tmp_path / "strong"
    get_peft_model(copy.deepcopy(fp32.model), config).save_pretrained(folder)
    adapters = Adapters(quantised.model, quantised.model_id)
    slot = adapters.add("strong", folder)
    runner = BatchRunner(quantised.model, quantised.tokenizer.pad_token_id, adapters)
    ids = encode_messages(quantised.tokenizer, ask(PROMPTS[0]).messages, 4096)
    batch, both = runner.prefill([ids, ids], slots=[0, slot])
    alone, base = runner.prefill([ids], slots=[0])
    adapted_alone, adapted = runner.prefill([ids], slots=[slot])
    assert (both[0] - base[0]).abs().max() < 0.5  # the base row is the base model
    assert (both[1] - adapted[0]).abs().max() < 0.5  # the adapted row its adapter
    assert (adapted[0] - base[0]).abs().max() > 1.0  # and the adapter changes it
    # Decoding: the mixed batch goes through the modules, the base row alone does not.
    token = int(base[0].argmax())
    stepped = runner.step(batch, [token, token])
    assert (runner.step(alone, [token])[0] - stepped[0]).abs().max() < 0.5
    assert (runner.step(adapted_alone, [token])[0] - stepped[1]).abs().max() < 0.5
    adapters.remove_all()
    kinds = {type(m) for n, m in quantised.model.named_modules() if n.endswith("q_proj")}
    assert kinds == {LAYERS[describe(quantised).split()[0]]}
