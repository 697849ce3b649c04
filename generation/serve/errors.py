"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

INVALID = "invalid_request_error"
SERVER = "server_error"


class ApiError(Exception):
    """An answer that is an error: its HTTP status and the body's fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def error_body(
    message: str, kind: str = INVALID, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    """400: not JSON, or the wrong shape (a missing field, a wrong type)."""
    return ApiError(400, message, param=param)


def out_of_range(message: str, param: str) -> ApiError:
    """422: the right type, a value Muse cannot use."""
    return ApiError(422, message, param=param, code="invalid_value")


def busy(retry_after_s: float, message: str) -> ApiError:
    """429 with `Retry-After` in whole seconds (at least 1)."""
    seconds = str(max(1, math.ceil(retry_after_s)))
    return ApiError(
        429,
        message,
        kind="rate_limit_error",
        code="rate_limit_exceeded",
        headers={"Retry-After": seconds},
    )


def unavailable(message: str, code: str, retry_after_s: float | None = None) -> ApiError:
    """503: loading, shutting down or stopped; with `Retry-After` when waiting will help."""
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else None
    return ApiError(503, message, kind=SERVER, code=code, headers=headers)


# What aiohttp's own refusals (no such route, wrong method, too big a body) say instead.
HTTP_MESSAGES = {
    404: ("There is no such endpoint: {method} {path}.", "not_found"),
    405: ("{method} is not allowed on {path}.", "method_not_allowed"),
    413: ("The request body is larger than {limit} bytes.", "request_too_large"),
}


def from_http(exc: web.HTTPException, method: str, path: str, limit: int) -> ApiError:
    """aiohttp's HTTP error (`HTTPNotFound`, `HTTPMethodNotAllowed`, …) in OpenAI's shape."""
    template, code = HTTP_MESSAGES.get(exc.status, ("{reason}.", None))
    message = template.format(method=method, path=path, limit=limit, reason=exc.reason)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    kind = INVALID if exc.status < 500 else SERVER
    return ApiError(exc.status, message, kind=kind, code=code, headers=headers)
