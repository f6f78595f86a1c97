"""The types of the factory fixtures, for the annotations of the tests that use them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from mongars_edge.inference.llama import LlamaEngine
from mongars_edge.mesh.service import MeshService
from mongars_edge.tui.app import MongarsApp

#: `open_engine`: `async with open_engine(model=path, **config) as engine`.
EngineFactory = Callable[..., contextlib.AbstractAsyncContextManager[LlamaEngine]]
#: `boxes`: `async with boxes(n, n_parallel=1) as [a, b, ...]`.
Boxes = Callable[..., contextlib.AbstractAsyncContextManager[list[MeshService]]]
#: `make_app`: a TUI app pointed at the test daemon (or at *url*).
AppFactory = Callable[..., MongarsApp]
