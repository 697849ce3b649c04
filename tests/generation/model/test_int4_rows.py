"""The product of many rows with int4 weights that have no bf16 copy
(generation/model/native/int4_rows.cpp, generation/model/int4_rows.py) on the real default
model at a budget that holds no copy, each way this CPU has (AMX; AVX512-VNNI; AVX512-BF16): the
copy's numbers to fp32 summation (VNNI: the int4 weights' own with inputs held to 16 bits), each
row's result its own whatever shares the call, prefills and steps of many rows through it, and
on a CPU without them a clear error and torch's kernel instead."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from generation.model import (
    int4_rows,
    memory,
    native_build,
    native_smoke,
    native_step,
    prefill_mode,
)
from generation.model.agreement import teacher_forced
from generation.model.batch_runner import BatchRunner
from generation.model.loading import LoadedModel, load_model
from generation.model.quantize import Int4Linear, int4_dequantised
from tests.generation.model.guards import GUARDS, PROMPTS
from tests.generation.model.test_native_step import many_rows_agree, prompt_ids, real_root

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

# MUSE_INT4_ROWS for each way: the best the CPU has (AMX's, the default), the others asked for.
WAYS = {"amx": "1", "avx512_vnni": "vnni", "avx512_bf16": "avx512"}
NEEDS = {  # beyond AVX512-BF16 and -BW
    "amx": ("amx_tile", "amx_bf16"),
    "avx512_vnni": ("avx512_vnni",),
    "avx512_bf16": (),
}


@pytest.fixture(scope="module")
def bare(model_cache_dir: Path) -> LoadedModel:
    """The default model with int4 weights and a budget that holds none of the bf16 copy."""
    loaded = load_model(None, "cpu", model_cache_dir, "int4", memory="1MiB")
    assert memory.wide_kept_bytes(loaded.model) == 0
    return loaded


def cpu_has(*flags: str) -> bool:
    return set(flags) <= set(native_build.cpu_features().split())


def amx_faulted() -> bool:
    """Whether the build's child faulted with AMX on this machine, so the serving process keeps
    the kernel off AMX (`native_build.build_in_child`: a virtual machine may announce AMX and
    fault)."""
    assert native_step.compiled() is not None
    return not native_build.amx_passed(native_build.build_folder(real_root()))


def way_here(way: str) -> bool:
    """Whether this CPU has `way` and uses it: AVX512-BF16 for all, and `NEEDS`."""
    return cpu_has("avx512_bf16", "avx512bw", *NEEDS[way]) and not (way == "amx" and amx_faulted())


@pytest.fixture(params=list(WAYS))
def way(request: pytest.FixtureRequest, monkeypatch) -> str:
    if request.param != "amx" or not amx_faulted():  # after a fault AMX stays off
        monkeypatch.setenv(native_build.NO_AMX, WAYS[request.param])
    return request.param


def int4_layers(loaded: LoadedModel) -> list[Int4Linear]:
    layer = loaded.model.model.layers[0]
    found = [m for m in layer.modules() if isinstance(m, Int4Linear)]
    assert {m.out_features for m in found} >= {loaded.model.config.hidden_size}
    return found


def test_the_kernel_is_there_exactly_where_the_cpu_has_it(bare: LoadedModel, monkeypatch):
    extension = native_step.compiled()
    assert extension is not None
    best = next((way for way in WAYS if way_here(way)), "")
    if amx_faulted():
        assert os.environ.get(native_build.NO_AMX) == native_build.WITHOUT_AMX
    assert extension.int4_rows_kind() == best
    assert (int4_rows.int4_kernel() is not None) is bool(best)
    # The child raced each way but AMX's against the copy: `MUSE_MEMORY=auto` keeps no copy
    # where the way taken is as fast as it (AMX's always).
    folder = native_build.build_folder(real_root())
    raced = json.loads((folder / native_build.SMOKE_FILE).read_text())["many_rows"]
    assert set(raced) == {w for w in native_smoke.RACED if way_here(w)}
    assert all(len(times) == 2 and min(times) > 0 for times in raced.values())
    beats = best == "amx" or (best in raced and raced[best][0] <= raced[best][1])
    assert memory.widens_int4() is beats
    layer = int4_layers(bare)[0]
    x = torch.zeros(prefill_mode.WIDE_ROWS, layer.in_features, dtype=torch.bfloat16)
    monkeypatch.setenv(native_build.NO_AMX, "0")  # turned off: a clear error, not a product
    assert not extension.int4_rows_available() and extension.int4_rows_kind() == ""
    with pytest.raises(RuntimeError, match="MUSE_INT4_ROWS|AVX512-BF16"):
        extension.int4_rows(x, layer.weight, layer.scales_and_zeros)


def test_many_rows_get_the_copy_s_numbers_each_row_its_own(bare: LoadedModel, way: str):
    extension = native_step.compiled()
    if not way_here(way):
        assert extension.int4_rows_kind() != way
        return
    assert extension.int4_rows_kind() == way
    torch.manual_seed(0)
    for layer in int4_layers(bare):
        x = torch.randn(40, layer.in_features).to(torch.bfloat16)
        whole = extension.int4_rows(x, layer.weight, layer.scales_and_zeros)
        # The copy's bf16 weights, summed in fp64: the kernel's fp32 sums, rounded to bf16. VNNI:
        # the exact int4 weights times the inputs as 16-bit integers with a scale per 32.
        if way == "avx512_vnni":
            exact = int4_dequantised(layer.weight, layer.scales_and_zeros, torch.float32)
            want = (sixteen_bits(x).double() @ exact.double().T).float()
        else:
            want = (x.double() @ layer.dequantised().double().T).float()
        error = (whole.float() - want).abs()
        assert float((error - 2**-8 * want.abs()).max()) <= 1e-4 * float(want.abs().max())
        for rows in (1, 3, 7, prefill_mode.WIDE_ROWS, 16, 17, 33):
            part = extension.int4_rows(x[:rows], layer.weight, layer.scales_and_zeros)
            assert torch.equal(part, whole[:rows])
        empty = extension.int4_rows(x[:0], layer.weight, layer.scales_and_zeros)
        assert empty.shape == (0, layer.out_features)


def test_each_way_keeps_the_int4_quality_guard(
    fp32: LoadedModel, bare: LoadedModel, monkeypatch, way: str
):
    """The guard the CPU defaults are held to (tests/generation/model/test_quantised.py) along
    fp32's greedy text, every int4 projection of the teacher-forced forward (~70 rows) through
    `way`. VNNI holds the inputs to 16 bits for it: rounded to 8, as llama.cpp's Q8 blocks do,
    the largest logit difference was 2.3 against the guard's 1.5 (benchmarks/README.md)."""
    kernel = int4_rows.int4_kernel()
    if not way_here(way) or kernel is None:
        assert int4_rows.int4_kernel() is None or native_step.compiled().int4_rows_kind() != way
        return
    calls: list[int] = []
    monkeypatch.setattr(int4_rows, "_kernel", lambda *args: calls.append(1) or kernel(*args))
    agreement, tie, largest = GUARDS["int4"]
    agree = positions = 0
    for text in PROMPTS:
        want, got = teacher_forced(fp32, bare, text)
        best = want.topk(2).values
        same = want.argmax(-1) == got.argmax(-1)
        assert bool(((best[:, 0] - best[:, 1])[~same] < tie).all()), (way, text)
        assert float((want - got).abs().max()) < largest, (way, text)
        agree, positions = agree + int(same.sum()), positions + len(same)
    assert agree >= agreement * positions, (way, agree, positions)
    assert len(calls) >= 4 * bare.model.config.num_hidden_layers * len(PROMPTS)


def sixteen_bits(x: torch.Tensor) -> torch.Tensor:
    """`x` [rows, in] as the VNNI way holds it: each group of 32 inputs rounded to 16-bit
    integers (the largest to 32639) times the group's scale, in fp64."""
    groups = x.float().view(x.shape[0], -1, 32)
    largest = groups.abs().amax(-1, keepdim=True)
    inverse = torch.where(largest > 0, 32639 / largest, torch.zeros_like(largest))
    levels = torch.round(groups * inverse).double()
    return (levels * (largest / 32639).double()).view(x.shape)


def test_prefills_and_steps_of_many_rows_take_it(bare: LoadedModel, monkeypatch, way: str):
    kernel = int4_rows.int4_kernel()
    calls: list[int] = []

    def counted(x, packed, scales):
        calls.append(x.shape[0])
        return kernel(x, packed, scales)

    if kernel is not None:
        monkeypatch.setattr(int4_rows, "_kernel", counted)
    rows = prefill_mode.WIDE_ROWS + 2
    runner = BatchRunner(bare.model, bare.tokenizer.pad_token_id)
    runner.prefill([prompt_ids(bare, PROMPTS[i % len(PROMPTS)]) for i in range(rows)])
    prefill_calls = len(calls)
    stepped = many_rows_agree(bare)
    if kernel is None:  # torch's int4 kernel in the Python step serves many rows
        assert not way_here(way) and stepped == [] and calls == []
        return
    # Every int4 projection of the prefill's forward (the head is int8), then the C++ step.
    layers = bare.model.config.num_hidden_layers
    assert prefill_calls >= 4 * layers
    assert stepped == [rows] * 3
