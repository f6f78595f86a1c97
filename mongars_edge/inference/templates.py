"""Chat templates from GGUF metadata, rendered with a sandboxed jinja2 (as Hugging Face does)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mongars_edge.errors import InvalidRequestError
from mongars_edge.inference.engine import Message
from mongars_edge.inference.tools import (
    Tool,
    ToolFormat,
    template_supports_tools,
    template_tools,
    tool_format,
)


def _raise(message: str) -> NoReturn:
    raise InvalidRequestError(f"the chat template refused the conversation: {message}")


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _payload(m: Message) -> dict[str, Any]:
    """A message as Hugging Face templates read it: tool call arguments as objects."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.argument_object()},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


class ChatTemplate:
    """A compiled chat template plus the BOS/EOS strings it may refer to."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(
                f"the model's chat template does not compile: {exc}"
            ) from None

    @property
    def supports_tools(self) -> bool:
        return template_supports_tools(self.source)

    @property
    def tool_format(self) -> ToolFormat:
        return tool_format(self.source)

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        assistant_prefix: str = "",
        tools: Sequence[Tool] = (),
    ) -> str:
        """Prompt text for `messages`; `assistant_prefix` continues an unfinished reply."""
        if tools and not self.supports_tools:
            raise InvalidRequestError(
                "this model's chat template does not support tools; load a model that does "
                "(Qwen2.5, Llama 3.x, Mistral)",
                param="tools",
            )
        extra: dict[str, Any] = {"tools": template_tools(tools)} if tools else {}
        try:
            text = self._template.render(
                messages=[_payload(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except InvalidRequestError:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"the chat template failed: {exc}") from None
        return text + assistant_prefix
