"""Which product a quantised layer uses for a call: the prefill mode and the many-rows threshold.

The int kernels' cost grows with every row they multiply (they are compute-bound beyond a few
rows), where one bf16 matrix product of many rows on the CPU's bf16 units costs about what one
row does. So many rows multiply with bf16 weights instead: a prefill's forward (inside
`prefilling()`, which the batch runner opens around it), and with int4 also a decoding step of
`WIDE_ROWS` rows or more. The layers (`generation/model/quantize.py`) ask `wide_rows` /
`many_rows`; the C++ step (`generation/model/native_step.py`) is told the answer per call.

The prefill mode is a thread-local because a prefill runs the model's own forward
(transformers'), which passes no argument down to the layers. It is set only by
`prefilling()`, in one place (`generation/model/batch_runner.py`), and holds for that thread
alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# From this many rows in one call, an int4 model multiplies with its bf16 weights outside
# prefills too: past it the int4 kernel's cost, which grows with the rows, passes the bf16
# product's, which hardly does (the measured crossing: `benchmarks/README.md`, "Kernels").
WIDE_ROWS = 10

_phase = threading.local()  # .prefilling: this thread runs a prefill's forward


@contextmanager
def prefilling() -> Iterator[None]:
    """Inside (on this thread), quantised layers multiply with bf16 weights, whatever the number
    of rows: a prefill's many rows run on the CPU's bf16 units, where the int kernels are
    compute-bound at a third of their speed. Outside, int8 layers use their kernel; int4 layers
    theirs below `WIDE_ROWS` rows and the bf16 copy from there on (`wide_rows`), or where they
    have no copy, the C++ extension's kernel that widens them as it multiplies, on CPUs with
    AMX (`generation/model/int4_rows.py`; elsewhere their kernel). The int kernels and the
    widening one give a row the same numbers however many rows share the call; the bf16 product can
    move an output by one bf16 rounding step with the number of rows (oneDNN picks its kernel
    by it), and the two ways differ by bf16 rounding. So with quantised weights a row's numbers
    depend on what shares its batch by that much; fp32 (`MUSE_WEIGHTS=fp32`) is the exact
    choice."""
    before = getattr(_phase, "prefilling", False)
    _phase.prefilling = True
    try:
        yield
    finally:
        _phase.prefilling = before


def in_prefill() -> bool:
    """Whether this thread runs a prefill's forward (`prefilling`)."""
    return getattr(_phase, "prefilling", False)


def many_rows(rows: int) -> bool:
    """Whether `rows` rows are enough for the bf16 weights outside a prefill (`WIDE_ROWS`)."""
    return rows >= WIDE_ROWS


def wide_rows(rows: int) -> bool:
    """Whether a call of `rows` rows multiplies an int4 model's weights in bf16."""
    return many_rows(rows) or in_prefill()
