"""create_app(runtime) -> the Starlette application: page, OpenAI API, native API, metrics."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mongars_edge.errors import MongarsError
from mongars_edge.localbox import same_machine
from mongars_edge.web import api, ollama, openai
from mongars_edge.web.http import BodyLimit, error_response
from mongars_edge.web.metrics import CountRequests, Metrics, metrics_endpoint
from mongars_edge.web.schemas.document import document
from mongars_edge.web.schemas.native import Health
from mongars_edge.web.schemas.routes import ApiRoute, Op

if TYPE_CHECKING:
    from mongars_edge.runtime import Runtime

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
# The page loads nothing from anywhere else, and nothing may frame it.
_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


async def health(request: Request) -> JSONResponse:
    """Liveness and a short self-description; no authentication."""
    runtime: Runtime = request.app.state.runtime
    problems = runtime.health_problems()
    engine = runtime.engine
    body = {
        "status": "degraded" if problems else "ok",
        "version": runtime.version,
        # The model answering now; `model_setting` is what was asked for (auto: the profile's).
        "model": engine.info.id if engine is not None and engine.loaded else None,
        "model_setting": runtime.settings.model,
        # A model split across boxes: which layers live where (null when it is not split).
        "split": runtime.split_placement(),
        "uptime_s": round(runtime.uptime_s(), 1),
        "board": runtime.facts.board,
        "profile": runtime.profile.summary(),
        "speech": runtime.speech_summary(),
        # The ONNX providers wanted, installed and used per model (TensorRT engine state).
        "onnx": runtime.onnx_report().to_dict(),
        "problems": problems,
    }
    server = request.scope.get("server")
    if same_machine(request.client.host if request.client else None, server and server[0]):
        # Only for clients on this machine: the CLI follows it (mongars_edge.localbox).
        body["data_dir"] = str(runtime.data_dir)
    return JSONResponse(body)


async def page(request: Request) -> Response:
    """The chat page (the same document for /, /login and /setup; the script picks the view)."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def openapi_schema(request: Request) -> JSONResponse:
    """The OpenAPI 3.1 document, generated once from the routes' declarations."""
    doc = getattr(request.app.state, "openapi", None)
    if doc is None:
        runtime: Runtime = request.app.state.runtime
        doc = request.app.state.openapi = document(request.app.routes, runtime.version)
    return JSONResponse(doc)


class SecurityHeaders:
    """ASGI middleware adding CSP and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


def _audio_routes() -> list[BaseRoute]:
    """/v1/audio/* from the speech issue's mongars_edge/web/audio.py, when it is there."""
    if importlib.util.find_spec("mongars_edge.web.audio") is None:
        return []
    import mongars_edge.web.audio as audio

    found: list[BaseRoute] = audio.routes()
    return found


def create_app(runtime: Runtime) -> Starlette:
    """Build the web app around an already-open Runtime."""
    metrics = Metrics(runtime)
    chat = getattr(runtime, "chat", None)
    if chat is not None:
        chat.observer = metrics

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, MongarsError):
            metrics.errors.labels(exc.kind).inc()
        return error_response(exc, ollama=request.url.path in ollama.PATHS)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        path = request.url.path
        if path.startswith(("/v1/", "/api/")) or not isinstance(exc, HTTPException):
            return error_response(exc, ollama=path in ollama.PATHS)
        return Response(f"{exc.status_code} {exc.detail}\n", status_code=exc.status_code)

    routes: list[BaseRoute] = [
        ApiRoute(
            "/health",
            health,
            {"GET": Op("Liveness and self-description (no auth)", ok=Health, public=True)},
        ),
        ApiRoute(
            "/metrics",
            metrics_endpoint,
            {
                "GET": Op(
                    "Prometheus metrics (administrators)",
                    content={"text/plain": {"type": "string"}},
                )
            },
        ),
        ApiRoute(
            "/openapi.json",
            openapi_schema,
            {
                "GET": Op(
                    "This document: OpenAPI 3.1 (no auth)",
                    content={"application/json": {"type": "object"}},
                    public=True,
                )
            },
        ),
        Route("/", page),
        Route("/login", page),
        Route("/setup", page),
        *openai.routes(),
        *api.routes(),
        *ollama.routes(),
        *_audio_routes(),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    handlers: dict[Any, Any] = {
        MongarsError: on_error,
        HTTPException: on_http_error,
        Exception: on_error,
    }
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(CountRequests, metrics=metrics),
            Middleware(SecurityHeaders),
            Middleware(BodyLimit, limit=runtime.settings.max_body_bytes, ollama_paths=ollama.PATHS),
        ],
        exception_handlers=handlers,
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    return app
