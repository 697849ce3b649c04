"""Building the long-lived parts from settings: logging, presets and the generation engine."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch

from bot.cli.fault_injection import fault_hook_from_env
from bot.core.settings import Settings
from generation.backend import Backend
from generation.engine.local_engine import Engine, EngineConfig
from generation.model.loading import LoadedModel, load_model
from generation.model.memory import prefix_cache_mb
from generation.remote.backend import OpenAIBackend, RemoteConfig
from generation.tasks.presets import Preset, load_presets
from storage.store import Store

log = logging.getLogger("muse.bot.cli.wiring")

EXIT_ENGINE_DEAD = 70  # EX_SOFTWARE: tells systemd / docker to restart Muse


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Libraries are noisy at INFO; Muse's own loggers keep the chosen level.
    for noisy in ("transformers", "accelerate", "discord.gateway", "discord.client"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def presets_from(settings: Settings) -> dict[str, Preset]:
    return load_presets(settings.presets_path or None)


def exit_on_fatal(reason: str) -> None:
    """The engine hung: nothing in this process can be trusted to recover, so let the
    supervisor (systemd, docker) start a fresh one."""
    log.critical("exiting for a restart: %s", reason)
    logging.shutdown()
    os._exit(EXIT_ENGINE_DEAD)


async def registered_adapters(store: Store) -> dict[str, Path]:
    """The adapters the local engine serves beside the base: the registry's, not retired.

    Read through the caller's open store: a process opens its database once (`Store.open`)."""
    return {m.name: Path(m.adapter_path) for m in await store.list_models()}


def engine_model(settings: Settings) -> LoadedModel:
    """The local engine's model, loaded on the engine's worker thread: `MUSE_THREADS` is set
    there first (torch's thread count is the calling thread's), then `MUSE_WEIGHTS` and
    `MUSE_MEMORY` applied."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return load_model(
        settings.model or None,
        settings.device,
        settings.cache_dir,
        settings.weights,
        settings.memory,
    )


def build_backend(
    settings: Settings,
    on_fatal: Callable[[str], None] = exit_on_fatal,
    *,
    adapters: Mapping[str, Path] | None = None,
) -> Backend:
    """The backend `MUSE_BACKEND` names: the local `Engine`, whose worker thread loads the
    configured model (the caller does not wait), or (`openai`) the `OpenAIBackend`, which sends
    requests to an OpenAI-compatible server."""
    if settings.backend == "openai":
        remote = RemoteConfig(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key.reveal(),
            model=settings.openai_model,
            queue_size=settings.queue_size,
            max_new_tokens=settings.max_tokens,
        )
        return OpenAIBackend(remote).start()
    config = EngineConfig(
        max_batch=settings.max_batch,
        queue_size=settings.queue_size,
        max_new_tokens=settings.max_tokens,
        step_timeout_s=settings.timeout_s,
        prefix_cache_mb=prefix_cache_mb(settings.memory, EngineConfig().prefix_cache_mb),
        adapters=dict(adapters or {}),
    )
    loader = partial(engine_model, settings)
    hook = fault_hook_from_env()  # None unless a test sets MUSE_TEST_FAULT
    return Engine(loader, config, on_fatal=on_fatal, fault_hook=hook).start()
