"""The C++ decoding step of a few rows (generation/native_step.py, generation/native/
few_rows_step.cpp) on the real default model with int8 and int4 weights: against the Python
step to rounding, for one row over more steps than the cache has spare room and for padded
rows joining and leaving, with a hole in the mask, held to the quantised weights' quality guard
along fp32's greedy text, in the engine, and the Python step wherever it cannot serve."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from generation import native_step, quantize
from generation.engine import Engine, EngineConfig
from generation.kv_batch import SPARE_COLUMNS, BatchRunner
from generation.models import LoadedModel, describe, load_model, with_weights
from generation.prompting import encode_messages
from tests.generation.conftest import ask, logit_tolerance
from tests.generation.test_quantised import GUARDS, PROMPTS, along_greedy

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def fp32(model_cache_dir) -> LoadedModel:
    return load_model(None, "cpu", model_cache_dir, "fp32")


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantised(request, fp32: LoadedModel) -> LoadedModel:
    return with_weights(fp32, request.param, copy=True)


@pytest.fixture(scope="module")
def runner(quantised: LoadedModel) -> BatchRunner:
    return BatchRunner(quantised.model, quantised.tokenizer.pad_token_id)


@contextmanager
def python_step(runner: BatchRunner) -> Iterator[None]:
    """Inside, `runner`'s steps take the Python way."""
    native, runner._decode.native = runner._decode.native, None
    try:
        yield
    finally:
        runner._decode.native = native


def prompt_ids(loaded: LoadedModel, text: str) -> list[int]:
    return encode_messages(loaded.tokenizer, ask(text).messages, 4096)


def test_the_step_is_built_here_and_serves_int_models_only(fp32: LoadedModel, runner: BatchRunner):
    assert native_step.compiled() is not None  # this machine has a compiler: it must build
    assert runner._decode.native is not None
    fp32_runner = BatchRunner(fp32.model, fp32.tokenizer.pad_token_id)
    assert fp32_runner._decode.native is None  # fp32 keeps the exact Python step


def test_one_row_agrees_with_the_python_step_past_the_cache_s_spare_room(
    quantised: LoadedModel, runner: BatchRunner
):
    ids = prompt_ids(quantised, PROMPTS[1])
    ours, logits = runner.prefill([ids])
    theirs, _ = runner.prefill([ids])
    tolerance = logit_tolerance(quantised)
    agree = steps = 0
    for _ in range(SPARE_COLUMNS + 8):  # the rooms fill up and move once on the way
        token = int(logits.argmax())
        native = runner.step(ours, [token])
        with python_step(runner):
            logits = runner.step(theirs, [token])
        assert float((native - logits).abs().max()) < tolerance
        agree, steps = agree + int(native.argmax() == logits.argmax()), steps + 1
    assert agree >= 0.95 * steps
    assert ours.width == theirs.width == len(ids) + steps
    for a, b in zip(ours.cache.layers, theirs.cache.layers, strict=True):
        assert a.keys.shape == b.keys.shape
        for mine, python in ((a.keys, b.keys), (a.values, b.values)):
            # The projections come out in bf16: a few of its rounding steps (2^-7 relative).
            difference = (mine - python).abs()
            assert float(difference.max()) <= 2 * 2**-7 * float(python.abs().max())
            assert float(difference.mean()) < 0.01
    # The new columns went where the Python step puts them, and the batch goes on in Python.
    merged = ours.merge(runner.prefill([ids])[0])
    assert merged.size == 2 and runner.step(merged, [1, 1]).shape[0] == 2


def steps_agree(
    runner: BatchRunner, ours, theirs, tokens: list[int], tolerance: float
) -> list[int]:
    """One step of both batches (C++, Python) fed `tokens`; the Python step's greedy tokens."""
    native = runner.step(ours, tokens)
    with python_step(runner):
        logits = runner.step(theirs, tokens)
    assert native.shape == logits.shape
    assert float((native - logits).abs().max()) < tolerance
    return [int(t) for t in logits.argmax(-1)]


def test_padded_rows_joining_and_leaving_agree_with_the_python_step(
    quantised: LoadedModel, runner: BatchRunner
):
    prompts = [prompt_ids(quantised, text) for text in PROMPTS[:4]]
    assert len({len(ids) for ids in prompts[:3]}) > 1  # so the batch is padded
    tolerance = logit_tolerance(quantised)
    ours, logits = runner.prefill(prompts[:3])
    theirs, _ = runner.prefill(prompts[:3])
    assert not bool(ours.mask.all())
    tokens = [int(t) for t in logits.argmax(-1)]
    for _ in range(4):
        tokens = steps_agree(runner, ours, theirs, tokens, tolerance)
    ours, theirs = ours.keep([0, 2]), theirs.keep([0, 2])  # the middle row finished
    tokens = steps_agree(runner, ours, theirs, [tokens[0], tokens[2]], tolerance)
    newcomer, first = runner.prefill(prompts[3:])
    ours, theirs = ours.merge(newcomer), theirs.merge(runner.prefill(prompts[3:])[0])
    tokens = tokens + [int(first.argmax())]
    for _ in range(3):
        tokens = steps_agree(runner, ours, theirs, tokens, tolerance)
    for a, b in zip(ours.cache.layers, theirs.cache.layers, strict=True):
        assert a.keys.shape == b.keys.shape
        assert float((a.keys - b.keys).abs().max()) <= 2 * 2**-7 * float(b.keys.abs().max())


class Counting:
    """A C++ step that records the rows of each step it takes."""

    def __init__(self, native: native_step.NativeFewRows) -> None:
        self.native, self.calls = native, []

    def serves(self, rows: int) -> bool:
        return self.native.serves(rows)

    def __call__(self, *args):
        self.calls.append(args[0].shape[0])
        return self.native(*args)


def test_many_rows_of_int4_take_the_c_step_on_bf16_weights_and_of_int8_the_python_one(
    quantised: LoadedModel, runner: BatchRunner
):
    kind = describe(quantised).split()[0]
    prompts = [prompt_ids(quantised, text) for text in PROMPTS]
    tolerance = logit_tolerance(quantised)
    counting = Counting(runner._decode.native)
    sizes = (1, quantize.WIDE_ROWS - 1, quantize.WIDE_ROWS, quantize.WIDE_ROWS + 3)
    runner._decode.native = counting
    try:
        for rows in sizes:
            chosen = [prompts[i % len(prompts)] for i in range(rows)]
            ours, logits = runner.prefill(chosen)
            theirs, _ = runner.prefill(chosen)
            steps_agree(runner, ours, theirs, [int(t) for t in logits.argmax(-1)], tolerance)
    finally:
        runner._decode.native = counting.native
    # An int4 model holds bf16 weights for many rows, and the C++ step multiplies with them;
    # an int8 one has none: from WIDE_ROWS rows on, its Python step (the int8 kernel) serves.
    assert counting.calls == (list(sizes) if kind == "int4" else list(sizes[:2]))


def test_a_column_the_mask_hides_is_not_attended_to(quantised: LoadedModel, runner: BatchRunner):
    ids = prompt_ids(quantised, PROMPTS[0])
    plain, logits = runner.prefill([ids])
    holed, _ = runner.prefill([ids])
    theirs, _ = runner.prefill([ids])
    for batch in (holed, theirs):
        batch.mask = batch.mask.clone()
        batch.mask[0, 1:-3] = 0  # the prompt's middle, as padding between parts would be
    token = int(logits.argmax())
    unmasked = runner.step(plain, [token])
    native = runner.step(holed, [token])
    with python_step(runner):
        expected = runner.step(theirs, [token])
    tolerance = logit_tolerance(quantised)
    assert float((native - expected).abs().max()) < tolerance
    assert float((native - unmasked).abs().max()) > 2 * tolerance  # the hole mattered


def stepped_logits(runner: BatchRunner, ids: list[int], whole: torch.Tensor) -> torch.Tensor:
    """The next-token logits along `whole` (`ids` and a continuation, [1, tokens]) from one
    prefill of `ids` and then one decoding step of one row per token."""
    batch, first = runner.prefill([ids])
    got = [first[0]] + [runner.step(batch, [int(t)])[0] for t in whole[0, len(ids) : -1]]
    return torch.stack(got)


@pytest.mark.parametrize("text", PROMPTS)
def test_quality_guard_along_fp32_s_greedy_text(
    fp32: LoadedModel, quantised: LoadedModel, runner: BatchRunner, text: str
):
    """The quantised weights' guard (tests/generation/test_quantised.py), with the logits of
    C++ steps of one row fed fp32's greedy tokens."""
    agreement, tie, largest = GUARDS[describe(quantised).split()[0]]
    ids, whole, want = along_greedy(fp32, text)
    got = stepped_logits(runner, ids, whole)
    best = want.topk(2).values
    margin = best[:, 0] - best[:, 1]
    same = want.argmax(-1) == got.argmax(-1)
    assert bool((margin[~same] < tie).all()), margin[~same]
    assert float((want - got).abs().max()) < largest
    assert int(same.sum()) >= agreement * len(same) - 1  # one prompt's share of the guard


async def test_the_engine_decodes_a_lone_request_with_it(quantised: LoadedModel, runner):
    engine = Engine(lambda: quantised, EngineConfig(max_batch=4, queue_size=8)).start()
    try:
        greedy = {"temperature": 0.0, "repetition_penalty": 1.0, "max_new_tokens": 24}
        result = await engine.generate(ask(PROMPTS[2], **greedy))
        again = await engine.generate(ask(PROMPTS[2], **greedy))  # its prefix remembered
    finally:
        await engine.aclose()
    assert result.tokens_out == 24 and result.text == again.text
    # The same tokens as C++ steps of one row on the runner, greedily.
    batch, logits = runner.prefill([prompt_ids(quantised, PROMPTS[2])])
    tokens = []
    for _ in range(24):
        tokens.append(int(logits.argmax()))
        logits = runner.step(batch, tokens[-1:])
    assert result.text == quantised.tokenizer.decode(tokens, skip_special_tokens=True)


def test_the_python_step_serves_where_the_c_step_cannot(quantised: LoadedModel, monkeypatch):
    monkeypatch.setattr(native_step, "compiled", lambda: None)  # no compiler on this machine
    assert BatchRunner(quantised.model, quantised.tokenizer.pad_token_id)._decode.native is None
    monkeypatch.undo()
    monkeypatch.setenv(native_step.SWITCH, "0")
    off = BatchRunner(quantised.model, quantised.tokenizer.pad_token_id)
    assert off._decode.native is None
    batch, logits = off.prefill([prompt_ids(quantised, PROMPTS[3])])
    assert off.step(batch, [int(logits.argmax())]).shape == logits.shape


def test_a_lock_left_by_a_killed_build_is_cleared_and_a_live_one_kept(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()
    assert not native_step.clear_stale_lock(tmp_path) and lock.exists()  # a build is running
    old = time.time() - native_step.STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    assert native_step.clear_stale_lock(tmp_path) and not lock.exists()
    assert not native_step.clear_stale_lock(tmp_path)  # nothing there
