"""`python -m mongars_edge.inference.gpu_check`: what the installed GPU wheels really do.

The Jetson's install script runs it after putting onnxruntime-gpu in: the providers present, the
provider a small model (ONNX Runtime's own mul_1.onnx) actually opens on when CUDA is asked for,
and CTranslate2's CUDA devices. One `key=value` per line, for a shell to read.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mongars_edge.inference.onnx import CPU, CUDA
from mongars_edge.inference.onnx_report import installed_providers


def check() -> dict[str, str]:
    """The facts as strings; a failure is a value (`error: ...`), never an exception."""
    present, package = installed_providers()
    out = {"package": package or "", "present": ",".join(present), "cuda_session": ""}
    if CUDA in present:
        out["cuda_session"] = _cuda_session()
    out["ctranslate2_cuda_devices"] = _ctranslate2_devices()
    return out


def _cuda_session() -> str:
    try:
        import onnxruntime

        model = Path(onnxruntime.__file__).parent / "datasets" / "mul_1.onnx"
        session = onnxruntime.InferenceSession(str(model), providers=[CUDA, CPU])
        return str(session.get_providers()[0])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        return f"error: {_one_line(exc)}"


def _ctranslate2_devices() -> str:
    try:
        import ctranslate2
    except ImportError:
        return ""  # not installed: speech-to-text is off in this venv
    try:
        return str(ctranslate2.get_cuda_device_count())
    except Exception as exc:  # a CUDA build without a usable driver raises RuntimeError
        return f"error: {_one_line(exc)}"


def _one_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def main() -> int:
    for key, value in check().items():
        sys.stdout.write(f"{key}={value}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
