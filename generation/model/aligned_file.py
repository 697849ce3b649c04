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
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    blobs: list[torch.Tensor | int] = []  # a tensor's bytes, or the size of a gap
    offset = 0
    for name, tensor in tensors.items():
        if name.startswith(PAD):
            raise ValueError(f"{name!r}: names beginning with {PAD!r} are the file's own")
        gap = -offset % ALIGN
        if gap:
            header[f"{PAD}{len(blobs)}"] = _entry("U8", [gap], offset, gap)
            blobs.append(gap)
            offset += gap
        data = tensor.detach().cpu().contiguous()
        size = data.numel() * data.element_size()
        header[name] = _entry(DTYPES[data.dtype], list(data.shape), offset, size)
        blobs.append(data)
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGN)  # the data begins on a boundary too
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for blob in blobs:
            if isinstance(blob, int):
                out.write(bytes(blob))
            elif blob.numel():
                out.write(memoryview(blob.view(-1).view(torch.uint8).numpy()))


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
