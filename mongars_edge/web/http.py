"""Shared edge helpers: JSON bodies, the body size limit, and errors in OpenAI's error shape.

Every error leaves the box as `{"error": {"message", "type", "param", "code"}}` (what OpenAI
clients parse), on /v1/* and on the native /api/* alike; `code` is the MongarsError kind.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mongars_edge.errors import InvalidRequestError, MongarsError

log = logging.getLogger(__name__)

_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


_DRAIN_FACTOR: Final = 16  # bodies up to 16x the limit are read and dropped before the 413


class PayloadTooLargeError(InvalidRequestError):
    http_status = 413
    kind = "request_too_large"


def error_payload(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(exc: BaseException) -> JSONResponse:
    """The HTTP answer for an exception; unexpected ones say nothing about internals."""
    headers: dict[str, str] = {}
    if isinstance(exc, MongarsError):
        status, message, code = exc.http_status, str(exc), exc.kind
        retry = getattr(exc, "retry_after_s", None)
        if isinstance(retry, int | float) and math.isfinite(retry):
            headers["Retry-After"] = str(max(1, math.ceil(retry)))
        param = getattr(exc, "param", None)
    elif isinstance(exc, HTTPException):
        status, message, code, param = exc.status_code, str(exc.detail), _http_code(exc), None
        headers.update(exc.headers or {})
    else:
        log.error("unexpected error in a request", exc_info=exc)
        status, code, param = 500, "internal_error", None
        message = "internal error; see the box's log"
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="mongars-edge"')
    return JSONResponse(
        error_payload(status, message, code, param if isinstance(param, str) else None),
        status_code=status,
        headers=headers,
    )


def _http_code(exc: HTTPException) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")


class BadFieldError(InvalidRequestError):
    """One request field is wrong; `param` names it (OpenAI clients show it)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/415 that says what is wrong."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise InvalidRequestError(f"send JSON (Content-Type: application/json), not {ctype}")
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return data


def get_str(data: Mapping[str, Any], key: str, *, required: bool = False, default: str = "") -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise BadFieldError(key, "is required")
        return default
    if not isinstance(value, str):
        raise BadFieldError(key, "must be a string")
    return value


def get_bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadFieldError(key, "must be true or false")
    return value


def get_number(
    data: Mapping[str, Any],
    key: str,
    default: float | None,
    *,
    lo: float,
    hi: float,
    integer: bool = False,
) -> float | None:
    value = data.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value) or not lo <= value <= hi:
        kind = "a whole number" if integer else "a number"
        raise BadFieldError(key, f"must be {kind} from {lo:g} to {hi:g}")
    return int(value) if integer else float(value)


class BodyLimit:
    """ASGI middleware: bodies over `limit` bytes get 413 before a handler reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > self.limit:
                    await self._reject(scope, receive, send, length)
                    return
        seen = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLargeError(self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLargeError as exc:
            if response_started:
                raise
            await error_response(exc)(scope, receive, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.limit} bytes (max_body_bytes)"

    async def _reject(self, scope: Scope, receive: Receive, send: Send, length: int) -> None:
        response: Response = error_response(PayloadTooLargeError(self._message()))
        if length <= _DRAIN_FACTOR * self.limit:
            # Read and drop the body so the client sees the 413 instead of a reset connection.
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        else:
            response.headers["Connection"] = "close"
        await response(scope, receive, send)
