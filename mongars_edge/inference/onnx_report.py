"""What ONNX Runtime can do on this box against what the profile wants: for probe and /health.

`onnxruntime.get_available_providers()` lists the providers the installed package was built with;
PyPI's `onnxruntime` has no CUDA or TensorRT one, NVIDIA's `onnxruntime-gpu` for Jetson has both.
A problem is reported when the profile wants a GPU provider that is missing, or that is there and
did not open a model (TensorRT without libnvinfer, say), each time with the command that fixes it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass, field

from mongars_edge.inference.onnx import (
    CPU,
    CUDA,
    GPU_PROVIDERS,
    SESSIONS,
    TENSORRT,
    Opened,
    present_providers,
)

#: Installs NVIDIA's onnxruntime-gpu for the board's JetPack, or says why it cannot.
JETSON_FIX = (
    "sudo /usr/lib/mongars-edge/jetson/gpu-wheels.sh && sudo systemctl restart mongars-edge"
)
_SHORT = {TENSORRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}


def onnxruntime_package() -> str | None:
    """The distribution `import onnxruntime` comes from, and its version: "onnxruntime 1.31.1"."""
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def installed_providers() -> tuple[tuple[str, ...], str | None]:
    """The providers the installed onnxruntime has, and its package (() when it won't import)."""
    try:
        present = present_providers()
    except ImportError:  # onnxruntime missing, or its native library does not load
        return (), onnxruntime_package()
    return present, onnxruntime_package()


@dataclass(frozen=True)
class OnnxReport:
    """The profile's providers, the ones installed, and what each opened model runs on."""

    wanted: tuple[str, ...]
    present: tuple[str, ...]
    package: str | None
    jetson: bool = False
    tensorrt_lib: str | None = None  # the probe's `tensorrt` (libnvinfer's version)
    sessions: tuple[Opened, ...] = field(default_factory=tuple)

    @property
    def missing(self) -> tuple[str, ...]:
        """Wanted GPU providers this onnxruntime was not built with."""
        return tuple(p for p in self.wanted if p in GPU_PROVIDERS and p not in self.present)

    def problems(self) -> list[str]:
        """What /health lists, each with its fix; empty when the GPU path is whole (or unwanted)."""
        out: list[str] = []
        wanted_gpu = [p for p in self.wanted if p in GPU_PROVIDERS]
        if self.missing:
            names = " or ".join(_SHORT[p] for p in self.missing)
            what = "the ONNX models (voices, embedder) run on the CPU"
            if CUDA in wanted_gpu and CUDA not in self.missing:
                what = "the ONNX models run on CUDA without TensorRT"
            out.append(
                f"ONNX Runtime here ({self.package or 'not installed'}) has no {names} provider "
                f"(present: {', '.join(_SHORT.get(p, p) for p in self.present) or 'none'}): "
                f"{what}. Fix: {self._fix()}"
            )
        elif TENSORRT in wanted_gpu and self.jetson and self.tensorrt_lib is None:
            out.append(
                "ONNX Runtime has the TensorRT provider but TensorRT itself (libnvinfer) is not "
                "installed: the ONNX models cannot use it. Fix: sudo apt install nvidia-jetpack "
                "&& sudo systemctl restart mongars-edge"
            )
        for opened in self.sessions:
            dropped = [(p, e) for p, e in opened.failed if p in GPU_PROVIDERS]
            if dropped:
                first, error = dropped[0]
                out.append(
                    f"ONNX model {opened.model} wanted {_SHORT[first]} and runs on "
                    f"{_SHORT.get(opened.provider, opened.provider)} ({error}); see "
                    "`journalctl -u mongars-edge` for the provider's error"
                )
        return out

    def _fix(self) -> str:
        if self.jetson:
            return (
                f"{JETSON_FIX} (it installs NVIDIA's onnxruntime-gpu where one is published for "
                "this JetPack and the app's Python, or says why not)"
            )
        return (
            "install onnxruntime-gpu for your CUDA in the app's Python "
            "(pip uninstall onnxruntime && pip install onnxruntime-gpu), then restart"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "wanted": list(self.wanted),
            "present": list(self.present),
            "package": self.package,
            "missing": list(self.missing),
            "sessions": {o.model: o.to_dict() for o in self.sessions},
        }


def report(
    wanted: Sequence[str],
    *,
    jetson: bool = False,
    tensorrt_lib: str | None = None,
    present: Sequence[str] | None = None,
    package: str | None = None,
    sessions: Sequence[Opened] | None = None,
) -> OnnxReport:
    """This process's report; `present`, `package` and `sessions` are given in tests."""
    if present is None:
        present, package = installed_providers()
    if sessions is None:
        sessions = SESSIONS.all()
    return OnnxReport(
        wanted=tuple(wanted),
        present=tuple(present),
        package=package,
        jetson=jetson,
        tensorrt_lib=tensorrt_lib,
        sessions=tuple(sessions),
    )
