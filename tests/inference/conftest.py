"""Inference fixtures: generated GGUFs (cached per generator version) and engine factories."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mongars_edge.inference.llama import EngineConfig, LlamaEngine
from tests.inference.gen_models import build_all, smollm2_path
from tests.inference.wheel_index import VERSION, Published, Wheel, make_wheel
from tests.support.types import EngineFactory


@pytest.fixture(scope="session")
def models() -> dict[str, Path]:
    return build_all()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_path()


@pytest.fixture
def open_engine(models: dict[str, Path]) -> EngineFactory:
    """Factory: `async with open_engine(model=path, **config) as engine`."""

    @contextlib.asynccontextmanager
    async def factory(model: Path | None = None, **overrides: Any) -> AsyncIterator[LlamaEngine]:
        # One thread: the build machines are shared and llama.cpp's spinning threads suffer
        # badly when another process holds a core.
        config: dict[str, Any] = {
            "model_path": model or models["tiny"],
            "model_id": "test",
            "n_ctx": 2048,
            "n_parallel": 4,
            "n_threads": 1,
            "n_threads_batch": 1,
            "n_batch": 256,
            "n_ubatch": 256,
        }
        adapters = overrides.pop("adapters", None)
        config.update(overrides)
        async with LlamaEngine.open(EngineConfig(**config), adapters=adapters) as engine:
            yield engine

    return factory


@pytest.fixture(scope="module")
def published(models: dict[str, Path]) -> Published:
    blob = models["tiny"].read_bytes()
    step = len(blob) // 3 + 1
    out = Published(blob)
    for i in range(3):
        package = f"tiny-model-part{i + 1}"
        piece = blob[i * step : (i + 1) * step]
        data = make_wheel(package, VERSION, {f"data/part{i + 1:02d}.bin": piece})
        out.wheels.append(Wheel(package, data, piece))
    return out
