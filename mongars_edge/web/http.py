"""Shared edge helpers: JSON bodies, the body size limit, and errors in OpenAI's error shape.

Every error leaves the box as `{"error": {"message", "type", "param", "code"}}` (what OpenAI
clients parse), on /v1/* and on the native /api/* alike; `code` is the MongarsError kind. The
Ollama-compatible routes (web/ollama.py) answer Ollama's `{"error": "message"}` instead.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Final, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mongars_edge.errors import InvalidRequestError, MongarsError
from mongars_edge.web.schemas.common import BadFieldError, convert, decode, encode

__all__ = [
    "BadFieldError",
    "BodyLimit",
    "JsonReply",
    "error_response",
    "read_body",
    "read_query",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

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


def _describe(exc: BaseException) -> tuple[int, str, str, str | None, dict[str, str]]:
    """(status, message, code, param, headers) of an exception; unexpected ones say nothing
    about internals."""
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
    return status, message, code, param if isinstance(param, str) else None, headers


def error_response(exc: BaseException, *, ollama: bool = False) -> JSONResponse:
    """The HTTP answer for an exception: OpenAI's error object, or with `ollama` Ollama's
    `{"error": "message"}` (its clients read only that string)."""
    status, message, code, param, headers = _describe(exc)
    body = {"error": message} if ollama else error_payload(status, message, code, param)
    return JSONResponse(body, status_code=status, headers=headers)


def _http_code(exc: HTTPException) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")


class JsonReply(Response):
    """A declared shape (a msgspec Struct) encoded as JSON; UNSET fields are left out."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode(content)


async def read_body(request: Request, kind: type[T], *, required: bool = True) -> T:
    """The request's JSON body decoded into its declaration, or a 400 naming the field."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise InvalidRequestError(f"send JSON (Content-Type: application/json), not {ctype}")
    raw = await request.body()
    if not required and not raw.strip():
        return decode(b"{}", kind)
    return decode(raw, kind)


def read_query(request: Request, kind: type[T]) -> T:
    """The query parameters converted and checked like a body (a 400 names the parameter)."""
    return convert(request.query_params, kind)


class BodyLimit:
    """ASGI middleware: bodies over `limit` bytes get 413 before a handler reads them (in
    Ollama's error shape on `ollama_paths`)."""

    def __init__(
        self, app: ASGIApp, limit: int, ollama_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.limit = limit
        self.ollama_paths = ollama_paths

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
            ollama = scope.get("path") in self.ollama_paths
            await error_response(exc, ollama=ollama)(scope, receive, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.limit} bytes (max_body_bytes)"

    async def _reject(self, scope: Scope, receive: Receive, send: Send, length: int) -> None:
        ollama = scope.get("path") in self.ollama_paths
        response: Response = error_response(PayloadTooLargeError(self._message()), ollama=ollama)
        if length <= _DRAIN_FACTOR * self.limit:
            # Read and drop the body so the client sees the 413 instead of a reset connection.
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        else:
            response.headers["Connection"] = "close"
        await response(scope, receive, send)
