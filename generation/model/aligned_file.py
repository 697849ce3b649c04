"""A safetensors file whose every tensor starts on a 64-byte boundary, so that the tensors
memory-mapped from it can go straight into torch's CPU kernels.

safetensors' own writer packs tensors back to back after a header padded to 8 bytes, so a mapped
tensor starts at whatever address its offset gives. torch's int8 kernel
(`_weight_int8pack_mm`) reads its weights with aligned 64-byte loads from four rows on: a
mapped int8 weight at an address that is not a multiple of 64 crashed the process (SIGSEGV) on
the first batch of four rows or more. The file stays a plain safetensors file: the gaps are
filled with `uint8` tensors named `PAD`…, which any reader loads and `unpadded` drops.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

ALIGN = 64  # bytes: an AVX-512 register, and a multiple of every dtype's size
PAD = "__muse_pad__."
DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_aligned(
    tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write `tensors` to the safetensors file `path` with each one's data at a file offset that
    is a multiple of `ALIGN` (the header padded too), in the order given."""
    with AlignedWriter(path, metadata, entries=len(tensors)) as out:
        for name, tensor in tensors.items():
            out.add(name, tensor)


class AlignedWriter:
    """`save_aligned` one tensor at a time, so a file bigger than memory can be written: the
    data goes to the file as it comes, after room kept for the header, which is written last
    (safetensors lets a header end in spaces, so the room is padded to its size). `entries`:
    at most how many tensors will be added (the room kept for their lines of the header)."""

    ENTRY_BYTES = 512  # a header line's room: a tensor's name, dtype, shape, offsets, a gap's

    def __init__(
        self, path: Path, metadata: Mapping[str, str] | None = None, *, entries: int
    ) -> None:
        self.header: dict[str, object] = {"__metadata__": dict(metadata or {})}
        room = 4096 + entries * self.ENTRY_BYTES
        self.room = room + (-(8 + room) % ALIGN)  # the data begins on a boundary
        self.path = path
        self.file = path.open("wb")
        self.file.seek(8 + self.room)
        self.offset = 0  # from the data's start
        self.gaps = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name.startswith(PAD):
            raise ValueError(f"{name!r}: names beginning with {PAD!r} are the file's own")
        if name in self.header:
            raise ValueError(f"{name!r} is in the file already")
        gap = -self.offset % ALIGN
        if gap:
            self.header[f"{PAD}{self.gaps}"] = _entry("U8", [gap], self.offset, gap)
            self.gaps += 1
            self.file.write(bytes(gap))
            self.offset += gap
        data = tensor.detach().cpu().contiguous()
        size = data.numel() * data.element_size()
        self.header[name] = _entry(DTYPES[data.dtype], list(data.shape), self.offset, size)
        if size:
            self.file.write(memoryview(data.view(-1).view(torch.uint8).numpy()))
        self.offset += size

    def close(self) -> None:
        """Write the header into its room and close the file (ValueError if it did not fit)."""
        text = json.dumps(self.header, separators=(",", ":")).encode()
        if len(text) > self.room:
            self.file.close()
            self.path.unlink(missing_ok=True)
            raise ValueError(f"the header ({len(text)} bytes) is over its room ({self.room})")
        with self.file:
            self.file.seek(0)
            self.file.write(struct.pack("<Q", self.room))
            self.file.write(text + b" " * (self.room - len(text)))

    def __enter__(self) -> AlignedWriter:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.close()
        else:  # nothing half-written is left to read
            self.file.close()
            self.path.unlink(missing_ok=True)


def _entry(dtype: str, shape: list[int], start: int, size: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, start + size]}


def unpadded(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` as loaded from a file, without `save_aligned`'s gap fillers, and with any
    tensor that is not on an `ALIGN`-byte boundary (a file written otherwise) copied to one
    (torch's allocator aligns to 64 bytes)."""
    return {
        name: tensor if tensor.data_ptr() % ALIGN == 0 else tensor.clone()
        for name, tensor in tensors.items()
        if not name.startswith(PAD)
    }


def data_offset(path: Path, name: str) -> int:
    """Where tensor `name`'s data starts in the safetensors file `path` (bytes from its start)."""
    with path.open("rb") as file:
        length = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(length))
    return 8 + length + header[name]["data_offsets"][0]
