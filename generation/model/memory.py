"""The model's memory: the `MUSE_MEMORY` budget, how much of an int4 model's bf16 copy it
keeps, the remembered prompts' share, and the resident memory of this process.

An int4 model reads half a byte a weight per decoding step of a few rows; for prompts and steps
of `prefill_mode.WIDE_ROWS` rows or more it multiplies with a bf16 copy of its weights (two bytes a
weight more), where the int4 kernel is compute-bound (4-5x slower at 16 rows). That copy is
four times the int4 weights: for a 1.7B model 3.2 GiB beside 1.0. So it is kept as far as the
budget holds it: all of it, or the head's and then layer by layer (`keep_wide`); what has no
copy runs on the int4 kernel (slower at many rows, the same numbers for a row whatever shares
its batch). A size (`MUSE_MEMORY=6GiB`) keeps as much as fits beside the model. `auto` keeps at
most `AUTO_WIDE_MAX` of it (widening takes ~3 ns a weight at every start: the second start of a
1.7B model stays under 5 s) and only what fits a quarter of the memory available at start (the
bot, the database, the key/value caches of the requests and anything else on the machine share
the rest): the default model keeps all of its copy, a 1.7B one a third. Where the C++
extension multiplies many rows of int4 weights without the copy as fast as with it or faster
(`generation/model/int4_rows.py`: on AMX, or with AVX512-VNNI where the build's race found it
so on this CPU; `benchmarks/README.md`, "Memory"): `auto` keeps only the int8 head's copy (it
has no such kernel, and many requests go measurably faster with it), and a size keeps as much
as fits as everywhere. An
int8 copy for many rows was measured and not taken: its products are as fast as bf16's at half
the bytes, but rounding each row of activations to int8 moves the default model's logits eight
times as far as the int4 weights do (`benchmarks/README.md`, "Decisions"); the VNNI kernel
holds the inputs to 16 bits, and the logits stay as close as the copy's.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # bot/core/settings.py reads `parse_memory` without importing torch
    from torch import nn

log = logging.getLogger("muse.generation.memory")

UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
AUTO_SHARE = 0.25  # of the memory available at start, for `MUSE_MEMORY=auto`
AUTO_WIDE_MAX = 1 << 30  # the largest bf16 copy `auto` keeps
PREFIX_SHARE = 8  # of the model's budget, at most, for remembered prompts' keys and values
MEMINFO = Path("/proc/meminfo")


def parse_memory(raw: str) -> int | None:
    """`MUSE_MEMORY` in bytes: `auto` (None), or a size such as `4GiB`, `512M`, `3.5G`, `2000000000`
    (binary units; `B`, `iB` optional). ValueError, naming the setting, otherwise."""
    text = (raw or "").strip()
    if not text or text.lower() == "auto":
        return None
    match = SIZE.match(text)
    if match is None:
        raise ValueError(
            f"MUSE_MEMORY={raw!r} is not `auto` or a size such as 4GiB, 512MiB or 3.5G."
        )
    size = int(float(match.group(1)) * UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"MUSE_MEMORY={raw!r} must be more than nothing.")
    return size


def available_bytes() -> int:
    """The memory available to new work now (`MemAvailable`; without /proc, the free pages)."""
    kib = _proc_kib(MEMINFO, "MemAvailable")
    if kib is not None:
        return kib * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes(setting: str | None) -> int:
    """The model's budget for `setting` (`MUSE_MEMORY`; None or `auto`: `AUTO_SHARE` of the
    memory available now)."""
    size = parse_memory(setting or "auto")
    return size if size is not None else int(available_bytes() * AUTO_SHARE)


def prefix_cache_mb(setting: str | None, most: int) -> int:
    """The remembered prompts' budget in MiB (`generation/model/prefix_cache.py`): at most
    `most`, and at most a `PREFIX_SHARE`th of the model's budget (`MUSE_MEMORY`), so a small
    budget keeps the cache small too (its entries are fp32 keys and values, 0.4 MB a token
    of a 1.7B model)."""
    return min(most, budget_bytes(setting) // PREFIX_SHARE // 2**20)


def model_bytes(model: nn.Module) -> int:
    """The bytes of `model`'s parameters and buffers (each storage once: fused layers' views and
    tied weights count once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_meta or tensor.is_mkldnn:
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def wide_bytes(model: nn.Module) -> int:
    """What an int4 model's bf16 copy would take: two bytes a weight of its int4 layers and
    of its int8 head."""
    from generation.model.quantize import Int4Linear, Int8Linear

    layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
    if not layers:
        return 0
    heads = [m for m in model.modules() if isinstance(m, Int8Linear) and m.kernel_only]
    return 2 * sum(m.in_features * m.out_features for m in [*layers, *heads])


def keep_wide(model: nn.Module, setting: str | None) -> bool:
    """Give `model`'s int4 layers (and head) their bf16 copy as far as the budget
    (`MUSE_MEMORY`) holds it: all of it when the model with it fits; else the head's first
    (its int8 kernel is the slowest at many rows), then layer by layer, each group of
    projections the step multiplies as one (`fusion.GROUPS`) whole, while the next fits;
    `auto` on a CPU that widens int4 weights as it multiplies (`widens_int4`): the head's
    alone. Whether all of it was kept. A model with no int4 layer is left as it is."""
    from generation.model.bf16_products import COMPUTE, bf16_weights
    from generation.model.file_rows import FileRows

    head = getattr(model, "lm_head", None)
    original = getattr(head, "original_weight", None)
    if original is not None:
        del head.original_weight  # a quantised head's source: needed no longer after this
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, FileRows) and original is embeddings.weight:
        original = embeddings  # read from the file if needed: through the mapping it stays
    extra = wide_bytes(model)
    if not extra:
        return False
    budget = budget_bytes(setting)
    head_only = False
    if parse_memory(setting or "auto") is None:
        budget = min(budget, model_bytes(model) + AUTO_WIDE_MAX)
        head_only = widens_int4()  # the int4 layers are as fast without it (module docstring)
    room = budget - model_bytes(model)
    for modules in _wide_groups(model):
        size = 2 * sum(m.in_features * m.out_features for m in modules)
        if size > room or (head_only and head not in modules):
            continue
        for module in modules:
            if module is head:
                # The head's original weights, as `quantise` widens them (`original_weight`,
                # left by `quantise` or, a tied head's embeddings, by the cache's loader).
                if isinstance(original, FileRows):
                    original = original.read_table()
                weights = module.dequantised() if original is None else original.to(COMPUTE)
                module.wide = bf16_weights(weights)
            else:
                module.keep_wide()
        room -= size
    kept = wide_kept_bytes(model)  # with any copy the model held already
    if kept < extra:
        log.info(
            "%.2f GiB of the bf16 copy for prompts and many requests, of %.2f GiB (the model "
            "with all of it: %.2f GiB, over the budget of %.2f GiB, MUSE_MEMORY=%s): the rest "
            "runs on the int4 kernel",
            kept / 2**30,
            extra / 2**30,
            (model_bytes(model) - kept + extra) / 2**30,
            budget / 2**30,
            setting or "auto",
        )
    return kept == extra


def widens_int4() -> bool:
    """Whether this process multiplies many rows of int4 weights that have no copy with the C++
    extension's kernel as fast as with the copy or faster: on AMX, or in a way that measured so
    on this CPU when the extension was built (`native_step.many_rows_beat_copy`; it builds the
    extension now if it is not yet)."""
    from generation.model import native_step

    return native_step.many_rows_beat_copy()


def _wide_groups(model: nn.Module) -> list[list[nn.Module]]:
    """The layers that take a bf16 copy, in the order `keep_wide` gives it: the int8 head,
    then the int4 layers in the model's order, those the step multiplies together as one
    group."""
    from generation.model.fusion import GROUPS
    from generation.model.quantize import Int4Linear, Int8Linear

    head = getattr(model, "lm_head", None)
    together = {part: joined for _, joined, parts in GROUPS for part in parts}
    groups: dict[str, list[nn.Module]] = {}
    if isinstance(head, Int8Linear) and head.kernel_only and head.wide is None:
        groups["head"] = [head]
    for name, module in model.named_modules():
        if isinstance(module, Int4Linear) and module.wide is None:
            parent, _, leaf = name.rpartition(".")
            key = f"{parent}.{together[leaf]}" if leaf in together else name
            groups.setdefault(key, []).append(module)
    return list(groups.values())


def wide_kept_bytes(model: nn.Module) -> int:
    """The bytes of the bf16 copy `model` holds (`keep_wide`)."""
    from generation.model.quantize import QuantisedLinear

    return sum(
        2 * m.in_features * m.out_features
        for m in model.modules()
        if isinstance(m, QuantisedLinear) and m.wide is not None
    )


def has_wide(model: nn.Module) -> bool:
    """Whether `model`'s int4 layers hold their bf16 copy, all or part of it."""
    from generation.model.quantize import Int4Linear

    return any(isinstance(m, Int4Linear) and m.wide is not None for m in model.modules())


def resident_bytes() -> int:
    """This process's resident memory now (RSS, mapped files included; without /proc, the peak)."""
    kib = _proc_kib(Path("/proc/self/status"), "VmRSS")
    return kib * 1024 if kib is not None else _peak_from_rusage()


def peak_resident_bytes(pid: int | None = None) -> int:
    """The peak resident memory so far (VmHWM) of this process, or of the process `pid` (on
    Linux only: OSError where /proc cannot tell)."""
    kib = _proc_kib(Path(f"/proc/{pid or 'self'}/status"), "VmHWM")
    if kib is not None:
        return kib * 1024
    if pid is not None:
        raise OSError(f"no peak memory for process {pid}")
    return _peak_from_rusage()


def _proc_kib(path: Path, field: str) -> int | None:
    """A `field:  N kB` line of a /proc file, in KiB; None where there is no such file or line."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_from_rusage() -> int:
    """The peak resident memory from getrusage (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
