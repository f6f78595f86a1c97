"""The inference core: the Engine protocol, the local llama.cpp engine, models and adapters.

The chat pipeline uses `Engine.stream(ChatRequest)`; the Runtime opens the local engine with
`open_local_engine`. Heavy modules (llama_cpp) load only when an engine is opened.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from mongars_edge.inference.engine import (
    ChatRequest,
    Completion,
    Engine,
    EngineLoad,
    Message,
    ModelInfo,
    Sampling,
    Timings,
    TokenEvent,
    Usage,
    complete,
)

if TYPE_CHECKING:
    from mongars_edge.hardware.tuning import TuningProfile
    from mongars_edge.inference.llama import LlamaEngine
    from mongars_edge.inference.worker import Heartbeat
    from mongars_edge.settings import Settings

__all__ = [
    "ChatRequest",
    "Completion",
    "Engine",
    "EngineLoad",
    "Message",
    "ModelInfo",
    "Sampling",
    "Timings",
    "TokenEvent",
    "Usage",
    "complete",
    "open_local_engine",
]

log = logging.getLogger(__name__)
DISABLED = "off"


@contextlib.asynccontextmanager
async def open_local_engine(
    settings: Settings,
    profile: TuningProfile,
    data_dir: Path,
    *,
    heartbeat: Heartbeat | None = None,
) -> AsyncIterator[LlamaEngine | None]:
    """Open the llama.cpp engine for `settings.model` (None when the model setting is "off")."""
    if settings.model == DISABLED:
        log.info("inference disabled (model = off)")
        yield None
        return
    from mongars_edge.inference.adapters import AdapterStore
    from mongars_edge.inference.llama import EngineConfig
    from mongars_edge.inference.llama import LlamaEngine as _LlamaEngine
    from mongars_edge.inference.models import ModelStore

    model_id, path = ModelStore(data_dir).resolve(settings.model)
    config = EngineConfig.from_settings(settings, profile, path, model_id)
    adapters = AdapterStore(data_dir)
    async with _LlamaEngine.open(config, adapters=adapters.path, heartbeat=heartbeat) as engine:
        yield engine
