"""The served cache's file (generation/model/aligned_file.py): a plain safetensors file whose
every tensor, memory-mapped, starts on a 64-byte boundary, as torch's int kernels need."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from generation.model.aligned_file import ALIGN, PAD, AlignedWriter, save_aligned, unpadded


def odd_tensors() -> dict[str, torch.Tensor]:
    """Sizes that leave every later tensor off a boundary when packed back to back."""
    return {
        "a.three_bytes": torch.arange(3, dtype=torch.uint8),
        "b.int8": torch.randint(-127, 128, (5, 7), dtype=torch.int8),
        "c.bf16": torch.randn(3, 5).to(torch.bfloat16),
        "d.fp32": torch.randn(11),
        "e.empty": torch.zeros(0, 4),
        "f.int32": torch.arange(9, dtype=torch.int32).view(3, 3),
    }


def test_every_mapped_tensor_starts_on_a_boundary_and_reads_back_the_same(tmp_path: Path):
    tensors = odd_tensors()
    path = tmp_path / "model.safetensors"
    save_aligned(tensors, path, {"format": "muse-served"})
    loaded = load_file(str(path))
    assert {name for name in loaded if name.startswith(PAD)}, "the gaps are filled"
    served = unpadded(loaded)
    assert served.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert served[name].dtype == tensor.dtype and torch.equal(served[name], tensor), name
        if tensor.numel():
            assert loaded[name].data_ptr() % ALIGN == 0, name  # mapped as it is, no copy
    with safe_open(str(path), "pt") as handle:  # safetensors' own checks of the header
        assert handle.metadata() == {"format": "muse-served"}


def test_a_file_packed_back_to_back_is_copied_onto_boundaries(tmp_path: Path):
    path = tmp_path / "plain.safetensors"
    save_file(odd_tensors(), str(path))
    loaded = load_file(str(path))
    assert any(t.data_ptr() % ALIGN for t in loaded.values() if t.numel())  # what broke
    served = unpadded(loaded)
    assert all(t.data_ptr() % ALIGN == 0 for t in served.values() if t.numel())
    assert all(torch.equal(served[name], loaded[name]) for name in loaded)


def test_the_fillers_names_are_the_files_own(tmp_path: Path):
    with pytest.raises(ValueError, match="the file's own"):
        save_aligned({f"{PAD}0": torch.zeros(1)}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_a_file_written_a_tensor_at_a_time_reads_back_and_a_failed_one_is_gone(tmp_path: Path):
    # The conversion writes a model bigger than memory this way, a layer at a time.
    path = tmp_path / "streamed.safetensors"
    tensors = odd_tensors()
    with AlignedWriter(path, {"format": "muse-served"}, entries=len(tensors)) as out:
        for name, tensor in tensors.items():
            out.add(name, tensor)
        out.file.flush()  # past Python's buffer: the data is in the file before the header
        assert path.stat().st_size > sum(t.nbytes for t in tensors.values())
    served = unpadded(load_file(str(path)))
    assert all(torch.equal(served[name], tensor) for name, tensor in tensors.items())
    assert all(t.data_ptr() % ALIGN == 0 for t in served.values() if t.numel())
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "muse-served"}
    crowded = tmp_path / "crowded.safetensors"
    with pytest.raises(ValueError, match="over its room"), AlignedWriter(crowded, entries=0) as out:
        for index in range(40):  # more lines than the header's room holds
            out.add(f"tensor.{index}.with.a.long.name.{'x' * 100}", torch.zeros(1))
    assert not crowded.exists()
    with (
        pytest.raises(ValueError, match="in the file already"),
        AlignedWriter(path, entries=2) as out,
    ):
        out.add("twice", torch.zeros(1))
        out.add("twice", torch.zeros(1))
    assert not path.exists()
