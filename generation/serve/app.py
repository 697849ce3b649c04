"""The aiohttp application: `/v1/chat/completions`, `/v1/models`, `/health` and vLLM's
runtime-LoRA endpoints (generation/serve/lora.py) over a `Backend`.

Middlewares, outermost first: one log line per request (method, path, status, ms, tokens; never a
prompt, never a header), errors in OpenAI's shape, the Bearer key. A closed client connection
cancels its handler (the runner is made with `handler_cancellation`, see generation/serve/server.py)
and leaving the backend's stream aborts the request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from generation.backend import Backend
from generation.errors import EngineBusy, EngineDead, GenerationFailed
from generation.serve import lora
from generation.serve import responses as api
from generation.serve.errors import SERVER, ApiError, busy, error_body, from_http, unavailable
from generation.serve.parse import ChatCall, parse_chat
from generation.serve.proof import CHALLENGE_HEADER, MAX_CHALLENGE_CHARS, health_proof
from generation.types import GenerationChunk

log = logging.getLogger("muse.generation.serve")

OPEN_PATHS = frozenset({"/health"})  # answered without the key
LOADING_RETRY_S = 5.0
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    api_key: str = field(default="", repr=False)  # MUSE_SERVE_API_KEY; empty: no key asked
    timeout_s: float = 120.0  # MUSE_TIMEOUT_S: each request's
    max_new_tokens: int = 512  # MUSE_MAX_TOKENS: the default and the cap
    max_body_bytes: int = 1 << 20
    shutdown_timeout_s: float = 5.0  # at close, for handlers still writing their last bytes
    max_connections: int = 256  # --max-connections: open at once; over it, a 503 and closed
    # A connection must have sent a whole request head this long after it opened (or after its
    # last answer, which is also how long an idle kept-alive connection lives).
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0  # to send the body, once the head is in
    unauthorized_delay_s: float = 0.5  # before every 401, so that guessing the key is slow


class ServeState:
    """The backend, whether its model is ready, and whether the server is stopping."""

    def __init__(self, backend: Backend, config: ServeConfig) -> None:
        self.backend = backend
        self.config = config
        self.ready = False
        self.load_error: str | None = None
        self.stopping = False
        self.started = int(time.time())
        self.watcher: asyncio.Task[None] | None = None

    async def watch_ready(self) -> None:
        try:
            loaded = await self.backend.wait_ready()
        except Exception as exc:  # noqa: BLE001 - any loader error: say it on /health
            self.load_error = str(exc) or type(exc).__name__
            log.error("the model failed to load: %s", self.load_error)
            return
        self.ready = True
        log.info("ready: %s on %s", loaded.model_id, loaded.device)

    def check_serving(self) -> None:
        if self.stopping:
            raise unavailable("The server is shutting down.", "shutting_down", LOADING_RETRY_S)
        if self.load_error is not None:
            raise unavailable(f"The model failed to load: {self.load_error}", "model_load_failed")
        if not self.ready:
            raise unavailable("The model is still loading.", "model_loading", LOADING_RETRY_S)


STATE = web.AppKey("muse_serve_state", ServeState)
TOKENS = web.RequestKey("muse_tokens", tuple)  # (tokens in, tokens out) for the log line


def create_app(backend: Backend, config: ServeConfig | None = None) -> web.Application:
    """The application; its start-up begins watching for the backend to be ready."""
    config = config or ServeConfig()
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[_access_log, _errors, _auth(config.api_key, config.unauthorized_delay_s)],
    )
    app[STATE] = ServeState(backend, config)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/load_lora_adapter", load_lora_adapter)
    app.router.add_post("/v1/unload_lora_adapter", unload_lora_adapter)
    app.on_startup.append(_start_watching)
    app.on_cleanup.append(_stop_watching)
    return app


async def _start_watching(app: web.Application) -> None:
    state = app[STATE]
    state.watcher = asyncio.create_task(state.watch_ready(), name="muse-serve-ready")


async def _stop_watching(app: web.Application) -> None:
    watcher = app[STATE].watcher
    if watcher is not None and not watcher.done():
        watcher.cancel()


# -- the endpoints ---------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    """Open to anyone; the load error only with the key (it may name paths and hosts), and a
    `proof` of the key when asked for one (generation/serve/proof.py)."""
    state = request.app[STATE]
    key = state.config.api_key
    answer: dict[str, str]
    if state.load_error is not None:
        answer = {"status": "failed"}
        if not key or _has_key(request, key.encode()):
            answer["error"] = state.load_error
    elif state.stopping or not state.ready:
        answer = {"status": "stopping" if state.stopping else "loading"}
    else:
        answer = {"status": "ok", "model": state.backend.model_id}
    challenge = request.headers.get(CHALLENGE_HEADER, "")
    if key and 0 < len(challenge) <= MAX_CHALLENGE_CHARS:
        answer["proof"] = health_proof(key, challenge)
    return web.json_response(answer, status=200 if answer["status"] == "ok" else 503)


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.check_serving()
    listed = api.model_list(state.backend.models(), state.started, state.backend.context_tokens)
    return web.json_response(listed)


async def load_lora_adapter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    lora.check_allowed(state.config.api_key)
    state.check_serving()
    return await lora.load(state.backend, await _body(request, state.config))


async def unload_lora_adapter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    lora.check_allowed(state.config.api_key)
    state.check_serving()
    return await lora.unload(state.backend, await _body(request, state.config))


async def _body(request: web.Request, config: ServeConfig) -> bytes:
    try:
        async with asyncio.timeout(config.body_timeout_s):  # a body sent a byte at a time
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408,
            f"The request body did not arrive within {config.body_timeout_s:g} s.",
            code="request_timeout",
        ) from None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.check_serving()
    rid = uuid.uuid4().hex
    config = state.config
    raw = await _body(request, config)
    call = parse_chat(
        raw,
        max_new_tokens=config.max_new_tokens,
        timeout_s=config.timeout_s,
        request_id=rid,
    )
    served = state.backend.models()
    if call.model is not None and call.model not in served:
        raise ApiError(
            404,
            f"The model {call.model[:100]!r} does not exist; GET /v1/models lists {served}.",
            param="model",
            code="model_not_found",
        )
    name = call.model or state.backend.model_id
    if call.model is not None and call.model != state.backend.model_id:  # an adapter
        call = dataclasses.replace(call, request=dataclasses.replace(call.request, model=name))
    reply = _Reply(f"chatcmpl-{rid}", int(time.time()), name, call)
    try:
        if call.stream:
            return await reply.stream(request, state.backend)
        return await reply.whole(request, state.backend)
    finally:
        if reply.last is not None:
            request[TOKENS] = (reply.last.tokens_in, reply.last.tokens_out)


class _Reply:
    """One answer being written: streamed as events, or whole."""

    def __init__(self, call_id: str, created: int, model: str, call: ChatCall) -> None:
        self.call_id, self.created, self.model, self.call = call_id, created, model, call
        self.text = api.Continuation(call.request.response_prefix)
        self.last: GenerationChunk | None = None

    def _open(self, backend: Backend) -> AsyncIterator[GenerationChunk]:
        """Queue the request: a full queue is a 429 at once, before any header is sent."""
        try:
            return backend.stream(self.call.request)
        except EngineBusy as exc:
            raise busy(exc.retry_after_s, str(exc)) from None
        except EngineDead as exc:
            raise unavailable(f"The engine stopped: {exc}", "engine_dead") from None

    async def _leave(self, chunks: AsyncIterator[GenerationChunk], backend: Backend) -> None:
        """However the answer ended (a closed connection cancels the handler): close the
        stream, and abort the request if it had not finished."""
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
        if self.last is None or not self.last.finished:
            backend.abort(self.call.request.request_id)

    async def whole(self, request: web.Request, backend: Backend) -> web.Response:
        chunks = self._open(backend)
        try:
            async for item in chunks:
                self.last = item
        except GenerationFailed as exc:
            raise ApiError(500, f"The generation failed: {exc}", kind=SERVER) from None
        except EngineDead as exc:
            raise unavailable(f"The engine stopped: {exc}", "engine_dead") from None
        finally:
            await self._leave(chunks, backend)
        last = self.last
        if last is None or not last.finished:
            raise ApiError(500, "The engine ended the stream without a final chunk.", kind=SERVER)
        reason = api.finish_reason(last.finish_reason)
        if reason is None:
            raise self._unfinished(last)
        tokens = api.usage(last.tokens_in, last.tokens_out)
        text = self.text.content(last.text)
        body = api.completion(self.call_id, self.created, self.model, text, reason, tokens)
        return web.json_response(body, dumps=_dumps)

    async def stream(self, request: web.Request, backend: Backend) -> web.StreamResponse:
        chunks = self._open(backend)
        response = web.StreamResponse(headers=SSE_HEADERS)
        try:
            await response.prepare(request)
            await response.write(self._event({"role": "assistant", "content": ""}))
            try:
                async for item in chunks:
                    self.last = item
                    delta = self.text.delta(item.text)
                    if delta:
                        await response.write(self._event({"content": delta}))
                    if item.finished:
                        await response.write(self._final(item))
            except (GenerationFailed, EngineDead) as exc:
                failed = error_body(f"The generation failed: {exc}", SERVER)
                await response.write(api.event(failed))
            await response.write(api.DONE)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left while a write was under way: the request is aborted below
        finally:
            await self._leave(chunks, backend)
        return response

    def _event(
        self, delta: dict[str, str], reason: str | None = None, tokens: dict[str, int] | None = None
    ) -> bytes:
        return api.event(api.chunk(self.call_id, self.created, self.model, delta, reason, tokens))

    def _final(self, last: GenerationChunk) -> bytes:
        reason = api.finish_reason(last.finish_reason)
        if reason is None:
            return api.event(self._unfinished(last).body())
        tokens = api.usage(last.tokens_in, last.tokens_out)
        out = self._event({}, reason, tokens)
        if self.call.include_usage:
            out += api.event(api.usage_chunk(self.call_id, self.created, self.model, tokens))
        return out

    @staticmethod
    def _unfinished(last: GenerationChunk) -> ApiError:
        if last.finish_reason == "cancelled":
            return unavailable("The request was cancelled: the server is stopping.", "cancelled")
        return ApiError(500, f"The generation failed: {last.error or 'unknown error'}", kind=SERVER)


def _dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False)


# -- middlewares -------------------------------------------------------------------------------
@web.middleware
async def _access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status: int | str = "closed"  # the client left before an answer
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        tokens = request.get(TOKENS)
        spent = f" tokens {tokens[0]}+{tokens[1]}" if tokens else ""
        ms = (time.monotonic() - started) * 1000
        path = request.path if request.path.isprintable() else repr(request.path)
        log.info("%s %s %s %.0f ms%s", request.method, path[:200], status, ms, spent)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        limit = request.app[STATE].config.max_body_bytes
        return from_http(exc, request.method, request.path, limit).response()
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return ApiError(500, "Internal server error.", kind=SERVER).response()


def _has_key(request: web.Request, expected: bytes) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    given = token.strip().encode("utf-8", "surrogatepass")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, expected)


def _auth(
    key: str, delay_s: float
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Every path but /health asks for `Authorization: Bearer <key>` when a key is set; a
    refusal waits `delay_s` first, so that guessing costs time (the connection cap bounds how
    many guesses wait at once)."""
    expected = key.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected and request.path not in OPEN_PATHS and not _has_key(request, expected):
            await asyncio.sleep(delay_s)
            raise ApiError(
                401,
                "Missing or wrong API key: send Authorization: Bearer <MUSE_SERVE_API_KEY>.",
                code="invalid_api_key",
            )
        return await handler(request)

    return auth
