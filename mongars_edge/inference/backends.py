"""Which llama.cpp CPU backend this process runs: ggml's per-CPU variants, loaded at start.

The Pi image's llama.cpp is built with GGML_BACKEND_DL and GGML_CPU_ALL_VARIANTS: the CPU
backend is one loadable module per arm64 feature level (libggml-cpu-armv8.0_1.so for a Pi 4,
libggml-cpu-armv8.2_2.so with dot products for a Pi 5, ...) and ggml loads the best one this
CPU can run. ggml looks for them beside the executable (here: the Python interpreter), so the
engine points it at the wheel's library folder first. A build with the CPU backend linked in
(the developer wheel) has nothing to load and reports the variant as "built-in".
"""

from __future__ import annotations

import ctypes
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CPU_MODULE = re.compile(r"/libggml-cpu-([A-Za-z0-9._-]+)\.so$")


@dataclass(frozen=True)
class CpuBackend:
    """The CPU backend in use: its variant, the module it came from and ggml's feature list."""

    variant: str
    library: str | None = None
    features: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "variant": self.variant,
            "library": self.library,
            "features": dict(self.features),
            "error": self.error,
        }

    def summary(self) -> str:
        """One line for people: the variant, and the vector features it was built with."""
        if self.error:
            return f"{self.variant}: {self.error}"
        on = [name for name, value in self.features.items() if value not in ("0", "")]
        source = f" ({Path(self.library).name})" if self.library else ""
        return f"{self.variant}{source}" + (f": {' '.join(on)}" if on else "")


def load_backends(lib: ctypes.CDLL, lib_dir: Path) -> int:
    """Load ggml's backend modules from `lib_dir` when none is registered; the count after.

    `lib` is libllama, through which ggml's own functions are reached (dlsym searches a
    library's dependencies). Builds without backend modules already count one or more.
    """
    count = lib.ggml_backend_reg_count
    count.argtypes, count.restype = [], ctypes.c_size_t
    if count() == 0:
        load = lib.ggml_backend_load_all_from_path
        load.argtypes, load.restype = [ctypes.c_char_p], None
        load(str(lib_dir).encode())
        log.debug("llama.cpp backends loaded from %s: %d", lib_dir, count())
    return int(count())


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """`llama_print_system_info()` ("CPU : NEON = 1 | DOTPROD = 1 | ...") per backend name."""
    result: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in text.split("|"):
        part = part.strip()
        if not part:
            continue
        name, sep, rest = part.partition(" : ")
        if sep:  # a new backend starts: "CPU : NEON = 1"
            current = result.setdefault(name.strip(), {})
            part = rest
        key, eq, value = part.partition("=")
        if current is not None and eq:
            current[key.strip()] = value.strip()
    return result


def loaded_cpu_module(maps: str) -> str | None:
    """The libggml-cpu-*.so file mapped into this process, from /proc/self/maps text."""
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if CPU_MODULE.search(path):
            return path
    return None
