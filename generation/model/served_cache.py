"""A GGUF file's weights as Muse serves them on the CPU: converted once, then mapped from disk.

The conversion reads the file one tensor at a time (de-quantised by gguf-py under transformers'
own names and tensor processors: Llama's query and key rows un-permuted, so each tensor is the
number `from_pretrained(gguf_file=...)` gives) and writes `model.safetensors` with every linear
layer packed as `quantize.Int4Linear` / `Int8Linear` hold it (`NAME.weight` the packed int4 or
the int8 matrix, `NAME.scales_and_zeros` or `NAME.scales` bf16), the output head int8, and the
rest (embeddings, norms) fp32 as the file has them. The projections the step multiplies
together (query/key/value, gate/up) are stored joined, as the step calls them
(`fusion.joined_entries`): the layers' weights are views of those. There is no float32 copy
of the linear layers anywhere. Every tensor starts on a 64-byte boundary of the file
(`aligned_file.py`): torch's int kernels read mapped weights with aligned loads.

Loading builds the model on the meta device and hands it the file's tensors memory-mapped
(safetensors): nothing is copied or re-quantised, the embeddings' rows are read from the file
as they are looked up (`file_rows.FileRows`: through the mapping, a lookup made the whole table
resident), and the bf16 copy for many rows is widened from the packed weights only when the
budget holds it (`generation/model/memory.py`). fp32 and bf16 (`MUSE_WEIGHTS`, training) take
the exact weights from the GGUF itself with the same reader (`exact_model`).
"""

from __future__ import annotations

import logging
import mmap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generation.model import fusion
from generation.model.aligned_file import AlignedWriter, data_offset, unpadded
from generation.model.file_rows import FileRows
from generation.model.quantize import Int4Linear, Int8Linear

log = logging.getLogger("muse.generation.model.served_cache")

SERVED_FILE = "model.safetensors"
PROGRESS_S = 5.0  # how often a conversion logs how far it is


def skeleton(config: Any) -> nn.Module:
    """The model `config` describes, on the meta device (no memory for its weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def gguf_tensors(reader: Any, model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of the GGUF file `reader` reads (a `gguf.GGUFReader`) that `model` (a
    `skeleton`) has, under `model`'s name for it, de-quantised to fp32, one at a time, as
    transformers' GGUF loader reads them."""
    from gguf import dequantize
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    architecture = read_field(reader, "general.architecture")[0]
    config = model.config.to_dict()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
    names = get_gguf_hf_weights_map(model, processor)
    parsed: dict[str, Any] = {"config": config, "tensors": {}}
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        result = processor.process(
            weights=weights, name=tensor.name, tensor_key_mapping=names, parsed_parameters=parsed
        )
        if result.name in names:
            yield names[result.name], torch.from_numpy(result.weights.copy())
        _release(reader, tensor.data_offset, tensor.n_bytes)


def _release(reader: Any, start: int, size: int) -> None:
    """Drop the read file's pages from `start` for `size` bytes out of this process (the
    reader maps the whole file: read through, it would all stay resident to the end; the
    kernel may keep it cached)."""
    mapping = getattr(reader.data, "_mmap", None)
    if mapping is None or not hasattr(mapping, "madvise"):
        return
    first = start - start % mmap.PAGESIZE
    end = min(start + size, len(mapping))
    end -= end % mmap.PAGESIZE  # the last page may hold the next tensor's start
    if end > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, end - first)


def convert(path: Path, folder: Path, bits: int, config: Any) -> None:
    """Write `folder`/`SERVED_FILE`: the GGUF file `path`'s weights served with `bits` (4 or 8)
    for the model `config` describes, logging how far it is every `PROGRESS_S` seconds.

    Written as it is read, a decoder layer at a time (its projections joined once the layer's
    last tensor is in): the memory it takes is one layer's, and the embeddings' until the end
    (a tied head is quantised from them), not the model's."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    model = skeleton(config)
    head = model.get_output_embeddings()
    head_name = f"{_name_of(model, head)}.weight"
    embeddings_name = f"{_name_of(model, model.get_input_embeddings())}.weight"
    linears = {f"{name}.weight": m for name, m in model.named_modules() if type(m) is nn.Linear}
    total = len(reader.tensors)
    layer, pending = "", {}  # the decoder layer being read, and its tensors so far
    embeddings = None
    started = last = time.perf_counter()
    # A GGUF tensor gives at most three served ones, each with a filler before it.
    with AlignedWriter(folder / SERVED_FILE, {"format": "muse-served"}, entries=8 * total) as out:

        def write(tensors: dict[str, torch.Tensor]) -> None:
            for name, tensor in fusion.joined_entries(tensors).items():
                out.add(name, tensor)

        for done, (name, tensor) in enumerate(gguf_tensors(reader, model), 1):
            module = linears.get(name)
            if module is None:
                served = {name: tensor.contiguous()}
            else:
                served = _packed(name.removesuffix(".weight"), tensor, bits, module is head)
            if name == embeddings_name:
                embeddings = tensor
            owner = _layer_of(name)
            if owner != layer:
                write(pending)
                layer, pending = owner, {}
            if owner:
                pending.update(served)
            else:
                write(served)
            now = time.perf_counter()
            if now - last >= PROGRESS_S:
                last = now
                left = (now - started) / done * (total - done)
                log.info(
                    "converting %s: %d of %d tensors, %.0f s so far, about %.0f s left",
                    path.name,
                    done,
                    total,
                    now - started,
                    left,
                )
        write(pending)
        if head_name not in out.header:  # tied to the embeddings: quantised from them
            if embeddings is None:
                raise ValueError(f"{path.name} has neither an output head nor embeddings")
            write(_packed(head_name.removesuffix(".weight"), embeddings, bits, True))
    log.info("converted %s in %.0f s", path.name, time.perf_counter() - started)


def _layer_of(name: str) -> str:
    """The decoder layer a tensor belongs to (`model.layers.3.`), or "" for the others."""
    parts = name.split(".")
    for index in range(len(parts) - 1):
        if parts[index] == "layers" and parts[index + 1].isdigit():
            return ".".join(parts[: index + 2]) + "."
    return ""


def _packed(name: str, weight: torch.Tensor, bits: int, head: bool) -> dict[str, torch.Tensor]:
    """The served tensors of the linear layer `name` with fp32 `weight` (`quantize.quantise`'s
    choice: int4 where the packed layout holds it, the head and any other layer int8)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bits == 4 and not head and Int4Linear.fits(linear):
        layer = Int4Linear(linear, wide=False)
        return {
            f"{name}.weight": layer.weight.data,
            f"{name}.scales_and_zeros": layer.scales_and_zeros,
        }
    layer8 = Int8Linear(linear)
    return {f"{name}.weight": layer8.weight.data, f"{name}.scales": layer8.scales}


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def served_model(folder: Path, config: Any) -> nn.Module:
    """The model `config` describes with the served weights of `folder` (`convert`), memory-mapped,
    without bf16 copies (`memory.keep_wide` adds them)."""
    from safetensors.torch import load_file

    tensors = unpadded(load_file(str(folder / SERVED_FILE)))  # mapped, not read
    model = skeleton(config)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = model.get_output_embeddings()
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    joined = fusion.split_entries(tensors, {name: m.out_features for name, m in linears.items()})
    for name, module in linears.items():
        weight = tensors.pop(f"{name}.weight")
        if f"{name}.scales_and_zeros" in tensors:
            layer = Int4Linear.packed(weight, tensors.pop(f"{name}.scales_and_zeros"))
        else:
            layer = Int8Linear.packed(weight, tensors.pop(f"{name}.scales"))
        bias = tensors.pop(f"{name}.bias", None)
        if bias is not None:
            layer.bias = nn.Parameter(bias, requires_grad=False)
        layer.kernel_only = module is head
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, layer)
    for names, weight, scales in joined:
        fusion.adopt([model.get_submodule(name) for name in names], weight, scales)
    model.load_state_dict(tensors, strict=False, assign=True)
    path = folder / SERVED_FILE
    name = f"{_name_of(model, model.get_input_embeddings())}.weight"
    embeddings = FileRows(model.get_input_embeddings().weight, path, data_offset(path, name))
    model.set_input_embeddings(embeddings)
    if tied:  # as `quantise` leaves a tied model: the head int8, the embeddings as they were
        model.get_output_embeddings().original_weight = embeddings.weight
        model.config.tie_word_embeddings = False
    return _finished(model)


def exact_model(path: Path, config: Any) -> nn.Module:
    """The model `config` describes with the GGUF file `path`'s weights de-quantised to fp32
    (what `from_pretrained(gguf_file=...)` gives, read one tensor at a time)."""
    from gguf import GGUFReader

    model = skeleton(config)
    tensors = dict(gguf_tensors(GGUFReader(str(path)), model))
    model.load_state_dict(tensors, strict=False, assign=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return _finished(model)


def _finished(model: nn.Module) -> nn.Module:
    """`model` with the buffers it computes itself (the rotary frequencies, left on the meta
    device by `skeleton`) made again on the CPU; ValueError if a weight is still missing."""
    for name, module in list(model.named_modules()):
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, type(module)(config=model.config))
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"the file has no weights for {', '.join(missing[:3])}")
    return model
