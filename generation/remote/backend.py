"""The remote backend: the engine's interface over an OpenAI-compatible server.

`MUSE_BACKEND=openai` sends each request to `<MUSE_OPENAI_BASE_URL>/chat/completions` with
`stream: true` and turns the server-sent events into Muse's chunks (vLLM, TGI, Ollama, llama.cpp's
server or llama-cpp-python's). A request's `model` (an adapter's name, as vLLM serves LoRA
adapters with `--lora-modules NAME=PATH`) is sent as the API's `model`; without one, the
configured or first listed model is. The server does the batching and queueing; Muse bounds how
many requests it has in flight (`MUSE_QUEUE_SIZE`) and refuses more with `EngineBusy`, as the
local engine does. Failures before any text was shown (connection refused, 429, 5xx, a stream that
broke early) are retried with exponential backoff, honouring Retry-After, within the request's
timeout; after text was shown a failure ends the request with `GenerationFailed`, never with
repeated or silently truncated text. The API key goes into the Authorization header only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from generation.errors import AdapterError, EngineBusy, GenerationFailed, ModelLoadError
from generation.outbox import consume
from generation.remote.http import describe, first_model, refusal, retry_after_s
from generation.remote.job import RemoteJob
from generation.remote.sse import SSEDecoder
from generation.types import GenerationChunk, GenerationRequest, GenerationResult, drain

log = logging.getLogger("muse.generation.remote.backend")

# (API base, key) of a server that moves: `muse run`'s child, new port and key at each restart.
Endpoint = Callable[[], Awaitable[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    base_url: str  # MUSE_OPENAI_BASE_URL, e.g. http://127.0.0.1:8000/v1
    api_key: str = field(default="", repr=False)  # MUSE_OPENAI_API_KEY
    model: str = ""  # MUSE_OPENAI_MODEL; empty: the first one the server lists
    queue_size: int = 64  # MUSE_QUEUE_SIZE: requests in flight before "busy"
    max_new_tokens: int = 512  # MUSE_MAX_TOKENS: cap on any request
    connect_timeout_s: float = 10.0
    backoff_s: float = 0.5  # first retry delay; doubles up to backoff_max_s
    backoff_max_s: float = 8.0
    ready_timeout_s: float = 15.0  # how long `wait_ready` waits for the server to answer
    # Send `response_prefix` as an assistant message for the server to continue (vLLM with
    # `continue_final_message`, llama.cpp's own llama-server). Off: llama-cpp-python's server
    # closes that message and starts a new turn, so the prefix is only shown (see
    # generation/remote/job.py).
    prefill: bool = False
    # MUSE_OPENAI_RUNTIME_LORA: new adapters are loaded into the server with vLLM's runtime-LoRA
    # endpoints (vLLM started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; `muse serve` has them).
    runtime_lora: bool = False


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """What `wait_ready` returns: the fields of `LoadedModel` that callers print and record."""

    model_id: str
    device: str  # where it runs: the server's URL
    revision: str = ""


class StreamBroke(Exception):
    """The event stream ended before the server said why it finished."""


class OpenAIBackend:
    """`stream` / `generate` / `abort` against an OpenAI-compatible server. Use it from one
    event loop (the bot's); the HTTP session is made on first use. With an `endpoint`, every
    request first asks it where the server is and which key it takes (and waits while it
    waits); `config.base_url` and `config.api_key` are only where it starts."""

    def __init__(self, config: RemoteConfig, endpoint: Endpoint | None = None) -> None:
        self.config = config
        self._endpoint = endpoint
        self._aim(config.base_url, config.api_key)
        self._session: aiohttp.ClientSession | None = None
        self._jobs: dict[str, RemoteJob] = {}
        self._served = ""  # the model id as the server reports it
        self._listed: list[str] = []  # what GET /models listed, in its order
        self._discovery: asyncio.Task[None] | None = None
        self._closing = False
        self._avg_job_s = 10.0

    def _aim(self, base_url: str, key: str) -> None:
        url = yarl.URL(base_url.strip().rstrip("/"))
        if url.scheme not in {"http", "https"} or not url.host:
            raise ModelLoadError(
                "MUSE_BACKEND=openai needs MUSE_OPENAI_BASE_URL, the server's OpenAI API base "
                f"such as http://127.0.0.1:8000/v1 (got {base_url!r})."
            )
        self._base, self._key = url, key
        self.server = str(url.with_user(None))  # for messages: never credentials, never the key
        self._headers = {"Accept": "text/event-stream"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    async def _follow(self) -> None:
        """Aim at where the endpoint says the server is now (nothing without an endpoint)."""
        if self._endpoint is not None:
            base_url, key = await self._endpoint()
            if base_url != str(self._base) or key != self._key:
                self._aim(base_url, key)

    def start(self) -> OpenAIBackend:
        return self  # nothing to start: the server is already running (or will be)

    @property
    def model_id(self) -> str:
        return self._served or self.config.model

    @property
    def context_tokens(self) -> int | None:
        """Not known here: the server cuts prompts to its own context."""
        return None

    def models(self) -> list[str]:
        """What the server's `GET /models` listed (when it was asked: `wait_ready`), the
        model used by default first; empty until it is known."""
        base = self.model_id
        return ([base] if base else []) + [name for name in self._listed if name != base]

    async def add_adapter(self, name: str, path: Path | str) -> None:
        """Load the adapter into the server (`POST /load_lora_adapter`, vLLM's runtime-LoRA
        API) when `runtime_lora` is on; otherwise say how to serve it and raise."""
        if not self.config.runtime_lora:
            hint = f"--lora-modules {name}={path}"
            log.warning("add %s to the model server's command line to serve it", hint)
            raise AdapterError(
                f"the model server loads adapters only at its start ({hint}); set "
                "MUSE_OPENAI_RUNTIME_LORA=1 where it allows runtime LoRA updating"
            )
        await self._lora("load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        if name not in self._listed:
            self._listed.append(name)

    async def remove_adapter(self, name: str) -> None:
        """Unload the adapter from the server (`POST /unload_lora_adapter`, vLLM's runtime-LoRA
        API); raises `AdapterError` when runtime LoRA is off or the server refuses."""
        if not self.config.runtime_lora:
            raise AdapterError(
                f"the model server unloads adapters only at a restart (without {name!r} among "
                "its --lora-modules); MUSE_OPENAI_RUNTIME_LORA=1 unloads them at run time"
            )
        await self._lora("unload_lora_adapter", {"lora_name": name})
        if name in self._listed:
            self._listed.remove(name)

    async def _lora(self, endpoint: str, body: dict[str, str]) -> None:
        headers = {k: v for k, v in self._headers.items() if k != "Accept"}
        try:
            async with self._http().post(self._url(endpoint), json=body, headers=headers) as resp:
                if resp.status != 200:
                    said = (await resp.text())[:300]
                    raise AdapterError(
                        f"{self.server} refused {endpoint}: HTTP {resp.status} {said}"
                    )
        except aiohttp.ClientError as exc:
            raise AdapterError(f"{self.server} did not answer: {describe(exc)}") from exc

    # -- the engine's face -------------------------------------------------------------------
    async def wait_ready(self) -> RemoteModel:
        """Ask the server for its models (retrying while it starts); raise `ModelLoadError`
        when it does not answer within `ready_timeout_s` or refuses."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        delay, last = 0.25, ""
        while True:
            try:
                await asyncio.wait_for(self._follow(), max(0.01, deadline - time.monotonic()))
                async with self._http().get(self._url("models"), headers=self._headers) as resp:
                    if resp.status == 200:
                        listed = await resp.json(content_type=None)
                        break
                    last = f"HTTP {resp.status}"
                    if resp.status in (401, 403, 404):
                        raise ModelLoadError(refusal(self.server, resp.status, "GET /models"))
            except aiohttp.ClientError as exc:
                last = describe(exc)
            except TimeoutError:
                last = "no server to send to yet"
            except ValueError as exc:
                raise ModelLoadError(f"{self.server}/models did not answer JSON: {exc}") from exc
            if time.monotonic() + delay > deadline:
                raise ModelLoadError(
                    f"The OpenAI-compatible server at {self.server} is not answering ({last}). "
                    "Is it running? Check MUSE_OPENAI_BASE_URL."
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        configured = self.config.model
        self._served = first_model(listed, configured)
        self._listed = _model_ids(listed)
        if configured and self._served != configured:
            log.warning("%s does not list %s: using %s", self.server, configured, self._served)
        log.info("remote backend ready: %s at %s", self.model_id, self.server)
        return RemoteModel(self.model_id, self.server)

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Send `request` now (raising `EngineBusy` at once when too many are in flight) and
        return its chunks."""
        loop = asyncio.get_running_loop()
        if self._closing:
            raise EngineBusy(30.0, "Muse is shutting down")
        if len(self._jobs) >= self.config.queue_size:
            raise EngineBusy(max(1.0, round(self._avg_job_s)))
        cap = max(1, min(request.max_new_tokens, self.config.max_new_tokens))
        job = RemoteJob(request, cap, request.model or self.model_id)
        self._jobs[request.request_id] = job
        job.task = loop.create_task(self._run(job), name=f"muse-remote-{request.request_id}")
        job.task.add_done_callback(lambda _: self._forget(job))  # also when cancelled unstarted
        rid = request.request_id
        # When the consumer leaves early, aborting closes the stream (the server stops too).
        return consume(job.outbox, done=lambda: job.done, abort=lambda: self.abort(rid))

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole text of `request`; raises `GenerationFailed` when the server failed it."""
        return await drain(self.stream(request))

    def abort(self, request_id: str) -> None:
        """End a request with `cancelled`: its stream is closed, so the server stops too."""
        job = self._jobs.get(request_id)
        if job is not None:
            job.finish("cancelled")
            if job.task is not None:
                job.task.cancel()

    def queue_position(self, request_id: str) -> int | None:
        """0 while in flight (the server does the queueing); None when unknown or finished."""
        return 0 if request_id in self._jobs else None

    def load(self) -> tuple[int, int]:
        """(in flight, waiting here): nothing waits on Muse's side."""
        return len(self._jobs), 0

    def close(self) -> None:
        """Stop accepting and cancel everything in flight."""
        self._closing = True
        for request_id in list(self._jobs):
            self.abort(request_id)

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop accepting; let requests in flight finish for up to `grace_s`, cancel the rest,
        and close the HTTP session."""
        self._closing = True
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        self.close()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one request ---------------------------------------------------------------------------
    async def _run(self, job: RemoteJob) -> None:
        """Own one request from send to its last chunk; the deadline covers every retry."""
        rid = job.request.request_id
        try:
            async with asyncio.timeout(max(0.0, job.deadline - time.monotonic())):
                await self._attempts(job)
        except TimeoutError:
            job.finish("timeout")
        except asyncio.CancelledError:
            job.finish("cancelled")
        except GenerationFailed as exc:
            log.warning("request %s failed: %s", rid, exc)
            job.fail(exc)
        except Exception as exc:
            log.exception("request %s failed unexpectedly", rid)
            job.fail(GenerationFailed(f"talking to {self.server} failed: {exc}"))
        finally:
            self._forget(job)

    def _forget(self, job: RemoteJob) -> None:
        """Free the request's slot (from `_run`, or from the task's done callback when it was
        cancelled before it ever ran)."""
        job.finish("cancelled")  # a no-op unless the task never ran
        if self._jobs.get(job.request.request_id) is job:
            del self._jobs[job.request.request_id]
            self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * (time.monotonic() - job.submitted)

    async def _discover(self) -> None:
        """Learn the served model's id once (when `wait_ready` was not awaited), so requests
        name it and chunks report the id `GET /models` lists; a failure is left to the request."""
        if self.model_id:
            return
        if self._discovery is None or (self._discovery.done() and not self.model_id):
            self._discovery = asyncio.ensure_future(self._list_models())
        await asyncio.shield(self._discovery)

    async def _list_models(self) -> None:
        try:
            await self._follow()
            async with self._http().get(self._url("models"), headers=self._headers) as resp:
                if resp.status == 200:
                    listed = await resp.json(content_type=None)
                    self._served = first_model(listed, "")
                    self._listed = _model_ids(listed)
        except (aiohttp.ClientError, ValueError) as exc:
            log.debug("GET %s/models failed: %s", self.server, describe(exc))

    async def _attempts(self, job: RemoteJob) -> None:
        """Send until the server streams an answer; retry what failed before any text showed."""
        await self._discover()
        job.model_id = job.request.model or self.model_id
        delay = self.config.backoff_s
        while True:
            job.attempts += 1
            asked: float | None = None
            try:
                status, asked = await self._attempt(job)
                if status is None:
                    return
                last = f"HTTP {status}"
            except (aiohttp.ClientError, StreamBroke) as exc:
                if job.streamed:
                    raise GenerationFailed(
                        f"the stream from {self.server} broke after {len(job.text)} characters "
                        f"had been shown ({describe(exc)}); not retried, to never repeat text"
                    ) from exc
                last = describe(exc)
            wait = asked if asked is not None else delay * random.uniform(0.8, 1.0)
            if time.monotonic() + wait >= job.deadline:
                raise GenerationFailed(
                    f"the OpenAI-compatible server at {self.server} failed {job.attempts} "
                    f"attempt(s); last: {last}"
                    + (f" (it asked to retry after {asked:.0f} s)" if asked else "")
                )
            log.info("retrying %s in %.2f s: %s", job.request.request_id, wait, last)
            job.reset()
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.config.backoff_max_s)

    async def _attempt(self, job: RemoteJob) -> tuple[int | None, float | None]:
        """One POST: (None, None) when the answer streamed to its end, or a retryable status
        with the server's Retry-After; raises when it is not worth retrying."""
        await self._follow()
        url, body = self._url("chat/completions"), self._payload(job)
        async with self._http().post(url, json=body, headers=self._headers) as resp:
            if resp.status == 200 and resp.content_type == "application/json":
                raise GenerationFailed(f"{self.server} answered JSON, not a stream of events")
            if resp.status == 200:
                await self._read(job, resp)
                return None, None
            if resp.status == 429 or resp.status >= 500:
                return resp.status, retry_after_s(resp.headers.get("Retry-After"))
            detail = (await resp.text(errors="replace"))[:300]
            if self._key:
                detail = detail.replace(self._key, "***")
            what = "POST /chat/completions"
            raise GenerationFailed(refusal(self.server, resp.status, what, detail))

    def _payload(self, job: RemoteJob) -> dict[str, Any]:
        request = job.request
        messages = [m.as_dict() for m in request.messages]
        body: dict[str, Any] = {
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": job.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "repetition_penalty": request.repetition_penalty,  # vLLM, TGI's native name
            "repeat_penalty": request.repetition_penalty,  # llama.cpp's name
        }
        model = request.model or self.model_id
        if model:
            body["model"] = model
        if request.stop:
            body["stop"] = list(request.stop[:4])  # OpenAI's limit; all are enforced here
        if request.ignore_eos:
            body["ignore_eos"] = True  # vLLM and llama.cpp's server; others ignore it
        if request.response_prefix and self.config.prefill:
            messages.append({"role": "assistant", "content": request.response_prefix})
            body.update(continue_final_message=True, add_generation_prompt=False)  # vLLM's
        return body

    async def _read(self, job: RemoteJob, resp: aiohttp.ClientResponse) -> None:
        """Stream the events into `job` until the server or a stop string ends it."""
        decoder = SSEDecoder()
        try:
            async for raw in resp.content.iter_any():
                for data in decoder.feed(raw):
                    if data.strip() == "[DONE]":
                        self._complete(job)
                        return
                    if self._event(job, data):
                        resp.close()  # a stop string ended the text: the server may stop
                        job.finish("stop")
                        return
        except BaseException:
            resp.close()
            raise
        self._complete(job)  # the connection ended without [DONE]

    def _event(self, job: RemoteJob, data: str) -> bool:
        """Apply one event; True when a stop string has ended the text."""
        try:
            event = json.loads(data)
        except ValueError:
            raise GenerationFailed(
                f"{self.server} sent an event that is not JSON: {data[:80]!r}"
            ) from None
        if not isinstance(event, dict):
            return False
        if event.get("error"):
            error = event["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise GenerationFailed(f"{self.server} reported an error mid-stream: {message}")
        if event.get("model") and not job.request.model:  # an adapter's name is not the base's
            self._served = str(event["model"])
        return job.apply(event)

    def _complete(self, job: RemoteJob) -> None:
        if job.server_reason is None:
            raise StreamBroke("the stream ended before the server said it had finished")
        job.finish("length" if job.server_reason == "length" else "stop")

    # -- plumbing ------------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s)
            connector = aiohttp.TCPConnector(limit=self.config.queue_size + 4)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session

    def _url(self, path: str) -> yarl.URL:
        return yarl.URL(f"{self._base}/{path}", encoded=True)


def _model_ids(listed: Any) -> list[str]:
    """The ids of a `GET /models` answer, in its order."""
    data = listed.get("data") if isinstance(listed, dict) else None
    return [str(m["id"]) for m in data or [] if isinstance(m, dict) and m.get("id")]
