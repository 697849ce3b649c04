"""Serving LoRA adapters beside the base model: what base rows pay, and how to batch adapters.

    .venv/bin/python benchmarks/adapters.py [--rows 16] [--steps 32] [--repeats 3] [--threads N]

Decoding steps over the engine's own `BatchRunner` (greedy, the same 16 prompts, prefilled
first), in tokens/s of decoding:
  - base only, no adapters (the model exactly as loaded: nothing installed);
  - base only, with 2 adapters loaded (their routed layers installed, every row the base's);
  - 16 rows mixed across the base and 2 adapters (a third each), design (a): one batch, each
    row through its own adapter (generation/model/adapters.py's routed layers, what the engine
    does);
  - the same rows, design (b): one batch per adapter, the groups stepped in turn;
  - the same rows as (a) through PEFT's own mixed-batch forward (`adapter_names=[...]` per row),
    for comparison.
The adapters are PEFT LoRA (r=8, all linear layers) with random weights, written to a temporary
folder. Configurations alternate within each repeat; the median of the repeats is printed (and
their range). Not a test: figures vary on a shared machine, ratios measured in one run are what
to compare.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation.model.adapters import load_adapters  # noqa: E402
from generation.model.batch_runner import BatchRunner, KVBatch  # noqa: E402
from generation.model.loading import load_model  # noqa: E402
from generation.model.prompting import encode_messages  # noqa: E402
from generation.types import Message  # noqa: E402

ROLES = ["blacksmith", "wizard", "thief", "king", "bard", "elf", "dwarf", "orc"]
NAMES = ("x", "y")


def prompts(tokenizer: Any, rows: int) -> list[list[int]]:
    texts = [f"Write two lines of dialogue for a {ROLES[i % 8]} number {i}." for i in range(rows)]
    return [encode_messages(tokenizer, (Message("user", t),), 4096) for t in texts]


def make_adapters(model: nn.Module, folder: Path) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model

    made = {}
    for seed, name in enumerate(NAMES):
        torch.manual_seed(seed)
        config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(copy.deepcopy(model), config).save_pretrained(folder / name)
        made[name] = folder / name
    return made


class PeftMixed(nn.Module):
    """PEFT's model behind the runner's call: every forward passes `adapter_names`."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.config = peft_model.config
        self.names: list[str] = []

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
    ) -> Any:
        return self.peft_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            adapter_names=self.names,
        )


def decode_rate(
    runner: BatchRunner, groups: list[tuple[list[list[int]], list[int]]], steps: int
) -> float:
    """Tokens/s of `steps` greedy steps over batches prefilled from `groups` (each a list of
    prompts and their slots), the batches stepped one after another."""
    batches: list[tuple[KVBatch, torch.Tensor]] = [
        runner.prefill(seqs, slots=slots) for seqs, slots in groups
    ]
    rows = sum(len(seqs) for seqs, _ in groups)
    started = time.perf_counter()
    for _ in range(steps):
        batches = [(b, runner.step(b, logits.argmax(-1).tolist())) for b, logits in batches]
    return rows * steps / (time.perf_counter() - started)


def peft_rate(
    shim: PeftMixed, runner: BatchRunner, seqs: list[list[int]], names: list[str], steps: int
) -> float:
    shim.names = names
    return decode_rate(runner, [(seqs, [0] * len(seqs))], steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(None, "cpu")
    # Every configuration on a copy: the loaded weights may be mapped from the file, copies are
    # plain memory, and that alone moves the figures.
    plain = copy.deepcopy(loaded.model)
    pad = loaded.tokenizer.pad_token_id or 0
    seqs = prompts(loaded.tokenizer, args.rows)
    slots = [i % 3 for i in range(args.rows)]  # base, x, y, base, ...
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(plain, Path(tmp))
        served = copy.deepcopy(plain)
        adapters = load_adapters(served, folders, loaded.model_id)
        assert adapters.names == list(NAMES)
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(copy.deepcopy(plain), str(folders["x"]), "x")
        peft_model.load_adapter(str(folders["y"]), adapter_name="y")
        peft_model.eval()
    shim = PeftMixed(peft_model)
    base_runner = BatchRunner(plain, pad)
    served_runner = BatchRunner(served, pad, adapters)
    peft_runner = BatchRunner(shim, pad)
    peft_names = ["__base__" if s == 0 else NAMES[s - 1] for s in slots]
    by_slot = [
        ([q for q, s in zip(seqs, slots, strict=True) if s == g], [g] * slots.count(g))
        for g in range(3)
    ]
    configs: dict[str, Callable[[], float]] = {
        "base only, no adapters": lambda: decode_rate(
            base_runner, [(seqs, [0] * args.rows)], args.steps
        ),
        "base only, 2 adapters loaded": lambda: decode_rate(
            served_runner, [(seqs, [0] * args.rows)], args.steps
        ),
        f"{args.rows} rows mixed, (a) one batch, routed layers": lambda: decode_rate(
            served_runner, [(seqs, slots)], args.steps
        ),
        f"{args.rows} rows mixed, (b) a batch per adapter": lambda: decode_rate(
            served_runner, by_slot, args.steps
        ),
        f"{args.rows} rows mixed, (a) one batch, PEFT adapter_names": lambda: peft_rate(
            shim, peft_runner, seqs, peft_names, args.steps
        ),
    }
    for run in configs.values():  # warm-up
        run()
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, run in configs.items():
            rates[name].append(run())
    print(
        f"decoding tokens/s, {args.rows} rows x {args.steps} steps, median of {args.repeats}, "
        f"torch threads {torch.get_num_threads()}"
    )
    base = statistics.median(rates["base only, no adapters"])
    for name, values in rates.items():
        rate = statistics.median(values)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(f"  {name:<52} {rate:8.1f}  ({rate / base:.2f}x base; {spread})")


if __name__ == "__main__":
    main()
