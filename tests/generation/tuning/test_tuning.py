"""The tuning library: data, method choice, real TRL/PEFT runs on the default model, and the
adapter folder's all-or-nothing writes.

The runs are real but short (CPU, a few steps); the marker run uses the default settings,
since those are what `muse tune` gives a user.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.model.loading import load_model
from generation.tuning import (
    DataCounts,
    ProgressEvent,
    SplitCounts,
    TuneConfig,
    TuneResult,
    TuningError,
    TuningStopped,
    choose_method,
    hyperparameters,
    load_adapter_card,
    split,
    tune,
)
from generation.tuning.data import GROUP, WHO, examples, read_jsonl
from generation.tuning.output import clean_leftovers, make_tmp, publish
from generation.tuning.plan import KTO_RATIO, kto_weights
from tests.generation.tuning.tiny_base import save_tiny_base
from tests.generation.tuning.tuning_data import (
    MARKER,
    dpo_rows,
    held_out_prompts,
    kto_rows,
    marker_rows,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[3]
pytest.importorskip("trl")
pytest.importorskip("peft")
# Real training on a shared CPU: generous per-test limits; the file takes ~4 minutes.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Train on one thread. On a 2-core machine shared with other jobs, two OpenMP threads
    per process spin against theirs: 2 DPO steps took 194 s that way and 36 s on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(tmp: Path, cache: Path, **kwargs: Any) -> TuneConfig:
    kwargs.setdefault("adapters_dir", tmp / "adapters")
    kwargs.setdefault("device", "cpu")
    return TuneConfig(cache_dir=cache, **kwargs)


def leftovers(adapters: Path) -> list[str]:
    return sorted(p.name for p in adapters.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> str:
    """A tiny random base (tests/generation/tuning/tiny_base.py) for the runs that check
    plumbing; what a run learns is checked on the real base (the marker)."""
    return str(save_tiny_base(tmp_path_factory.mktemp("tiny") / "base", model_cache_dir))


@pytest.fixture(scope="module")
def marker_adapter(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> TuneResult:
    """The adapter the acceptance criterion asks for: default settings, 30 marker rows."""
    tmp = tmp_path_factory.mktemp("marker")
    sft = write_jsonl(tmp / "sft.jsonl", marker_rows())
    return tune(config(tmp, model_cache_dir, name="marker", files={"sft": sft}, method="sft"))


# --- real runs ---------------------------------------------------------------------------------


def replies(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[str]:
    """Greedy first words for each prompt, in one left-padded batch."""
    tokenizer.padding_side = "left"
    batch = tokenizer.apply_chat_template(
        prompts, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]


def test_default_sft_teaches_the_marker(marker_adapter: TuneResult, model_cache_dir: Path) -> None:
    from peft import PeftModel

    result = marker_adapter
    assert result.method == "sft" and result.path.name == "marker"
    assert result.counts["train"].rows + result.counts["eval"].rows == 30
    assert result.metrics_after["loss"] < result.metrics_before["loss"]
    base = load_model(None, "cpu", model_cache_dir)
    prompts = held_out_prompts()
    before = replies(base.model, base.tokenizer, prompts)
    tuned = PeftModel.from_pretrained(base.model, str(result.path)).eval()
    after = replies(tuned, base.tokenizer, prompts)
    hits_before = sum(r.startswith(MARKER) for r in before)
    hits_after = sum(r.startswith(MARKER) for r in after)
    print(f"\nmarker: tuned {hits_after}/16, base {hits_before}/16, tune {result.seconds:.0f} s")
    assert hits_before == 0, before
    assert hits_after >= 12, after


@pytest.mark.parametrize(
    ("files", "method", "expected"),
    [
        (("dpo", "kto", "sft"), "dpo", ("rewards/accuracies", "rewards/margins")),
        (("kto", "sft"), "kto", ("rewards/chosen", "rewards/margins")),
    ],
)
def test_auto_picks_preferences_and_reports_metrics(
    tmp_path: Path,
    model_cache_dir: Path,
    tiny: str,
    files: tuple[str, ...],
    method: str,
    expected: tuple,
) -> None:
    rows = {"dpo": dpo_rows(16), "kto": kto_rows(16), "sft": marker_rows()}
    paths = {f: write_jsonl(tmp_path / f"{f}.jsonl", rows[f]) for f in files}
    events: list[ProgressEvent] = []
    run = config(
        tmp_path, model_cache_dir, name=method, files=paths, max_steps=2, eval_share=0.25, base=tiny
    )
    result = tune(run, progress=events.append)
    assert result.method == method and result.reason.endswith(f": {method.upper()}")
    for metrics in (result.metrics_before, result.metrics_after):
        assert {"loss", *expected} <= metrics.keys()
        assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert [e.step for e in events if e.phase == "train"] == [1, 2]
    card = load_adapter_card(result.path)
    assert card["method"] == method and card["hyperparameters"]["beta"] == 0.1
    assert card["data"]["counts"]["eval"]["rows"] >= 1
    print(f"\n{method}: {result.seconds:.0f} s", result.metrics_before, result.metrics_after)


# --- the adapter folder ----------------------------------------------------------------------


def test_an_existing_name_is_refused_unless_forced(
    tmp_path: Path, model_cache_dir: Path, marker_adapter: TuneResult, tiny: str
) -> None:
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    shutil.copytree(marker_adapter.path, adapters / "mine")
    sft = write_jsonl(tmp_path / "sft.jsonl", marker_rows()[:8])
    run = config(tmp_path, model_cache_dir, name="mine", files={"sft": sft}, max_steps=1, base=tiny)
    with pytest.raises(TuningError, match="already exists"):
        tune(run)
    assert load_adapter_card(adapters / "mine")["data"]["counts"]["train"]["rows"] == 27

    forced = dataclasses.replace(run, force=True, eval_share=0.0)
    result = tune(forced)
    card = load_adapter_card(adapters / "mine")
    assert result.path == adapters / "mine"
    assert card["data"]["counts"]["train"]["rows"] == 8 and card["metrics"]["before"] == {}
    assert sorted(p.name for p in adapters.iterdir()) == ["mine"]


def test_a_stopped_run_leaves_nothing(tmp_path: Path, model_cache_dir: Path, tiny: str) -> None:
    sft = write_jsonl(tmp_path / "sft.jsonl", marker_rows())
    stop = threading.Event()
    steps: list[int] = []

    def progress(event: ProgressEvent) -> None:
        if event.phase == "train":
            steps.append(event.step)
            stop.set()

    run = config(
        tmp_path, model_cache_dir, name="halted", files={"sft": sft}, eval_share=0, base=tiny
    )
    with pytest.raises(TuningStopped, match="stopped at step 1/"):
        tune(run, progress=progress, stop=stop)
    assert steps == [1]
    assert list((tmp_path / "adapters").iterdir()) == []


def test_a_killed_run_leaves_no_adapter(tmp_path: Path, model_cache_dir: Path, tiny: str) -> None:
    adapters = tmp_path / "adapters"
    sft = write_jsonl(tmp_path / "sft.jsonl", marker_rows())
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.generation.tuning.tuning_child"]
        + [str(sft), str(adapters), "killed", str(model_cache_dir), tiny],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the first step is done
        assert line.startswith("step "), f"the child printed {line!r} and exited {child.poll()}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert not (adapters / "killed").exists()
    assert [n.split("-")[0] for n in leftovers(adapters)] == [".killed.tmp"]

    too_little = write_jsonl(tmp_path / "few.jsonl", marker_rows()[:3])
    with pytest.raises(TuningError):  # fails on the data, after tidying up
        tune(config(tmp_path, model_cache_dir, name="killed", files={"sft": too_little}))
    assert list(adapters.iterdir()) == []


def test_leftovers_of_dead_runs_are_tidied(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "kept").mkdir()
    for name in (f".lost.old-{dead.pid}-ab12", f".kept.old-{dead.pid}-cd34"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "muse.json").write_text("{}")
    (tmp_path / f".new.tmp-{dead.pid}-ef56").mkdir()
    (tmp_path / f".live.tmp-{os.getpid()}-0a0b").mkdir()  # a run in progress: ours
    clean_leftovers(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f".live.tmp-{os.getpid()}-0a0b", "kept", "lost"]
    assert (tmp_path / "lost" / "muse.json").is_file()  # died between renames: put back


def modes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]
    }


def private(folder: Path) -> bool:
    """Folders 0700 and files 0600, as the database is: adapters memorise community text."""
    found = modes(folder)
    return all(
        mode == (0o700 if (folder / name).is_dir() else 0o600) for name, mode in found.items()
    )


def test_an_adapter_folder_is_written_private_whatever_the_umask(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    before = os.umask(0o002)  # a permissive umask: the folder must not inherit it
    try:
        for force in (False, True):  # new, then replacing it
            tmp = make_tmp(adapters, "house")
            (tmp / "adapter_config.json").write_text("{}")
            (tmp / "checkpoint").mkdir()
            (tmp / "checkpoint" / "state.json").write_text("{}")
            published = publish(tmp, adapters, "house", force=force)
            assert private(published), modes(published)
    finally:
        os.umask(before)
    assert adapters.stat().st_mode & 0o777 == 0o700  # created by the first run


def test_load_adapter_card_refuses_a_broken_folder(
    tmp_path: Path, marker_adapter: TuneResult
) -> None:
    card = load_adapter_card(marker_adapter.path)
    assert card["name"] == "marker" and card["method"] == "sft"
    assert card["base"]["path"] and card["versions"]["trl"]
    assert card["metrics"]["before"]["loss"] > card["metrics"]["after"]["loss"]

    def broken(name: str, damage: Any) -> Path:
        folder = tmp_path / name
        shutil.copytree(marker_adapter.path, folder)
        damage(folder)
        return folder

    cases = {
        "no-weights": lambda f: (f / "adapter_model.safetensors").unlink(),
        "bad-weights": lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00" * 64),
        "bad-card": lambda f: (f / "muse.json").write_text("{not json"),
        "no-config": lambda f: (f / "adapter_config.json").unlink(),
        "list-config": lambda f: (f / "adapter_config.json").write_text("[]"),
    }
    for name, damage in cases.items():
        with pytest.raises(TuningError, match=name):
            load_adapter_card(broken(name, damage))
    with pytest.raises(TuningError, match="does not exist"):
        load_adapter_card(tmp_path / "nowhere")


def test_names_and_too_little_data_fail_before_any_folder(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    sft = write_jsonl(tmp_path / "sft.jsonl", marker_rows()[:5])
    for name in ("../up", ".hidden", "a/b", ""):
        with pytest.raises(TuningError, match="not a usable adapter name"):
            tune(config(tmp_path, model_cache_dir, name=name, files={"sft": sft}))
    with pytest.raises(TuningError, match="5 SFT rows \\(SFT needs 8\\)"):
        tune(config(tmp_path, model_cache_dir, name="few", files={"sft": sft}, method="sft"))
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())


def test_ctrl_c_becomes_tuning_stopped(tmp_path: Path, model_cache_dir: Path, tiny: str) -> None:
    sft = write_jsonl(tmp_path / "sft.jsonl", marker_rows())

    def interrupt(event: ProgressEvent) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the run had its tmp folder

    with pytest.raises(TuningStopped, match="interrupted"):
        run = config(tmp_path, model_cache_dir, name="ctrl-c", files={"sft": sft}, base=tiny)
        tune(run, interrupt)
    assert list((tmp_path / "adapters").iterdir()) == []


# --- data ------------------------------------------------------------------------------------


def test_sft_rows_become_prompt_completion(tmp_path: Path) -> None:
    rows = read_jsonl(write_jsonl(tmp_path / "sft.jsonl", marker_rows()[:2]))
    first = examples("sft", rows)[0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert first["completion"][0]["role"] == "assistant"
    assert first["completion"][0]["content"].startswith(MARKER)
    assert set(first) == {"prompt", "completion", GROUP, WHO}  # metadata stays behind
    kto = examples("kto", kto_rows(4))
    assert set(kto[0]) == {"prompt", "completion", "label", GROUP, WHO}

    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(TuningError, match="bad.jsonl:2 is not JSON"):
        read_jsonl(tmp_path / "bad.jsonl")
    no_reply = {"messages": rows[0]["messages"][:-1]}
    with pytest.raises(TuningError, match="row 2 is not a sft row"):
        examples("sft", [rows[0], no_reply])


@settings(max_examples=60, deadline=None)
@given(
    prompts=st.lists(st.integers(0, 12), min_size=1, max_size=60),
    share=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    seed=st.integers(0, 3),
)
def test_the_split_keeps_prompt_groups_whole(prompts: list[int], share: float, seed: int) -> None:
    rows = [
        {
            "prompt": [{"role": "user", "content": f"prompt {p}"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
        }
        for i, p in enumerate(prompts)
    ]
    result = split(examples("dpo", rows), share, seed)
    train = {r["prompt"][0]["content"] for r in result.train}
    held = {r["prompt"][0]["content"] for r in result.eval}
    assert not train & held
    assert len(result.train) + len(result.eval) == len(rows) and result.train
    assert result.counts["train"] == SplitCounts(len(result.train), len(train))
    assert result.counts["eval"] == SplitCounts(len(result.eval), len(held))
    if share == 0:
        assert not result.eval
    elif len(set(prompts)) > 1:
        assert result.eval
    again = split(examples("dpo", rows), share, seed)
    assert again.train == result.train and again.eval == result.eval


# --- the plan ----------------------------------------------------------------------------------


def test_choose_method_prefers_pairs_then_labels_then_sft() -> None:
    dpo = choose_method(DataCounts(sft=30, dpo=12, kto_desirable=9, kto_undesirable=9))
    assert (dpo.method, dpo.reason) == ("dpo", "12 preference pairs (DPO needs 8): DPO")
    kto = choose_method(DataCounts(sft=30, dpo=3, kto_desirable=7, kto_undesirable=3))
    assert kto.method == "kto" and kto.reason.startswith("3 preference pairs (DPO needs 8); ")
    assert kto.reason.endswith(
        "10 rated replies, 7 good and 3 bad (KTO needs 8 with 2 of each): KTO"
    )
    sft = choose_method(DataCounts(sft=9, dpo=0, kto_desirable=12, kto_undesirable=1))
    assert sft.method == "sft" and sft.reason.endswith("9 SFT rows (SFT needs 8): SFT")
    asked = choose_method(DataCounts(sft=8, dpo=20), "sft")
    assert asked == choose_method(DataCounts(sft=8), "sft") and asked.method == "sft"


def test_too_little_data_says_how_much_is_needed() -> None:
    with pytest.raises(TuningError) as caught:
        choose_method(DataCounts(sft=2, dpo=5, kto_desirable=4, kto_undesirable=0))
    message = str(caught.value)
    for part in (
        "5 preference pairs (DPO needs 8)",
        "4 good and 0 bad",
        "2 SFT rows (SFT needs 8)",
    ):
        assert part in message
    with pytest.raises(TuningError, match="Too little data for DPO: 7 preference pairs"):
        choose_method(DataCounts(sft=100, dpo=7), "dpo")
    with pytest.raises(TuningError, match="Unknown method 'ppo'"):
        choose_method(DataCounts(sft=100), "ppo")


@given(st.integers(1, 500), st.integers(1, 500))
def test_kto_weights_balance_the_labels(desirable: int, undesirable: int) -> None:
    good, bad = kto_weights(desirable, undesirable)
    ratio = good * desirable / (bad * undesirable)
    assert KTO_RATIO[0] - 1e-3 <= ratio <= KTO_RATIO[1] + 1e-3
    assert 0 < good <= 1 and 0 < bad <= 1


def test_defaults_per_method() -> None:
    train = SplitCounts(rows=27, groups=27, desirable=20, undesirable=7)
    sft = hyperparameters("sft", train)
    assert (sft.learning_rate, sft.epochs, sft.lora_r, sft.lora_alpha) == (2e-4, 4.0, 16, 32)
    assert (sft.lora_dropout, sft.target_modules, sft.batch_size) == (0.05, "all-linear", 4)
    assert (sft.precision, sft.gradient_checkpointing, sft.beta) == ("fp32", False, None)
    dpo = hyperparameters("dpo", train, device="cuda", bf16=True, lr=1e-5, max_steps=7)
    assert (dpo.learning_rate, dpo.max_steps, dpo.beta, dpo.precision) == (1e-5, 7, 0.1, "bf16")
    kto = hyperparameters("kto", train, lora_r=8)
    assert (kto.lora_r, kto.lora_alpha, kto.undesirable_weight) == (8, 16, 1.0)
    assert 1 <= kto.desirable_weight * 20 / 7 <= 4 / 3
    assert hyperparameters("sft", SplitCounts(1000, 900)).gradient_accumulation_steps == 4
    with pytest.raises(TuningError, match="0 bad"):
        hyperparameters("kto", SplitCounts(10, 10, 10, 0))


def test_the_card_records_the_run(marker_adapter: TuneResult) -> None:
    card = marker_adapter.card
    assert card["hyperparameters"]["epochs"] == 4.0
    assert card["seconds"] >= card["train_seconds"] > 0
    rules = card["data"]["rules"]  # the data rules and what they dropped (nothing here)
    assert (rules["max_share"], rules["min_contributors"]) == (0.25, 3)
    assert rules["dropped"] == {"one_edit_per_editor": 0, "identical_texts": 0, "max_share": 0}
    assert card["data"]["contributors"] == len(marker_adapter.contributors) == 10
    assert time.strptime(card["created_utc"][:19], "%Y-%m-%dT%H:%M:%S")
    assert private(marker_adapter.path), modes(marker_adapter.path)  # what `tune` wrote
