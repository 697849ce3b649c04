"""vLLM's runtime-LoRA endpoints: `POST /v1/load_lora_adapter` `{"lora_name", "lora_path"}` and
`POST /v1/unload_lora_adapter` `{"lora_name"}`.

Only with a key: loading makes the server read a folder named by the client, so, as vLLM asks for
VLLM_ALLOW_RUNTIME_LORA_UPDATING, `muse serve` answers them only when MUSE_SERVE_API_KEY is set
(else 403), and the key middleware has already refused a wrong key (401). The folder passes the
same checks as a registered adapter's (generation/model/adapter_checks.py). Answers are vLLM's:
plain text on success, OpenAI's error shape otherwise.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from generation.backend import Backend
from generation.errors import AdapterError, EngineDead, UnknownModel
from generation.serve.errors import ApiError, bad_request, unavailable

log = logging.getLogger("muse.generation.serve.lora")

MAX_NAME_CHARS = 100
MAX_PATH_CHARS = 4096


def check_allowed(api_key: str) -> None:
    """403 when the server has no key: nobody could be told apart from anybody."""
    if not api_key:
        raise ApiError(
            403,
            "Loading and unloading adapters at run time needs a key: start muse serve with "
            "MUSE_SERVE_API_KEY set, and send it as Authorization: Bearer <key>.",
            code="runtime_lora_disabled",
        )


async def load(backend: Backend, raw: bytes) -> web.Response:
    """Serve the adapter folder `lora_path` as `lora_name` from now on."""
    body = _object(raw)
    name = _field(body, "lora_name", MAX_NAME_CHARS)
    path = _field(body, "lora_path", MAX_PATH_CHARS)
    if name in backend.models():
        raise bad_request(f"The model {name!r} is already served; unload it first.", "lora_name")
    try:
        await backend.add_adapter(name, path)
    except AdapterError as exc:
        raise ApiError(
            400, f"The adapter {name!r} was refused: {exc}", param="lora_path", code="bad_adapter"
        ) from None
    except EngineDead as exc:
        raise unavailable(f"The engine stopped: {exc}", "engine_dead") from None
    log.info("loaded adapter %r at run time", name)
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def unload(backend: Backend, raw: bytes) -> web.Response:
    """Stop serving `lora_name` (refused while a request names it)."""
    name = _field(_object(raw), "lora_name", MAX_NAME_CHARS)
    served = backend.models()
    if served and name == served[0]:
        raise bad_request("The base model cannot be unloaded.", "lora_name")
    try:
        await backend.remove_adapter(name)
    except UnknownModel as exc:
        raise ApiError(404, str(exc), param="lora_name", code="model_not_found") from None
    except AdapterError as exc:
        raise ApiError(409, f"The adapter {name!r} stays: {exc}.", code="adapter_in_use") from None
    except EngineDead as exc:
        raise unavailable(f"The engine stopped: {exc}", "engine_dead") from None
    log.info("unloaded adapter %r", name)
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _field(body: dict[str, Any], key: str, max_chars: int) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{key} must be a non-empty string.", key)
    if len(value) > max_chars or not value.isprintable():
        raise bad_request(f"{key} must be printable and at most {max_chars} characters.", key)
    return value
