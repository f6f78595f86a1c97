"""The inference core: the Engine protocol, the local llama.cpp engine, models and adapters.

The chat pipeline uses `Engine.stream(ChatRequest)`; the Runtime holds the local engine
(`local.LocalEngine`) and the `manager.ModelManager` that loads models into it. Heavy modules
(llama_cpp) load only when an engine is opened.
"""

from __future__ import annotations

from mongars_edge.inference.engine import (
    ChatRequest,
    Completion,
    Engine,
    EngineLoad,
    Message,
    ModelInfo,
    Prompt,
    Sampling,
    Timings,
    TokenEvent,
    Usage,
    complete,
)

__all__ = [
    "ChatRequest",
    "Completion",
    "Engine",
    "EngineLoad",
    "Message",
    "ModelInfo",
    "Prompt",
    "Sampling",
    "Timings",
    "TokenEvent",
    "Usage",
    "complete",
]
