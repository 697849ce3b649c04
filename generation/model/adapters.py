"""LoRA adapters served beside the base model, each row of a batch with its own.

Each adapter folder (PEFT's format: `adapter_config.json` + `adapter_model.safetensors`) is loaded
with PEFT onto the base model, its low-rank factors are copied out, and PEFT's layers are taken
out again. What stays in the model is one `RoutedLinear` per adapted layer, holding every served
adapter's factors side by side: for a batch whose rows name different adapters the layer adds
`((x @ A) * mask) @ B`, where `mask` keeps, for each row, the columns of its own adapter (the base
model's rows keep none). That is three extra matrix products and masks per layer whatever the
number of adapters in the batch, and nothing but a Python call when every row is the base
model's. Without adapters nothing is installed at all.

Adapters are numbered by *slot*: 0 is the base model, 1.. the adapters in the order they were
added (a slot is never reused, so the prefix cache may key on it).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generation.errors import AdapterError
from generation.model.adapter_checks import (
    CONFIG_FILE,
    WEIGHT_FILES,
    ServedBase,
    check_base,
    read_config,
    tensor_names,
)

log = logging.getLogger("muse.generation.model.adapters")

BASE_SLOT = 0
# PEFT's name for the adapter while it is read (user names may hold dots, which PEFT refuses).
LOADING = "muse_loading"
ROUTES_KEPT = 8  # batch compositions whose masks are kept (the running batch, recent prefills)


@dataclass(frozen=True, slots=True)
class LoraFactors:
    """One layer's part of one adapter: `delta(x) = x @ a.T @ b.T` (the scaling is in `b`)."""

    a: torch.Tensor  # [rank, in]
    b: torch.Tensor  # [out, rank], times the adapter's scaling


def check_folder(path: Path) -> None:
    """Raise `AdapterError` unless `path` holds PEFT's config and weights (read nothing else:
    a folder without them would send PEFT looking on the Hugging Face Hub)."""
    if not path.is_dir():
        raise AdapterError(f"{str(path)!r} is not a folder")
    if not (path / CONFIG_FILE).is_file():
        raise AdapterError(f"{str(path)!r} has no {CONFIG_FILE}")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise AdapterError(f"{str(path)!r} has no {WEIGHT_FILES[0]}")


def read_factors(
    model: nn.Module, path: Path, base: ServedBase | None = None
) -> dict[str, LoraFactors]:
    """The LoRA factors of the adapter in `path`, by the name of the layer of `model` they adapt,
    in the model's dtype and on its device. Its config, tensor names and (with `base`) the model
    it was trained on are checked before PEFT reads anything (`generation/model/adapter_checks.py`);
    then PEFT loads it onto `model` and its layers are taken out again before this returns
    (also when it fails)."""
    from peft import LoraConfig, PeftConfig, PeftModel

    check_folder(path)
    settings = read_config(path)
    keys = tensor_names(path)
    if base is not None:
        check_base(path, settings, base)
    try:
        config = PeftConfig.from_pretrained(str(path))
    except Exception as exc:
        raise AdapterError(f"{CONFIG_FILE} cannot be read: {exc}") from exc
    if not isinstance(config, LoraConfig):
        raise AdapterError(f"it is a {config.peft_type} adapter, not LoRA")
    try:
        peft_model = PeftModel.from_pretrained(
            model, str(path), adapter_name=LOADING, config=config, autocast_adapter_dtype=False
        )
        return _factors(peft_model, keys, _float_dtype(model))
    except AdapterError:
        raise
    except Exception as exc:  # a wrong shape, an unreadable file: PEFT's message says which
        raise AdapterError(f"PEFT could not load it onto this model: {exc}") from exc
    finally:
        strip_peft(model)


def _factors(peft_model: Any, keys: set[str], activations: torch.dtype) -> dict[str, LoraFactors]:
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    prefix = "base_model.model."
    found: dict[str, LoraFactors] = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, BaseTunerLayer) or LOADING not in module.active_adapters:
            continue
        if not isinstance(module, LoraLinear) or LOADING in module.lora_variant:
            raise AdapterError(f"its layer {name.removeprefix(prefix)} is not a plain LoRA linear")
        if f"{name}.lora_A.weight" not in keys:
            raise AdapterError(f"its weights miss the layer {name.removeprefix(prefix)}")
        weight = module.get_base_layer().weight
        # The factors meet the layer's input: in the weights' dtype, or the model's for int8 /
        # int4 weights (`generation/model/quantize.py` keeps the model's dtype around its layers).
        dtype = weight.dtype if weight.dtype.is_floating_point else activations
        a = module.lora_A[LOADING].weight.detach()
        b = module.lora_B[LOADING].weight.detach() * module.scaling[LOADING]
        found[name.removeprefix(prefix)] = LoraFactors(
            a.to(weight.device, dtype).clone(), b.to(weight.device, dtype).clone()
        )
    if not found:
        raise AdapterError("it adapts no layer of this model")
    return found


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights (its activations')."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def strip_peft(model: nn.Module) -> None:
    """Put back every layer PEFT wrapped in `model` (what `unload` does, also after a load
    that failed half-way)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name in sorted(wrapped, key=len):  # outermost first; inner ones go with them
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, BaseTunerLayer):
            _replace(model, name, module.get_base_layer())
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if attribute in vars(model):
            delattr(model, attribute)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class Route:
    """Which adapter each row of one forward uses, and the column masks that follow from it."""

    def __init__(self, slots: Sequence[int], device: torch.device, dtype: torch.dtype) -> None:
        self.slots = set(slots)
        self._row_slot = torch.tensor(list(slots), device=device).unsqueeze(1)
        self._dtype = dtype
        self._masks: dict[tuple[int, ...], torch.Tensor | None] = {}

    def mask(self, layout: tuple[int, ...], columns: torch.Tensor) -> torch.Tensor | None:
        """[rows, 1, columns] ones where a row's adapter owns the column; None when no row here
        uses an adapter that adapts this layer."""
        if layout not in self._masks:
            if self.slots.isdisjoint(layout):
                self._masks[layout] = None
            else:
                keep = self._row_slot == columns.unsqueeze(0)
                self._masks[layout] = keep.to(self._dtype).unsqueeze(1)
        return self._masks[layout]


class Router:
    """The route of the forward in progress (None: every row is the base model's)."""

    def __init__(self) -> None:
        self.route: Route | None = None


class RoutedLinear(nn.Module):
    """A linear layer plus the served adapters' factors for it, applied row by row."""

    def __init__(self, base_layer: nn.Module, router: Router) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.router = router
        self.parts: dict[int, LoraFactors] = {}  # by slot
        self.layout: tuple[int, ...] = ()  # the slots that own columns, in column order
        self.a = torch.empty(0)  # [in, columns]: every adapter's A, side by side
        self.b = torch.empty(0)  # [columns, out]
        self.columns = torch.empty(0, dtype=torch.long)  # the slot owning each column

    def add(self, slot: int, part: LoraFactors) -> None:
        self.parts[slot] = part
        self._join()

    def remove(self, slot: int) -> None:
        """Drop the slot's factors (the layer must still hold another adapter's)."""
        del self.parts[slot]
        self._join()

    def _join(self) -> None:
        self.layout = tuple(self.parts)
        device = next(iter(self.parts.values())).a.device
        self.a = torch.cat([p.a for p in self.parts.values()]).T.contiguous()
        self.b = torch.cat([p.b for p in self.parts.values()], dim=1).T.contiguous()
        self.columns = torch.tensor(
            [slot for slot, p in self.parts.items() for _ in range(p.a.shape[0])], device=device
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        route = self.router.route
        if route is None:
            return out
        mask = route.mask(self.layout, self.columns)
        if mask is None:
            return out
        low = (x @ self.a).mul_(mask)  # [rows, tokens, columns]: each row's own adapter only
        flat = out.reshape(-1, out.shape[-1])
        flat.addmm_(low.reshape(-1, low.shape[-1]), self.b)
        return flat.view(out.shape)


class Adapters:
    """The adapters served on one model: their names by slot and the routed layers holding
    them. `route(slots)` wraps a forward whose rows use those slots."""

    def __init__(self, model: nn.Module, base_id: str = "", revision: str = "") -> None:
        self.model = model
        self.base_id = base_id
        # What an adapter must have been trained on (not checked for an unnamed model).
        path = str(getattr(model, "name_or_path", "") or "")
        self.base = ServedBase(base_id, path, revision) if base_id else None
        # slot - 1 → name; "" for a slot removed. Slots are never reused: remembered beginnings
        # (generation/model/prefix_cache.py) are keyed by slot, so a new adapter must not
        # inherit them.
        self._slots: list[str] = []
        self._layers: dict[str, RoutedLinear] = {}  # by the adapted layer's name
        self._router = Router()
        self._routes: OrderedDict[tuple[int, ...], Route] = OrderedDict()
        self._device = next(model.parameters()).device
        self._dtype = _float_dtype(model)  # the masks scale activations

    def __len__(self) -> int:
        return len(self.names)

    @property
    def names(self) -> list[str]:
        """The adapters served, in the order they were added."""
        return [name for name in self._slots if name]

    def slot(self, name: str) -> int | None:
        """The slot serving `name`; None when no adapter has that name."""
        if not name:
            return None
        try:
            return self._slots.index(name) + 1
        except ValueError:
            return None

    def add(self, name: str, path: Path | str) -> int:
        """Load the adapter in `path` as `name`; its slot. Raises `AdapterError` (and serves what
        it served before) when the folder cannot be served."""
        if not name:
            raise AdapterError("it has no name")
        if name in self.names or name == self.base_id:
            raise AdapterError(f"the name {name!r} is already served")
        self._uninstall()  # PEFT must see the model's own layers
        try:
            factors = read_factors(self.model, Path(path), self.base)
        finally:
            self._install()
        slot = len(self._slots) + 1
        for layer, part in factors.items():
            if layer not in self._layers:
                self._layers[layer] = RoutedLinear(self.model.get_submodule(layer), self._router)
            self._layers[layer].add(slot, part)
        self._slots.append(name)
        self._routes.clear()  # the layouts changed
        self._install()
        return slot

    def remove(self, name: str) -> None:
        """Stop serving `name` (no row may be using it): its factors leave every layer, and a
        layer left with none is the model's own again. Raises `AdapterError` if not served."""
        slot = self.slot(name)
        if slot is None:
            raise AdapterError(f"{name!r} is not served")
        self._uninstall()
        for layer_name, layer in list(self._layers.items()):
            if slot not in layer.parts:
                continue
            if len(layer.parts) == 1:
                del self._layers[layer_name]
            else:
                layer.remove(slot)
        self._slots[slot - 1] = ""
        self._routes.clear()
        self._install()

    def remove_all(self) -> None:
        """Give the model its own layers back (the engine stopped)."""
        self._uninstall()
        self._layers.clear()
        self._slots.clear()

    @contextmanager
    def route(self, slots: Sequence[int]) -> Iterator[None]:
        """Inside, the model's rows use the adapters `slots` (one per row; 0: the base)."""
        if not any(slots):
            yield
            return
        key = tuple(slots)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = Route(key, self._device, self._dtype)
            while len(self._routes) > ROUTES_KEPT:
                self._routes.popitem(last=False)
        else:
            self._routes.move_to_end(key)
        self._router.route = route
        try:
            yield
        finally:
            self._router.route = None

    def _install(self) -> None:
        for name, layer in self._layers.items():
            _replace(self.model, name, layer)

    def _uninstall(self) -> None:
        for name, layer in self._layers.items():
            _replace(self.model, name, layer.base_layer)


def load_adapters(
    model: nn.Module, folders: Mapping[str, Path | str], base_id: str, revision: str = ""
) -> Adapters:
    """Every adapter of `folders` (name → folder) that loads onto `model` (the base `base_id`
    at `revision`); each one refused is logged with its name and why, and the rest are served."""
    adapters = Adapters(model, base_id, revision)
    for name, folder in folders.items():
        try:
            adapters.add(name, folder)
        except AdapterError as exc:
            log.error("adapter %r refused (%s): %s", name, folder, exc)
        except Exception:  # a bug, not the folder: still only this adapter is lost
            log.exception("adapter %r refused (%s): loading it failed", name, folder)
        else:
            log.info("serving adapter %r from %s", name, folder)
    return adapters
