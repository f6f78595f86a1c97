"""Ollama-compatible endpoints: /api/version, /api/tags, /api/show, /api/ps, /api/chat,
/api/generate, /api/embed, /api/embeddings, /api/pull.

Clients written for Ollama (its `ollama` Python package, Home Assistant's Ollama integration,
Open WebUI) talk to the box with the box's bearer token. Chat goes through the same pipeline
as /v1/chat/completions (web/ollama_chat.py). Errors are Ollama's `{"error": "message"}`.
What differs from Ollama is listed in docs/ollama.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from mongars_edge import __version__
from mongars_edge.errors import InvalidRequestError, MongarsError
from mongars_edge.inference.errors import ModelNotFoundError
from mongars_edge.web import ollama_chat, ollama_models
from mongars_edge.web.auth import require_user
from mongars_edge.web.http import JsonReply
from mongars_edge.web.ollama_chat import NDJSON, read_body, untagged
from mongars_edge.web.openai import ALIASES
from mongars_edge.web.schemas import ollama as wire
from mongars_edge.web.schemas.common import encode
from mongars_edge.web.schemas.routes import ERRORS, JSON, ApiRoute, Op

if TYPE_CHECKING:
    from mongars_edge.runtime import Runtime

#: The Ollama API level whose shapes these routes follow (what /api/version answers).
API_LEVEL: Final = "0.12.0"
#: Every path served here: errors on them take Ollama's shape (web/app.py, BodyLimit).
PATHS: Final = frozenset(
    f"/api/{name}"
    for name in ("version", "tags", "show", "ps", "chat", "generate", "embed", "embeddings", "pull")
)
_POLL_S: Final = 0.5


class PullFailedError(MongarsError):
    """A download ended without the model (bad bytes, the index unreachable, cancelled)."""

    http_status = 502
    kind = "pull_failed"


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def version(request: Request) -> Response:
    await require_user(request)
    return JsonReply(wire.OllamaVersion(version=API_LEVEL, mongars_edge=__version__))


# ---- /api/pull ---------------------------------------------------------------------------------


async def pull(request: Request) -> Response:
    """A catalog model, downloaded in the background as `/api/models/pull` does, with Ollama's
    status lines while it runs. A model already here answers `success` at once."""
    await require_user(request, admin=True)
    runtime = _runtime(request)
    body = await read_body(request, wire.OllamaPullRequest)
    name = body.model
    wanted = untagged(name)
    manager = runtime.models
    if manager is None:
        raise InvalidRequestError("this box runs no chat model (the model setting is off)")
    installed = wanted in ALIASES or wanted in await asyncio.to_thread(
        manager.installed_chat_models
    )
    state = None
    if not installed:
        try:
            state = manager.pull(wanted)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f'model "{name}" not found: pull takes a catalog id (GET /api/models)'
            ) from None
    entry = manager.store.catalog.get(wanted)
    digest = "sha256:" + (entry.sha256 if entry is not None else "")
    lines = _progress(state, digest)
    if body.stream is False:
        last = wire.OllamaProgress(status="success")
        async for item in lines:
            last = item
        if isinstance(last, wire.OllamaError):
            raise PullFailedError(last.error)
        return JsonReply(last)
    return StreamingResponse(
        (encode(item) + b"\n" async for item in lines),
        media_type=NDJSON,
        headers={"Cache-Control": "no-cache"},
    )


async def _progress(state: Any, digest: str) -> AsyncIterator[Any]:
    """Ollama's pull statuses for a background download (None: nothing to download)."""
    yield wire.OllamaProgress(status="pulling manifest")
    if state is not None:
        while True:
            yield wire.OllamaProgress(
                status=f"pulling {digest[7:19] or state.id}",
                digest=digest,
                total=state.total,
                completed=state.done,
            )
            if state.state != "running":
                break
            await asyncio.sleep(_POLL_S)
        if state.state != "done":
            yield wire.OllamaError(error=f"pull of {state.id} {state.state}: {state.error or ''}")
            return
        yield wire.OllamaProgress(status="verifying sha256 digest")
    yield wire.OllamaProgress(status="success")


# ---- routes ------------------------------------------------------------------------------------

_ERR: Final = "OllamaError"
_CHAT_ERRORS: Final = (*ERRORS, 500)


def _stream(kind: Any, what: str) -> dict[str, Any]:
    return {
        JSON: kind,
        NDJSON: {
            "type": "string",
            "description": f"NDJSON: one {what} a line; a failure after the stream started is "
            "an OllamaError line.",
        },
    }


def routes() -> list[ApiRoute]:
    def op(summary: str, **more: Any) -> Op:
        return Op(summary, error=_ERR, **more)

    return [
        ApiRoute("/api/version", version, {"GET": op("Ollama: API level", ok=wire.OllamaVersion)}),
        ApiRoute(
            "/api/tags",
            ollama_models.tags,
            {"GET": op("Ollama: the models (HEAD too)", ok=wire.OllamaModelList)},
        ),
        ApiRoute(
            "/api/show",
            ollama_models.show,
            {
                "POST": op(
                    "Ollama: one model's details and capabilities",
                    body=wire.OllamaShowRequest,
                    ok=wire.OllamaShowReply,
                )
            },
        ),
        ApiRoute(
            "/api/ps",
            ollama_models.ps,
            {"GET": op("Ollama: the loaded model", ok=wire.OllamaRunningList)},
        ),
        ApiRoute(
            "/api/chat",
            ollama_chat.chat,
            {
                "POST": op(
                    "Ollama: chat (NDJSON unless `stream: false`; tools)",
                    body=wire.OllamaChatRequest,
                    content=_stream(wire.OllamaChatChunk, "OllamaChatChunk"),
                    errors=_CHAT_ERRORS,
                )
            },
        ),
        ApiRoute(
            "/api/generate",
            ollama_chat.generate,
            {
                "POST": op(
                    "Ollama: complete a prompt (NDJSON unless `stream: false`)",
                    body=wire.OllamaGenerateRequest,
                    content=_stream(wire.OllamaGenerateChunk, "OllamaGenerateChunk"),
                    errors=_CHAT_ERRORS,
                )
            },
        ),
        ApiRoute(
            "/api/embed",
            ollama_models.embed,
            {
                "POST": op(
                    "Ollama: embeddings", body=wire.OllamaEmbedRequest, ok=wire.OllamaEmbedReply
                )
            },
        ),
        ApiRoute(
            "/api/embeddings",
            ollama_models.embeddings,
            {
                "POST": op(
                    "Ollama: one embedding (older form)",
                    body=wire.OllamaEmbeddingsRequest,
                    ok=wire.OllamaEmbeddingReply,
                )
            },
        ),
        ApiRoute(
            "/api/pull",
            pull,
            {
                "POST": op(
                    "Ollama: download a catalog model (administrators; NDJSON status)",
                    body=wire.OllamaPullRequest,
                    content=_stream(wire.OllamaProgress, "OllamaProgress"),
                    errors=(*ERRORS, 502),
                )
            },
        ),
    ]
