"""ONNX Runtime execution providers from the tuning profile: TensorRT -> CUDA -> CPU.

Speech and embeddings open their ONNX models through `open_session`, which drops a provider that
is not installed or fails to initialise and goes on with the next, down to the CPU. What each
model really runs on is kept in `SESSIONS` (for /health), with its TensorRT engine cache: one
folder per model under data_dir/trt-cache, built on first use and reused afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)

ProviderSpec = tuple[str, dict[str, Any]]


def present_providers() -> tuple[str, ...]:
    """The providers this onnxruntime was built with (not whether their libraries load)."""
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def provider_specs(
    wanted: Sequence[str], *, cache_dir: Path | None = None, available: Sequence[str] | None = None
) -> list[ProviderSpec]:
    """The wanted providers that this onnxruntime has, with their options; CPU always last.

    `cache_dir` is the TensorRT engine cache of this one model (see `engine_dir`)."""
    if available is None:
        available = present_providers()
    out: list[ProviderSpec] = []
    for name in wanted:
        if name not in available or name == CPU:
            if name != CPU:
                log.info("ONNX provider %s is not available in this onnxruntime", name)
            continue
        options: dict[str, Any] = {}
        if name == TENSORRT:
            # Building a TensorRT engine takes minutes on a Jetson: cache it across restarts.
            options = {"trt_fp16_enable": True}
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
                options |= {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir),
                    # Kernel timings are shared by the model's later rebuilds (a new input shape).
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": str(cache_dir),
                }
        elif name == CUDA:
            options = {"device_id": 0}
        out.append((name, options))
    out.append((CPU, {}))
    return out


def engine_dir(cache_root: Path, model: Path | bytes) -> Path:
    """This model's own folder under the engine cache, so its engines can be told apart.

    TensorRT names engine files by a hash of the graph: one folder per model is what lets the box
    say "this model's engine is built" without parsing those names. A file is keyed by its path,
    size and mtime (replacing the voice file gives a new folder), a model built in memory by its
    bytes."""
    if isinstance(model, bytes):
        stem, key = "in-memory", hashlib.sha256(model).hexdigest()
    else:
        try:
            st = model.stat()
            ident = f"{model.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            ident = str(model)
        stem, key = model.name.removesuffix(".onnx"), hashlib.sha256(ident.encode()).hexdigest()
    return cache_root / f"{stem}-{key[:12]}"


def cached_engines(folder: Path) -> list[Path]:
    """The TensorRT engines ONNX Runtime left in a model's cache folder."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".engine")
    except OSError:
        return []


@dataclass(frozen=True)
class Opened:
    """One model's session: the providers wanted, the one used, and why others were dropped."""

    model: str
    wanted: tuple[str, ...]
    provider: str
    failed: tuple[tuple[str, str], ...] = ()  # (provider, error) for each one that did not open
    engine_dir: Path | None = None

    def engine_state(self) -> str | None:
        """'cached' or 'building (first use only)' on TensorRT; None on other providers."""
        if self.provider != TENSORRT or self.engine_dir is None:
            return None
        return "cached" if cached_engines(self.engine_dir) else "building (first use only)"

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"provider": self.provider, "wanted": list(self.wanted)}
        if self.failed:
            out["failed"] = dict(self.failed)
        state = self.engine_state()
        if state is not None:
            out["tensorrt_engine"] = state
        return out


class SessionBook:
    """What every ONNX model of this process runs on (sessions open in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened: dict[str, Opened] = {}

    def record(self, opened: Opened) -> None:
        with self._lock:
            self._opened[opened.model] = opened

    def all(self) -> list[Opened]:
        with self._lock:
            return sorted(self._opened.values(), key=lambda o: o.model)

    def clear(self) -> None:
        with self._lock:
            self._opened.clear()


SESSIONS = SessionBook()


def open_session(
    model: Path | bytes,
    wanted: Sequence[str],
    *,
    cache_dir: Path | None = None,
    session_options: Any = None,
    name: str | None = None,
) -> tuple[Any, str]:
    """An InferenceSession on the first provider that works, and that provider's name.

    `model` is a file, or a serialized model built in memory (the embedder's, then give `name`).
    `cache_dir` is the root of the TensorRT engine cache (DataDir.trt_cache)."""
    import onnxruntime

    source = model if isinstance(model, bytes) else str(model)
    label = name or ("an in-memory model" if isinstance(model, bytes) else model.name)
    engines = engine_dir(cache_dir, model) if cache_dir is not None else None

    available = present_providers()
    names = [n for n, _ in provider_specs(wanted, available=available)]
    failed: list[tuple[str, str]] = []
    for i, provider in enumerate(names):
        chain = provider_specs(names[i:], cache_dir=engines, available=available)
        if provider == TENSORRT:
            _say_engine(label, engines)
        try:
            session = onnxruntime.InferenceSession(
                source,
                sess_options=session_options,
                providers=[n for n, _ in chain],
                provider_options=[o for _, o in chain],
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            log.warning("ONNX provider %s failed for %s: %s; trying the next", provider, label, exc)
            failed.append((provider, _first_line(exc)))
            continue
        # onnxruntime may quietly fall back when a provider fails to initialise: report truth.
        active = str(session.get_providers()[0])
        for skipped, _ in chain:
            if skipped == active:
                break
            failed.append((skipped, "did not initialise (onnxruntime fell back)"))
        opened = Opened(label, tuple(wanted), active, tuple(failed), engines)
        SESSIONS.record(opened)
        # A fallback is news; the CPU on a box that asked for nothing else is not (commands
        # that open the embedder would print it on every run).
        expected = active == CPU and tuple(wanted)[:1] in ((), (CPU,))
        level = logging.WARNING if failed else logging.DEBUG if expected else logging.INFO
        log.log(
            level,
            "ONNX model %s runs on %s",
            label,
            active,
            extra={
                "onnx_model": label,
                "onnx_provider": active,
                "onnx_wanted": list(wanted),
                "onnx_failed": dict(failed),
            },
        )
        return session, active
    raise RuntimeError(f"no ONNX provider could open {label}: {failed[-1][1] if failed else ''}")


def _say_engine(label: str, engines: Path | None) -> None:
    if engines is None:
        log.info("TensorRT for %s without an engine cache: built again at every start", label)
    elif found := cached_engines(engines):
        log.info("reusing the TensorRT engine for %s (%d in %s)", label, len(found), engines)
    else:
        # Minutes on an Orin, and the service looks idle meanwhile: say so where people look.
        log.warning("building TensorRT engine for %s, first use only (cache: %s)", label, engines)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
