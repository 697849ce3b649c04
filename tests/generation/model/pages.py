"""How much of a memory range is resident in this process (/proc/self/pagemap's bit 63; Linux,
as the suite's other /proc checks)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
PAGEMAP = Path("/proc/self/pagemap")


def resident(address: int, size: int) -> int:
    """Bytes of the pages of [address, address + size) present in this process."""
    first, last = address // PAGE, (address + size - 1) // PAGE
    with PAGEMAP.open("rb") as pagemap:
        pagemap.seek(first * 8)
        entries = pagemap.read((last - first + 1) * 8)
    flags = struct.unpack(f"<{len(entries) // 8}Q", entries)
    return sum(entry >> 63 for entry in flags) * PAGE
