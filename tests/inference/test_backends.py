"""Which llama.cpp CPU backend runs: read from the real library of this checkout's venv.

The arm64 per-CPU variants (libggml-cpu-armv8.2_2.so on a Pi 5) are checked in the image,
under qemu-user, by tests/appliance/test_pi_image.py.
"""

from __future__ import annotations

import json

from mongars_edge.inference.backends import loaded_cpu_module, parse_system_info
from mongars_edge.inference.lowlevel import cpu_backend
from tests.support.env import run_cli

# The shape llama_print_system_info() has in a GGML_BACKEND_DL build on a Cortex-A76.
A76_INFO = (
    "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | LLAMAFILE = 1 | "
    "OPENMP = 1 | REPACK = 1 | "
)
LIB = "/opt/mongars-edge/venv/lib/python3.13/site-packages/llama_cpp/lib"
A76_MAPS = f"""\
7f8a000000-7f8a1c0000 r-xp 00000000 b3:02 131 {LIB}/libggml-base.so
7f8b000000-7f8b2e0000 r-xp 00000000 b3:02 140 {LIB}/libggml-cpu-armv8.2_2.so
7f8c000000-7f8c001000 rw-p 00000000 00:00 0
"""


def test_system_info_is_parsed_per_backend() -> None:
    info = parse_system_info(A76_INFO + "RPC : ENABLED = 1 | ")
    assert info["CPU"]["DOTPROD"] == "1"
    assert info["CPU"]["FP16_VA"] == "1"
    assert info["RPC"] == {"ENABLED": "1"}
    assert parse_system_info("") == {}
    assert parse_system_info("garbage without separators") == {}


def test_the_loaded_variant_is_read_from_the_process_maps() -> None:
    assert loaded_cpu_module(A76_MAPS).endswith("libggml-cpu-armv8.2_2.so")  # type: ignore[union-attr]
    assert loaded_cpu_module("7f8c000000-7f8c001000 rw-p 00000000 00:00 0\n") is None
    assert loaded_cpu_module("") is None


def test_this_venv_reports_its_real_cpu_backend() -> None:
    backend = cpu_backend()
    # The developer wheel links one CPU backend in (no GGML_BACKEND_DL): "built-in", with the
    # x86 features llama.cpp itself reports; a DL build would name its libggml-cpu-* module.
    assert backend.error is None, backend.error
    assert backend.variant == "built-in" or backend.library is not None
    assert backend.features, "llama_print_system_info() listed no CPU features"
    assert backend.variant in backend.summary()


def test_probe_prints_the_cpu_variant(tmp_path: object) -> None:
    out = run_cli("probe", "--json", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    llama = json.loads(out.stdout)["llama_cpu"]
    assert llama["variant"] and llama["error"] is None
    text = run_cli("probe", "--data-dir", str(tmp_path))
    assert "llama.cpp   CPU " in text.stdout
