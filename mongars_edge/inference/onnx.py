"""ONNX Runtime execution providers from the tuning profile: TensorRT -> CUDA -> CPU.

Speech and embeddings open their ONNX models through `open_session`, which drops a provider that
is not installed or fails to initialise and goes on with the next, down to the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

ProviderSpec = tuple[str, dict[str, Any]]


def provider_specs(
    wanted: Sequence[str], *, cache_dir: Path | None = None, available: Sequence[str] | None = None
) -> list[ProviderSpec]:
    """The wanted providers that this onnxruntime has, with their options; CPU always last."""
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
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
                }
        elif name == CUDA:
            options = {"device_id": 0}
        out.append((name, options))
    out.append((CPU, {}))
    return out


def open_session(
    model: Path | bytes,
    wanted: Sequence[str],
    *,
    cache_dir: Path | None = None,
    session_options: Any = None,
) -> tuple[Any, str]:
    """An InferenceSession on the first provider that works, and that provider's name.

    `model` is a file, or a serialized model built in memory (the embedder's)."""
    import onnxruntime

    source = model if isinstance(model, bytes) else str(model)
    label = "an in-memory model" if isinstance(model, bytes) else str(model)

    specs = provider_specs(wanted, cache_dir=cache_dir)
    last_error: Exception | None = None
    for i, (name, _options) in enumerate(specs):
        chain = specs[i:]
        try:
            session = onnxruntime.InferenceSession(
                source,
                sess_options=session_options,
                providers=[n for n, _ in chain],
                provider_options=[o for _, o in chain],
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            log.warning("ONNX provider %s failed for %s: %s; trying the next", name, label, exc)
            last_error = exc
            continue
        # onnxruntime may quietly fall back when a provider fails to initialise: report truth.
        active = session.get_providers()[0]
        if active != name:
            log.warning("ONNX provider %s did not initialise for %s; using %s", name, label, active)
        return session, active
    raise RuntimeError(f"no ONNX provider could open {label}: {last_error}")
