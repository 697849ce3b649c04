"""The C++ decoding step of a quantised model (generation/model/native_step.py,
generation/model/native/quantised_step.cpp) on the real default model with int8 and int4
weights: against the Python step to rounding, for one row over more steps than the cache has
spare room and for padded rows joining and leaving, with a hole in the mask, held to the
quantised weights' quality guard along fp32's greedy text, in the engine, and the Python step
wherever it cannot serve."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from generation.engine.local_engine import Engine, EngineConfig
from generation.model import native_build, native_smoke, native_step, prefill_mode
from generation.model.agreement import along_greedy, python_step, stepped_logits
from generation.model.batch_runner import SPARE_COLUMNS, BatchRunner
from generation.model.loading import LoadedModel, describe
from generation.model.prompting import encode_messages
from tests.generation.helpers import ask, logit_tolerance
from tests.generation.model.guards import GUARDS, PROMPTS

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def runner(quantised: LoadedModel) -> BatchRunner:
    return BatchRunner(quantised.model, quantised.tokenizer.pad_token_id)


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

    def __init__(self, native: native_step.NativeQuantisedStep) -> None:
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
    sizes = (1, prefill_mode.WIDE_ROWS - 1, prefill_mode.WIDE_ROWS, prefill_mode.WIDE_ROWS + 3)
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


def test_many_rows_with_part_of_the_bf16_copy_take_the_c_step(model_cache_dir: Path):
    """A budget that holds part of the copy (`memory.keep_wide`): the C++ step multiplies the
    layers that have it in bf16 and the others with the int4 kernel, as the Python step does."""
    from generation.model.loading import load_model
    from generation.model.memory import model_bytes, wide_bytes, wide_kept_bytes

    bare = load_model(None, "cpu", model_cache_dir, "auto", memory="1MiB").model
    budget = model_bytes(bare) + wide_bytes(bare) // 2
    part = load_model(None, "cpu", model_cache_dir, "auto", memory=str(budget))
    kept = wide_kept_bytes(part.model)
    assert 0 < kept <= wide_bytes(bare) // 2 and part.model.lm_head.wide is not None
    assert many_rows_agree(part) == [prefill_mode.WIDE_ROWS + 2] * 3


def many_rows_agree(loaded: LoadedModel, steps: int = 3) -> list[int]:
    """`WIDE_ROWS` + 2 prompts prefilled twice, then `steps` steps of the C++ step and the Python
    step agreeing; the rows of each step the C++ step took."""
    runner = BatchRunner(loaded.model, loaded.tokenizer.pad_token_id)
    counting = Counting(runner._decode.native)
    runner._decode.native = counting
    rows = prefill_mode.WIDE_ROWS + 2
    chosen = [prompt_ids(loaded, PROMPTS[i % len(PROMPTS)]) for i in range(rows)]
    ours, logits = runner.prefill(chosen)
    theirs, _ = runner.prefill(chosen)
    tokens = [int(t) for t in logits.argmax(-1)]
    for _ in range(steps):
        tokens = steps_agree(runner, ours, theirs, tokens, logit_tolerance(loaded))
    return counting.calls


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


@pytest.mark.parametrize("text", PROMPTS)
def test_quality_guard_along_fp32_s_greedy_text(
    fp32: LoadedModel, quantised: LoadedModel, runner: BatchRunner, text: str
):
    """The quantised weights' guard (tests/generation/model/test_quantised.py), with the logits of
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


@pytest.fixture
def fresh_build(monkeypatch, tmp_path) -> Iterator[list]:
    """`native_step.build()` decided anew under `tmp_path` (as TORCH_EXTENSIONS_DIR), with the
    child process that builds replaced by one recording the folders it was asked for; the
    process's own build is decided anew afterwards."""
    asked: list = []

    def no_child(folder):
        asked.append(folder)
        return "no compiler in this test"

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setattr(native_build, "build_in_child", no_child)
    native_step.build.cache_clear()
    yield asked
    native_step.build.cache_clear()


def cpu_with(monkeypatch, tmp_path, flags: str) -> None:
    cpuinfo = tmp_path / f"cpuinfo-{len(flags)}"
    cpuinfo.write_text(
        f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    monkeypatch.setattr(native_build, "CPUINFO", cpuinfo)


def test_a_build_folder_made_on_another_cpu_is_not_loaded(monkeypatch, tmp_path, fresh_build):
    """Compiled with -march=native: a folder copied from a CPU with other flags (a volume, an
    NFS home) would die of SIGILL; this CPU builds in a folder of its own."""
    cpu_with(monkeypatch, tmp_path, "fpu sse2 avx2 avx512f avx512_bf16 amx_tile")
    theirs = native_build.build_folder(tmp_path / "extensions")
    native_build.make_folder(theirs)
    (theirs / f"{native_build.NAME}.so").write_bytes(b"built for a CPU with AMX")
    (theirs / native_build.SMOKE_FILE).write_text("{}")
    cpu_with(monkeypatch, tmp_path, "fpu sse2 avx2")
    ours = native_build.build_folder(tmp_path / "extensions")
    assert ours != theirs and ours.parent == theirs.parent
    assert native_step.compiled() is None  # this test's child cannot build
    assert fresh_build == [ours]  # asked to build its own; the other folder was never used
    assert not native_build.passed(theirs)  # its record names another library and CPU


def test_the_child_s_race_decides_whether_many_rows_keep_the_copy(tmp_path):
    """The child times the many-rows kernel's ways other than AMX's against the bf16 copy
    (`native_smoke.race`); a way that lost, or that no record names, keeps the copy. The real
    child's record: tests/generation/model/test_int4_rows.py."""
    record = {"many_rows": {"avx512_vnni": [1.5, 2.0], "avx512_bf16": [3.0, 2.0]}}
    (tmp_path / native_build.SMOKE_FILE).write_text(json.dumps(record))
    assert native_build.kernel_beats_copy(tmp_path, "avx512_vnni")
    assert not native_build.kernel_beats_copy(tmp_path, "avx512_bf16")
    assert native_build.kernel_beats_copy(tmp_path, "amx")  # faster than the copy wherever it runs
    assert not native_build.kernel_beats_copy(tmp_path, "")
    (tmp_path / native_build.SMOKE_FILE).write_text('{"many_rows": {"avx512_vnni": "fast"}}')
    assert not native_build.kernel_beats_copy(tmp_path, "avx512_vnni")
    (tmp_path / native_build.SMOKE_FILE).write_text("{}")  # an older child's: it runs again
    assert not native_build.kernel_beats_copy(tmp_path, "avx512_vnni")
    assert not native_build.passed(tmp_path)


@pytest.mark.parametrize("how", ["group-writable", "world-writable", "another-owner"])
def test_a_build_folder_of_another_user_or_writable_by_others_is_not_loaded(
    monkeypatch, tmp_path, fresh_build, caplog, how
):
    folder = native_build.build_folder(tmp_path / "extensions")
    native_build.make_folder(folder)
    if how == "another-owner":
        uid = os.getuid()
        monkeypatch.setattr(native_build.os, "getuid", lambda: uid + 1)
        why = "belongs to another user"
    else:
        os.chmod(folder, 0o770 if how == "group-writable" else 0o777)
        why = "writable by group or others"
    caplog.set_level("WARNING", logger="muse.generation.model.native_step")
    assert native_step.compiled() is None and native_step.compiled() is None
    assert fresh_build == []  # nothing built, nothing loaded
    assert why in native_step.build().reason
    assert [r.getMessage() for r in caplog.records if why in r.getMessage()] != []
    assert len(caplog.records) == 1  # said once


def test_a_build_folder_that_cannot_be_created_leaves_the_python_step_with_one_line(
    monkeypatch, tmp_path, fresh_build, caplog, quantised: LoadedModel
):
    """As under systemd's ProtectHome, where ~/.cache cannot be written."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(blocked / "extensions"))
    caplog.set_level("WARNING", logger="muse.generation.model.native_step")
    assert BatchRunner(quantised.model, quantised.tokenizer.pad_token_id)._decode.native is None
    assert native_step.compiled() is None
    assert len(caplog.records) == 1 and "cannot be created" in caplog.records[0].getMessage()
    assert "TORCH_EXTENSIONS_DIR" in native_step.availability(describe(quantised), "cpu")


@pytest.mark.parametrize("fault", ["sigill", "segv"])
def test_a_build_whose_first_run_faults_leaves_the_python_step(monkeypatch, tmp_path, fault):
    """The build runs first in a child process: one that dies (here by MUSE_TEST_NATIVE_FAULT,
    as a build for another CPU would) is never loaded by the serving process. (On the smoke's
    tiny int4 model: the real ones' steps are the tests above.)"""
    assert native_step.compiled() is not None  # built here: copy it, so nothing compiles again
    root = tmp_path / "extensions"
    folder = native_build.build_folder(root)
    shutil.copytree(native_build.build_folder(real_root()), folder)
    (folder / native_build.SMOKE_FILE).unlink()  # not run on this CPU yet
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    monkeypatch.setenv(native_build.FAULT, fault)
    native_step.build.cache_clear()
    try:
        assert native_step.compiled() is None
        assert f"died of SIG{fault.removeprefix('sig').upper()}" in native_step.build().reason
        runner = BatchRunner(native_smoke.tiny_int4_model(), 0)
        assert runner._decode is not None and runner._decode.native is None
        assert "child process died of" in native_step.availability("int4 + torch.float32", "cpu")
    finally:
        native_step.build.cache_clear()
    monkeypatch.delenv(native_build.FAULT)
    assert native_build.build_in_child(folder) is None and native_build.passed(folder)


def test_a_build_that_faults_only_with_amx_serves_without_it(monkeypatch):
    """A virtual machine may announce AMX and fault on it: a child that dies of SIGILL is run
    again with the many-rows kernel off AMX, and where that one passes the serving process
    keeps the C++ step and keeps off AMX (`NO_AMX`): many rows on the kernel's other ways. (The
    children here stand in for the real ones, which the tests above run, as that CPU's would:
    SIGILL with AMX allowed, a pass recorded without.)"""
    from generation.model import int4_rows

    assert native_step.compiled() is not None
    # This process's own folder, its first run forgotten for the test (a copy elsewhere would be
    # compiled again: torch's builder keys a module loaded twice by its folder as well).
    folder = native_build.build_folder(real_root())
    passed = (folder / native_build.SMOKE_FILE).read_text()
    (folder / native_build.SMOKE_FILE).unlink()
    children: list[dict] = []

    def child(where: Path, extra_env: dict[str, str]) -> str | None:
        children.append(extra_env)
        if extra_env.get(native_build.NO_AMX) != native_build.WITHOUT_AMX:
            return "its first run in a child process died of SIGILL"
        record = {**native_build.smoke_record(where), "amx": False, "many_rows": {}}
        (where / native_build.SMOKE_FILE).write_text(json.dumps(record))
        return None

    monkeypatch.setattr(native_build, "_child", child)
    monkeypatch.setenv(native_build.NO_AMX, "1")  # restored (unset) after the test
    native_step.build.cache_clear()
    try:
        extension = native_step.compiled()
        assert extension is not None  # the C++ step serves
        assert children == [{}, {native_build.NO_AMX: native_build.WITHOUT_AMX}]
        assert os.environ[native_build.NO_AMX] == native_build.WITHOUT_AMX
        assert not native_build.amx_passed(folder)
        # Many rows keep to the kernel's ways without AMX, where the CPU has them.
        flags = set(native_build.cpu_features().split())
        vector = {"avx512_bf16", "avx512bw"} <= flags
        without = "" if not vector else "avx512_vnni" if "avx512_vnni" in flags else "avx512_bf16"
        assert extension.int4_rows_kind() == without
        assert (int4_rows.int4_kernel() is not None) is bool(without)
        # A child that dies otherwise (SIGSEGV: not a missing instruction) is not run again.
        children.clear()
        monkeypatch.setattr(
            native_build, "_child", lambda *_: children.append(1) or "died of SIGSEGV"
        )
        assert native_build.build_in_child(folder) == "died of SIGSEGV" and children == [1]
    finally:
        (folder / native_build.SMOKE_FILE).write_text(passed)
        monkeypatch.undo()
        native_step.build.cache_clear()
        native_step.compiled()  # this process's own build again, its kernel installed


def real_root():
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def test_the_extension_s_loops_run_on_torch_s_threads():
    """at::parallel_for splits work over torch's threads only in code compiled with OpenMP: the
    library calls OpenMP's runtime (without -fopenmp its loops ran on one thread)."""
    assert native_step.compiled() is not None
    built = Path(native_step.compiled().__file__)
    assert b"GOMP_parallel" in built.read_bytes()
