"""What an adapter folder must be before PEFT reads any of it.

PEFT does more than copy factors when it loads an adapter: some `init_lora_weights` values
(`pissa`, `olora`, `corda`, `loftq`, `eva`, ...) rewrite the base layer's weights at load time,
and tensors in the weights file that are not LoRA factors (a base layer's `weight`, an
embedding) are loaded into the model as they are. Taking PEFT's layers out again
(`adapters.strip_peft`) restores the modules, not their weights, so every request of every
guild would be written by the changed model. So Muse reads `adapter_config.json` and the
tensor names itself first and serves only what it knows: an allow-list of settings and values
(an unknown setting passes only when it is off: null, false or empty), LoRA factors only, and
an adapter trained on the model being served.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generation.errors import AdapterError

CONFIG_FILE = "adapter_config.json"
CARD_FILE = "muse.json"  # written by `muse tune` (generation/tuning/card.py)
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# The only tensors PEFT may load: each adapted linear layer's two factors.
FACTOR = re.compile(r"base_model\.model\.[\w.]+\.lora_[AB]\.weight")


@dataclass(frozen=True, slots=True)
class ServedBase:
    """The model adapters are loaded onto, by the names an adapter may know it by."""

    model_id: (
        str  # what `generation.model.loading.load_model` calls it (a GGUF's file name, an HF id)
    )
    path: str = ""  # the folder its weights came from (the model's `name_or_path`)
    revision: str = ""  # a GGUF file's sha256, a Hub commit


def _off(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def _text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _texts(value: Any) -> bool:
    return _text(value) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _flag(value: Any) -> bool:
    return value is None or isinstance(value, bool)


def _init(value: Any) -> bool:
    # True / False / "gaussian" only set the new factors; every other method (pissa, olora,
    # corda, loftq, eva, orthogonal, lora_ga, mica, ...) computes from the base weights and
    # writes into them.
    return isinstance(value, bool) or (isinstance(value, str) and value.lower() == "gaussian")


def _pattern(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: (
        value is None
        or (
            isinstance(value, dict)
            and all(isinstance(k, str) and check(v) for k, v in value.items())
        )
    )


def _layers(value: Any) -> bool:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return True
    return isinstance(value, list) and all(isinstance(v, int) for v in value)


# setting → (what its value may be, what Muse accepts, in words)
SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "peft_type": (lambda v: v == "LORA", "LORA"),
    "task_type": (_text, "a name"),
    "auto_mapping": (_pattern(_text), "a mapping of names"),
    "peft_version": (_text, "a version"),
    "base_model_name_or_path": (_text, "a name"),
    "revision": (_text, "a name"),
    "inference_mode": (_flag, "true or false"),
    "r": (_rank, "a positive whole number"),
    "target_modules": (_texts, "layer names"),
    "exclude_modules": (_texts, "layer names"),
    "lora_alpha": (_number, "a number"),
    "lora_dropout": (lambda v: _number(v) and 0 <= v < 1, "a number from 0 to under 1"),
    "fan_in_fan_out": (_flag, "true or false"),
    "use_rslora": (_flag, "true or false"),
    "init_lora_weights": (_init, "true, false or 'gaussian'; the others rewrite the base weights"),
    "layers_to_transform": (_layers, "layer numbers"),
    "layers_pattern": (_texts, "names"),
    "rank_pattern": (_pattern(_rank), "positive ranks by layer name"),
    "alpha_pattern": (_pattern(_number), "numbers by layer name"),
    "megatron_core": (lambda v: v in (None, "megatron.core"), "'megatron.core'"),
    "qalora_group_size": (lambda v: v is None or _rank(v), "a positive whole number"),
    "runtime_config": (_pattern(_flag), "true / false options"),
    # Off, or PEFT would load more than two factors per linear layer.
    "bias": (lambda v: v in (None, "none"), "'none'; a trained bias would replace the base's"),
}
# Settings that must be off, with what they would add, for the message.
MUST_BE_OFF = {
    "use_dora": "DoRA",
    "lora_bias": "a LoRA bias",
    "modules_to_save": "fully trained modules (modules_to_save)",
    "trainable_token_indices": "trained token embeddings",
    "target_parameters": "LoRA on bare parameters",
    "layer_replication": "replicated layers",
    "alora_invocation_tokens": "aLoRA",
    "use_qalora": "QALoRA",
    "megatron_config": "Megatron layers",
    "loftq_config": "LoftQ (it rewrites the base weights)",
    "eva_config": "EVA initialisation",
    "corda_config": "CorDA initialisation",
    "lora_ga_config": "LoRA-GA initialisation",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
    "use_bdlora": "BD-LoRA",
    "ensure_weight_tying": "tied adapter weights",
}


def read_config(folder: Path) -> dict[str, Any]:
    """`adapter_config.json` of `folder` as JSON, unless a setting is not one Muse serves."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"{CONFIG_FILE} cannot be read: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_FILE} is not a JSON object")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise AdapterError(f"it is a {kind} adapter, not LoRA")
    if config.get("r") is None:
        raise AdapterError(f"its {CONFIG_FILE} sets no rank (r)")
    for setting, value in config.items():
        if setting in MUST_BE_OFF:
            if not _off(value):
                what = MUST_BE_OFF[setting]
                raise AdapterError(f"it uses {what} ({setting}), which mixed batches cannot serve")
        elif setting in SETTINGS:
            allowed, words = SETTINGS[setting]
            if not allowed(value):
                raise AdapterError(
                    f"its {CONFIG_FILE} sets {setting} = {json.dumps(value)}, which Muse does "
                    f"not serve (it takes {words})"
                )
        elif not _off(value):
            raise AdapterError(
                f"its {CONFIG_FILE} sets {setting} = {json.dumps(value)}, a setting Muse does not "
                "know (only off: null, false or empty)"
            )
    return config


def tensor_names(folder: Path) -> set[str]:
    """The tensor names in the adapter's weights file, each a LoRA factor (else `AdapterError`:
    PEFT would load any other tensor into the model's own weights)."""
    safetensors, pickled = (folder / name for name in WEIGHT_FILES)
    try:
        if safetensors.is_file():
            from safetensors import safe_open

            with safe_open(str(safetensors), framework="pt") as weights:
                names = set(weights.keys())
        else:
            import torch

            names = set(torch.load(pickled, map_location="cpu", weights_only=True))
    except Exception as exc:  # any reader failure means the same: unusable weights
        file = safetensors.name if safetensors.is_file() else pickled.name
        raise AdapterError(f"{file} cannot be read: {exc}") from exc
    for name in sorted(names):
        if not FACTOR.fullmatch(name):
            raise AdapterError(
                f"its weights hold {name!r}, which is not a LoRA factor (it would be loaded "
                "into the base model's own weights)"
            )
    return names


def check_base(folder: Path, config: dict[str, Any], base: ServedBase) -> None:
    """Refuse an adapter trained on another model than `base`: by its `muse.json` card's base
    where it has one (`muse tune` writes it), else by PEFT's `base_model_name_or_path`."""
    card = _card_base(folder)
    if card is not None:
        named, revision = str(card.get("id") or ""), str(card.get("revision") or "")
        if not _same_model(named, base):
            raise AdapterError(
                f"it was trained on {named!r} ({CARD_FILE}), not on the served base model "
                f"{base.model_id!r}"
            )
        if revision and base.revision and revision != base.revision:
            raise AdapterError(
                f"it was trained on revision {revision} of {named!r} ({CARD_FILE}); the served "
                f"base model is revision {base.revision}"
            )
        return
    named = config.get("base_model_name_or_path") or ""
    if not named and not base.path:
        return  # an unnamed model (a test's random one) and an adapter naming none
    if not named:
        raise AdapterError(f"its {CONFIG_FILE} names no base model (base_model_name_or_path)")
    if not _same_model(named, base):
        raise AdapterError(
            f"it was trained on {named!r} ({CONFIG_FILE}), not on the served base model "
            f"{base.model_id!r}"
        )


def _card_base(folder: Path) -> dict[str, Any] | None:
    try:
        card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"{CARD_FILE} cannot be read: {exc}") from exc
    base = card.get("base") if isinstance(card, dict) else None
    if not isinstance(base, dict) or not base.get("id"):
        raise AdapterError(f"its {CARD_FILE} names no base model")
    return base


def _same_model(named: str, base: ServedBase) -> bool:
    """Whether `named` is one of the served base's names (a folder by its real path)."""
    if named and named in (base.model_id, base.path):
        return True
    try:
        return bool(base.path) and Path(named).resolve() == Path(base.path).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
