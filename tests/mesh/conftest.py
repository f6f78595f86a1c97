"""Mesh fixtures: real services on loopback ports, real engines on generated or SmolLM2 models."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mongars_edge.inference.adapters import AdapterStore
from mongars_edge.inference.llama import EngineConfig, LlamaEngine
from mongars_edge.mesh.service import MeshService
from tests.inference.gen_models import build_all, smollm2_path
from tests.support.env import free_port
from tests.support.mesh import fast_config
from tests.support.types import Boxes


@pytest.fixture(scope="session")
def models() -> dict[str, Path]:
    return build_all()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_path()


@pytest.fixture
def boxes(tmp_path: Path, smollm2: Path) -> Boxes:
    """Factory: `async with boxes(n, n_parallel=1) as [a, b, ...]`, all on loopback, unpaired."""

    @contextlib.asynccontextmanager
    async def factory(
        n: int, *, model: Path | None = None, n_parallel: int = 2, engine: bool = True
    ) -> AsyncIterator[list[MeshService]]:
        ports = [free_port() for _ in range(n)]
        async with contextlib.AsyncExitStack() as stack:
            out = []
            for i in range(n):
                data = tmp_path / f"box{i}"
                data.mkdir()
                eng = None
                if engine:
                    config = EngineConfig(
                        model_path=model or smollm2,
                        model_id="smollm2",
                        n_ctx=2048,
                        n_parallel=n_parallel,
                        n_threads=1,
                        n_threads_batch=1,
                        n_batch=256,
                        n_ubatch=256,
                        prefix_cache=False,
                    )
                    eng = await stack.enter_async_context(
                        LlamaEngine.open(config, adapters=AdapterStore(data).path)
                    )
                others = [p for j, p in enumerate(ports) if j != i]
                service = await stack.enter_async_context(
                    MeshService.open(fast_config(ports[i], others), data, eng)
                )
                out.append(service)
            yield out

    return factory
