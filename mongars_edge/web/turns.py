"""A decoded /v1/chat/completions body -> the chat pipeline's Turn (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from msgspec import UNSET

from mongars_edge.chat.lang import from_accept_language
from mongars_edge.chat.pipeline import Turn
from mongars_edge.errors import InvalidRequestError
from mongars_edge.inference.engine import Message, Sampling
from mongars_edge.inference.tools import Tool, ToolCall, check_history
from mongars_edge.web.schemas.common import BadFieldError
from mongars_edge.web.schemas.openai import (
    SAMPLING_FIELDS,
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessage,
    Content,
    DeveloperMessage,
    JsonObjectFormat,
    ResponseFormat,
    TextFormat,
    ToolChoiceFunction,
    ToolMessage,
)


def _text(content: Content | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def to_messages(messages: list[ChatMessage]) -> tuple[Message, ...]:
    """The declared messages as the engine's (developer is a system message to the model)."""
    out = []
    for i, item in enumerate(messages):
        role = "system" if isinstance(item, DeveloperMessage) else type(item).__struct_config__.tag
        calls: tuple[ToolCall, ...] = ()
        if isinstance(item, AssistantMessage) and item.tool_calls:
            calls = tuple(
                ToolCall(name=c.function.name, arguments=c.function.arguments, id=c.id)
                for c in item.tool_calls
            )
            for j, call in enumerate(calls):
                try:
                    call.argument_object()
                except InvalidRequestError as exc:
                    raise BadFieldError(
                        f"messages[{i}].tool_calls[{j}].function.arguments", str(exc)
                    ) from None
        ref = item.tool_call_id if isinstance(item, ToolMessage) else None
        out.append(Message(str(role), _text(item.content), tool_calls=calls, tool_call_id=ref))
    return tuple(out)


def to_tools(body: ChatCompletionRequest) -> tuple[tuple[Tool, ...], str]:
    """The request's tools and tool_choice ("auto", "none", "required" or a tool's name)."""
    tools = []
    for i, item in enumerate(body.tools or ()):
        f = item.function
        try:
            tools.append(
                Tool(
                    f.name,
                    f.description if isinstance(f.description, str) else "",
                    f.parameters or {"type": "object", "properties": {}},
                )
            )
        except InvalidRequestError as exc:
            raise BadFieldError(f"tools[{i}].function.parameters", str(exc)) from None
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise BadFieldError("tools", "two tools have the same name")
    choice = body.tool_choice
    if choice is None:
        return tuple(tools), "auto" if tools else "none"
    if isinstance(choice, ToolChoiceFunction):
        if choice.function.name not in names:
            raise BadFieldError(
                "tool_choice",
                f"names {choice.function.name!r}, which is not among the tools "
                f"({', '.join(names) or 'none'})",
            )
        return tuple(tools), choice.function.name
    if choice == "required" and not tools:
        raise BadFieldError("tool_choice", "'required' needs at least one tool")
    return tuple(tools), choice


def to_sampling(body: ChatCompletionRequest, default_max: int) -> tuple[Sampling, frozenset[str]]:
    """The request's sampling and the names of the fields it set (the model's own defaults
    fill the others). `top_k`, `min_p` and `repeat_penalty` are llama.cpp's extensions."""
    defaults = Sampling()
    chosen = {"max_tokens", "seed", "stop"}  # these have no per-model default
    values: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        value = getattr(body, name)
        if value is not UNSET and value is not None:
            values[name] = value
            chosen.add(name)
    stop = body.stop
    sampling = replace(
        defaults,
        **values,
        seed=None if body.seed is None else body.seed & 0xFFFFFFFF,
        max_tokens=body.max_completion_tokens or body.max_tokens or default_max,
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
    )
    return sampling, frozenset(chosen)


def _json_schema(fmt: ResponseFormat | None) -> Mapping[str, Any] | None:
    if fmt is None or isinstance(fmt, TextFormat):
        return None
    if isinstance(fmt, JsonObjectFormat):
        return {"type": "object"}
    return fmt.json_schema.schema or {"type": "object"}


def _conversation(ref: int | str | None) -> tuple[int | None, bool]:
    if ref is None:
        return None, False
    if ref == "new":
        return None, True
    return int(ref), False


def to_turn(body: ChatCompletionRequest, accept_language: str | None, default_max: int) -> Turn:
    """A decoded chat completion body as a pipeline Turn (the model is checked by the caller).
    What the declaration cannot say (logprobs, empty messages, tool names) is a 400 here."""
    if body.logprobs:
        raise BadFieldError("logprobs", "log probabilities are not supported on this box")
    regenerate = bool(body.regenerate)
    if not body.messages and not regenerate:
        raise BadFieldError("messages", "must be a non-empty list of {role, content} objects")
    conversation_id, new = _conversation(body.conversation_id)
    sampling, sampling_set = to_sampling(body, default_max)
    tools, tool_choice = to_tools(body)
    messages = to_messages(body.messages)
    try:
        check_history(messages)
    except InvalidRequestError as exc:
        raise BadFieldError(getattr(exc, "param", None) or "messages", str(exc)) from None
    fmt = body.response_format
    if tools and tool_choice != "none" and fmt is not None and not isinstance(fmt, TextFormat):
        raise BadFieldError("response_format", "cannot be combined with tools")
    return Turn(
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        sampling=sampling,
        sampling_set=sampling_set,
        conversation_id=conversation_id,
        new_conversation=new,
        adapter=body.adapter or None,
        memory=body.memory is not False,
        json_schema=_json_schema(body.response_format),
        regenerate=regenerate,
        preferred_lang=from_accept_language(accept_language),
    )
