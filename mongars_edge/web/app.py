"""create_app(runtime) -> the Starlette application."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mongars_edge.runtime import Runtime


async def health(request: Request) -> JSONResponse:
    """Liveness and a short self-description; no authentication."""
    runtime: Runtime = request.app.state.runtime
    body = {
        "status": "degraded" if runtime.problems else "ok",
        "version": runtime.version,
        "model": runtime.settings.model,
        "uptime_s": round(runtime.uptime_s(), 1),
        "board": runtime.facts.board,
        "profile": runtime.profile.summary(),
        "problems": list(runtime.problems),
    }
    return JSONResponse(body)


def create_app(runtime: Runtime) -> Starlette:
    """Build the web app around an already-open Runtime."""
    app = Starlette(routes=[Route("/health", health)])
    app.state.runtime = runtime
    return app
