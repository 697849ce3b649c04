"""The decoding step of an int8 / int4 Llama model on the CPU in C++
(`generation/model/native/quantised_step.cpp`): every step of an int4 model, and the steps of
fewer than `prefill_mode.WIDE_ROWS` rows of an int8 one.

A request decoding alone spends a large share of each step of the default model in the small
operations around the weight kernels (norms, rotation, attention, casts), a few microseconds of
dispatch each, and so do a few requests together; the C++ step does them as plain loops over
the rows and calls torch's weight kernels once per projection (how much that saves:
`benchmarks/README.md`, "Step"). From `WIDE_ROWS` rows an int4 model multiplies with its bf16
weights, and the C++ step does too (oneDNN's product, as `bf16_products.bf16_matmul`); where the
budget left a projection no copy, with the extension's kernel for many rows of int4 weights
(`native/int4_rows.cpp`: AMX, AVX512-VNNI or AVX512-BF16; installed for the Python callers as
well: `generation/model/int4_rows.py`), else torch's int4 kernel. An int8 model has no copy, so the
Python step serves it there.

It is compiled on first use with torch's extension builder (a C++ compiler and ninja; tens of
seconds, then kept per machine, CPU and checkout in a folder of torch's extension folder,
rebuilt when the source changes; a lock that a killed build left is cleared), and run first in
a child process (`generation/model/native_build.py`: the folder's key, owner and mode, the
child). Where it cannot be built or used, or the model or the step does not fit
(`NativeQuantisedStep.of`), `LlamaStep` keeps its Python way; the two agree to float rounding
(`tests/generation/model/test_native_step.py`), not bit for bit: the loops sum in another order.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from generation.model import int4_rows, native_build
from generation.model.prefill_mode import wide_rows

log = logging.getLogger("muse.generation.model.native_step")

# Set to "0" to keep every step in Python (the tests compare the two ways).
SWITCH = "MUSE_NATIVE_STEP"


# A build takes well under this; a lock file older than this was left by a build that was killed.
STALE_LOCK_S = 600.0


@dataclass(frozen=True, slots=True)
class Build:
    """The C++ step for this process: the extension, or None and why the Python step serves."""

    extension: ModuleType | None
    reason: str = ""
    folder: Path | None = None  # where it was built and its child's record lies


@functools.cache
def build() -> Build:
    """The extension, built once per machine and CPU and run first in a child process
    (`generation/model/native_build.py`); where it cannot be used, why, logged once."""
    try:
        from torch.utils.cpp_extension import get_default_build_root

        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
        folder = native_build.build_folder(root)
        try:
            native_build.make_folder(folder)
        except OSError as exc:  # e.g. a home that systemd's ProtectHome hides
            return _python_step(
                f"its build folder {folder} cannot be created ({exc}): set "
                "TORCH_EXTENSIONS_DIR to a folder this user can write"
            )
        unsafe = native_build.unsafe(folder)
        if unsafe is not None:
            return _python_step(f"it is not loaded from there: {unsafe}")
        clear_stale_lock(folder)
        if not native_build.passed(folder):
            failed = native_build.build_in_child(folder)
            if failed is not None:
                return _python_step(failed)
        without_amx = native_build.WITHOUT_AMX
        if (
            not native_build.amx_passed(folder)
            and os.environ.get(native_build.NO_AMX) != without_amx
        ):
            os.environ[native_build.NO_AMX] = without_amx
            log.warning(
                "the C++ step's first run faulted with this CPU's AMX and passed without it: "
                "prompts and many requests multiply int4 weights without AMX (%s=%s)",
                native_build.NO_AMX,
                without_amx,
            )
        built = native_build.library(folder)
        unsafe = native_build.unsafe(built) if built.exists() else None
        if unsafe is not None:
            return _python_step(f"it is not loaded from there: {unsafe}")
        extension = native_build.load_extension(folder)
        int4_rows.install(extension)
        return Build(extension, folder=folder)
    except Exception as exc:  # no compiler, no ninja, a failed build: the Python step serves
        return _python_step(f"it could not be built ({exc})")


def _python_step(reason: str) -> Build:
    log.warning("the C++ decoding step is not used, %s; using the Python one", reason)
    return Build(None, reason)


def compiled() -> ModuleType | None:
    """The compiled extension; None (logged once) where it cannot be used."""
    return build().extension


def many_rows_beat_copy() -> bool:
    """Whether the extension's kernel multiplies many rows of int4 weights without their bf16
    copy as fast as with it or faster, in the way it takes now (`native_build.kernel_beats_copy`);
    False where there is none. Builds the extension if it is not yet."""
    built = build() if wanted() else Build(None)
    if built.extension is None or built.folder is None:
        return False
    kind = built.extension.int4_rows_kind()
    return bool(kind) and native_build.kernel_beats_copy(built.folder, kind)


def clear_stale_lock(folder: Path) -> bool:
    """Remove a build lock in `folder` that a killed build left behind (torch's builder would
    wait on it for ever); whether there was one."""
    lock = folder / "lock"
    try:
        if time.time() - lock.stat().st_mtime < STALE_LOCK_S:
            return False
        lock.unlink()
    except FileNotFoundError:
        return False
    log.warning("removed %s, left by a build of the C++ step that did not finish", lock)
    return True


def wanted() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


# How the C++ extension multiplies many rows of int4 weights, by `int4_rows_kind()`.
MANY_ROWS = {
    "amx": "widen the int4 weights as they multiply, on AMX",
    "avx512_vnni": "multiply the int4 weights as they are, on AVX512-VNNI",
    "avx512_bf16": "widen the int4 weights as they multiply, on AVX512-BF16",
}


def availability(weights: str, device: str) -> str:
    """Which step decodes a few requests of a model held as `weights` (`loading.describe`) on
    `device` (its type), for `muse doctor`; builds the C++ step if it serves this model and is
    not built yet."""
    if device != "cpu" or not weights.startswith(("int8", "int4")):
        return "the Python step"
    if not wanted():
        return f"the Python step ({SWITCH}=0)"
    built = build()
    if built.extension is None:
        return f"the Python step (the C++ step is not used: {built.reason})"
    kind = built.extension.int4_rows_kind() if weights.startswith("int4") else ""
    if kind:
        return (
            "the C++ step (built and run first in a child process on this CPU; many rows "
            f"{MANY_ROWS[kind]})"
        )
    return "the C++ step (built and run first in a child process on this CPU)"


class NativeQuantisedStep:
    """`LlamaStep`'s step of a quantised model through the C++ extension: any number of rows of
    an int4 model (which holds bf16 weights for many rows), fewer than `WIDE_ROWS` of an int8
    one."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def serves(self, rows: int) -> bool:
        """Whether a step of `rows` rows (no adapter's) is this one's: it takes an int4 model's
        steps of many rows as well where it has a product for them (`takes_many_rows`: the
        bf16 copy, or the CPU's kernel for many rows of int4 weights)."""
        return self.kernel.takes_many_rows or not wide_rows(rows)

    @staticmethod
    def of(step: Any, extension: ModuleType | None = None) -> NativeQuantisedStep | None:
        """The C++ step for the model of `step` (a `generation.model.llama_step.LlamaStep`, which
        imports this module), or None: it takes fp32 models on the CPU whose projections are
        all int8 or int4, with queries/keys/values and gate/up fused. `extension`: the built
        module to use (default: this process's, `compiled()`)."""
        model = step.model
        first = next(model.parameters())
        if first.device.type != "cpu" or first.dtype != torch.float32:
            return None
        if extension is None and not wanted():
            return None
        layers = step.layers
        if any(len(layer.qkv) != 1 or len(layer.gate_up) != 1 for layer in layers):
            return None
        projections = [
            p for layer in layers for p in (layer.qkv[0], layer.out, layer.gate_up[0], layer.down)
        ] + [step.head]
        if any(p.bits not in (4, 8) for p in projections):
            return None
        head_dim = step.inner.layers[0].self_attn.head_dim
        if head_dim % 2 or step.heads % step.kv_heads:
            return None
        norms = [n.contiguous() for layer in layers for n in (layer.attention_norm, layer.mlp_norm)]
        if any(norm.dtype != torch.float32 for norm in [*norms, step.final_norm]):
            return None
        extension = extension or compiled()
        if extension is None:
            return None
        kernel = extension.QuantisedStep(
            step.heads,
            step.kv_heads,
            head_dim,
            step.intermediate,
            step.eps,
            [layer.scaling for layer in layers],
            norms,
            [p.bits for p in projections],
            [p.weight for p in projections],
            [p.scales for p in projections],
            [list(p.wide) for p in projections],
            step.final_norm.contiguous(),
        )
        return NativeQuantisedStep(kernel)

    def __call__(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        signed_sin: torch.Tensor,
        mask: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """The rows' step: `x` [rows, 1, hidden] their tokens' embeddings, `cos` / `signed_sin`
        [rows, 1, dim] (`LlamaStep`'s), `mask` [rows, columns + 1]; the logits [rows, vocab]
        (fp32), the cache's layers holding the new column."""
        rows = x.shape[0]
        layers = cache.layers
        rooms = [layer.rooms_for(1) for layer in layers]
        allowed = _NOTHING if bool(mask.all()) else mask.to(torch.uint8).contiguous()
        logits = self.kernel.step(
            x.reshape(rows, -1).contiguous(),
            cos.reshape(rows, -1).contiguous(),
            signed_sin.reshape(rows, -1).contiguous(),
            allowed,
            [keys for keys, _ in rooms],
            [values for _, values in rooms],
            layers[0].keys.shape[-2],
            wide_rows(rows),
        )
        for layer in layers:
            layer.grow(1)
        return logits


_NOTHING = torch.empty(0, dtype=torch.uint8)
