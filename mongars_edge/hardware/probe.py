"""Hardware facts read from /proc, /sys and /etc under a sysroot; the probe never raises."""

from __future__ import annotations

import logging
import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mongars_edge.hardware.jetson import dpkg_version, l4t, lib_version, power_mode
from mongars_edge.hardware.pi import PiRevision, decode_revision, revision_code
from mongars_edge.hardware.reader import SysrootReader as _Reader
from mongars_edge.hardware.storage import storage_kind

log = logging.getLogger(__name__)

# fmt: off
_X86_FLAGS = frozenset({
    "avx", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16", "fma", "f16c",
})
_ARM_FLAGS = frozenset({
    "neon", "asimd", "asimddp", "asimdhp", "fphp", "asimdfhm", "sve", "sve2", "i8mm", "bf16",
})
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd4f": "Neoverse-V2",
}
_VM_VENDORS = ("qemu", "kvm", "vmware", "virtualbox", "innotek", "xen", "bochs", "parallels")
_VM_PRODUCTS = ("virtual machine", "kvm", "virtualbox", "vmware", "hvm domu")
_CUDART_GLOBS = (
    "usr/local/cuda*/lib64/libcudart.so*", "usr/local/cuda*/targets/*/lib/libcudart.so*",
    "usr/lib/aarch64-linux-gnu/nvidia/libcudart.so*",
    "usr/lib/aarch64-linux-gnu/tegra/libcudart.so*", "usr/lib/aarch64-linux-gnu/libcudart.so*",
    "usr/lib/x86_64-linux-gnu/libcudart.so*", "usr/lib64/libcudart.so*",
)
_GPU_NODE_GLOBS = ("dev/nvidia[0-9]*", "dev/nvidiactl", "dev/nvhost-*", "dev/nvmap")
# fmt: on


@dataclass(frozen=True)
class ThermalZone:
    """One /sys/class/thermal zone: its type and temperature (None when unreadable)."""

    name: str
    temp_c: float | None


@dataclass(frozen=True)
class HardwareFacts:
    """What the probe found; every field has a safe default when its source was missing."""

    board: str
    board_model: str
    arch: str
    cpu_count: int
    cpu_model: str
    cpu_flags: tuple[str, ...]
    amx_advertised: bool
    is_virtual: bool
    mem_total_mb: int
    mem_available_mb: int
    swap_total_mb: int
    cuda: bool
    cuda_runtime: str | None
    gpu_nodes: tuple[str, ...]
    l4t_release: str | None
    jetpack: str | None
    # `nvidia-jetpack`'s version in dpkg's database (e.g. 6.2+b77): None when the BSP is there
    # without JetPack's CUDA/TensorRT/cuDNN packages.
    jetpack_package: str | None
    tensorrt: str | None
    cudnn: str | None
    power_mode: str | None
    thermal_zones: tuple[ThermalZone, ...]
    max_temp_c: float | None
    throttled: bool | None
    storage: str
    storage_device: str | None
    audio_cards: tuple[str, ...]
    sysroot: str
    warnings: tuple[str, ...]
    #: Raspberry Pi revision code (hex, e.g. "d04170") and, on a Pi 5, the SoC stepping.
    board_revision: str | None = None
    soc_stepping: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _cpuinfo(r: _Reader) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Split /proc/cpuinfo into per-processor blocks and the board-wide trailer lines."""
    text = r.text("proc/cpuinfo") or ""
    cpus: list[dict[str, str]] = []
    board: dict[str, str] = {}
    for chunk in re.split(r"\n\s*\n", text):
        block: dict[str, str] = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                block[key.strip()] = value.strip()
        if "processor" in block:
            cpus.append(block)
        else:
            board.update(block)
    if text and not cpus:
        r.warn("/proc/cpuinfo has no processor entries (garbled)")
    return cpus, board


def _arch(r: _Reader, cpus: list[dict[str, str]]) -> str:
    if r.live:
        return platform.machine() or "unknown"
    first = cpus[0] if cpus else {}
    arm = first.get("CPU architecture", "")
    if arm == "8" or arm.lower().startswith("aarch64"):
        return "aarch64"
    if arm == "7":
        return "armv7l"
    if "vendor_id" in first:
        return "x86_64" if " lm " in f" {first.get('flags', '')} " else "i686"
    return "unknown"


def _cpu_count(r: _Reader, cpus: list[dict[str, str]]) -> int:
    count = len(cpus)
    if count == 0:
        online = r.text("sys/devices/system/cpu/online", required=False) or ""
        count = sum(_range_len(part) for part in online.strip().split(",") if part)
    if r.live and hasattr(os, "sched_getaffinity"):
        # A cpuset or taskset limits what this process may use, whatever the box has.
        allowed = len(os.sched_getaffinity(0))
        count = min(count, allowed) if count else allowed
    if count <= 0:
        r.warn("CPU count unknown (no /proc/cpuinfo processors); assuming 1")
        return 1
    return count


def _range_len(part: str) -> int:
    lo, _, hi = part.partition("-")
    try:
        return int(hi or lo) - int(lo) + 1
    except ValueError:
        return 0


def _cpu_model(cpus: list[dict[str, str]]) -> str:
    first = cpus[0] if cpus else {}
    if first.get("CPU implementer") == "0x41" and first.get("CPU part") in _ARM_PARTS:
        return _ARM_PARTS[first["CPU part"]]
    return first.get("model name") or first.get("cpu model") or "unknown"


def _cpu_flags(cpus: list[dict[str, str]]) -> tuple[str, ...]:
    """Flags every core has (big.LITTLE cores can differ and llama.cpp uses them all)."""
    sets = [set((c.get("flags") or c.get("Features") or "").split()) for c in cpus]
    common = set.intersection(*sets) if sets else set()
    return tuple(sorted(common & (_X86_FLAGS | _ARM_FLAGS)))


def _device_tree(r: _Reader, name: str, arch: str) -> list[str]:
    """NUL-separated strings of a device-tree property, from /proc or /sys/firmware."""
    for base in ("proc/device-tree", "sys/firmware/devicetree/base"):
        rel = f"{base}/{name}"
        if r.path(rel).exists() or r.path(rel).is_symlink():
            raw = r.text(rel) or ""
            return [s.strip() for s in raw.split("\0") if s.strip()]
    if arch not in ("x86_64", "i686"):  # PCs have no device tree; boards should
        r.warn(f"device tree /proc/device-tree/{name} is missing")
    return []


def _board(model: str, compatible: list[str], arch: str) -> str:
    compat = " ".join(compatible)
    if "raspberrypi,5" in compat or "bcm2712" in compat or re.match(r"Raspberry Pi 5", model):
        return "raspberry-pi-5"
    if "raspberrypi,4" in compat or "bcm2711" in compat or re.match(r"Raspberry Pi 4", model):
        return "raspberry-pi-4"
    if re.search(r"nvidia,p37(01|37)", compat) or "AGX Orin" in model:
        return "jetson-agx-orin"
    if re.search(r"nvidia,p3767-000[01]", compat) or "Orin NX" in model:
        return "jetson-orin-nx"
    if re.search(r"nvidia,p3767-000[345]", compat) or "Orin Nano" in model:
        return "jetson-orin-nano"
    return {"x86_64": "x86_64-generic", "aarch64": "arm64-generic"}.get(arch, "unknown")


def _pi_revision(r: _Reader, cpu_board: dict[str, str]) -> PiRevision | None:
    """The Raspberry Pi revision code: /proc/cpuinfo on Pi kernels, the firmware's device-tree
    cell on mainline ones. A garbled or unknown code is a warning, never an error."""
    cell: bytes | None = None
    for base in ("proc/device-tree", "sys/firmware/devicetree/base"):
        path = r.path(f"{base}/system/linux,revision")
        try:
            cell = path.read_bytes()
            break
        except OSError:
            continue
    text = cpu_board.get("Revision")
    if text is None and cell is None:
        return None
    code = revision_code(text, cell)
    if code is None:
        r.warn(f"board revision is garbled ({text!r} in /proc/cpuinfo, or a bad device-tree cell)")
        return None
    revision = decode_revision(code)
    if revision is None or not revision.known:
        r.warn(f"board revision {code:06x} is not one this version knows")
    return revision


def _dmi(r: _Reader) -> tuple[str, str]:
    vendor = (r.text("sys/class/dmi/id/sys_vendor", required=False) or "").strip()
    product = (r.text("sys/class/dmi/id/product_name", required=False) or "").strip()
    return vendor, product


def _is_virtual(r: _Reader, flags_line: str, vendor: str, product: str) -> bool:
    if "hypervisor" in flags_line.split():
        return True
    if any(v in vendor.lower() for v in _VM_VENDORS):
        return True
    if any(p in product.lower() for p in _VM_PRODUCTS):
        return True
    return bool((r.text("sys/hypervisor/type", required=False) or "").strip())


def _meminfo(r: _Reader) -> tuple[int, int, int]:
    """MemTotal, MemAvailable and SwapTotal in MiB; 0 with a warning when missing."""
    text = r.text("proc/meminfo")
    values: dict[str, int] = {}
    for line in (text or "").splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            values[m.group(1)] = int(m.group(2)) // 1024
    if text is not None:
        for key in ("MemTotal", "MemAvailable"):
            if key not in values:
                r.warn(f"/proc/meminfo has no {key} (garbled)")
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return total, min(available, total) if total else available, values.get("SwapTotal", 0)


def _cuda(r: _Reader) -> tuple[str | None, tuple[str, ...]]:
    # Prefer the versioned soname (libcudart.so.12): it says which CUDA the box has.
    found = [p for g in _CUDART_GLOBS for p in r.root.glob(g)]
    runtime = min(found, key=lambda p: (-len(p.name), p.as_posix()), default=None)
    nodes = sorted({p.name for g in _GPU_NODE_GLOBS for p in r.root.glob(g)})
    rel = "/" + runtime.relative_to(r.root).as_posix() if runtime else None
    return rel, tuple(nodes)


def _thermal(r: _Reader) -> tuple[ThermalZone, ...]:
    base = r.path("sys/class/thermal")
    zones = sorted(base.glob("thermal_zone*"), key=lambda p: _trailing_int(p.name))
    if not zones:
        r.warn("no thermal zones under /sys/class/thermal")
    result = []
    for zone in zones:
        rel = zone.relative_to(r.root).as_posix()
        name = (r.text(f"{rel}/type") or zone.name).strip() or zone.name
        raw = (r.text(f"{rel}/temp", required=False) or "").strip()
        result.append(ThermalZone(name=name, temp_c=_millideg(r, rel, raw)))
    return tuple(result)


def _millideg(r: _Reader, rel: str, raw: str) -> float | None:
    if not raw:  # Orin cv*-thermal zones answer EAGAIN / nothing while power-gated
        return None
    try:
        temp = int(raw) / 1000.0
    except ValueError:
        r.warn(f"/{rel}/temp is garbled")
        return None
    # Disabled zones report sentinels such as -256000; they are not temperatures.
    return temp if -40.0 <= temp <= 150.0 else None


def _trailing_int(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else 0


def _throttled(r: _Reader) -> bool | None:
    """Raspberry Pi firmware throttle state now (bits 0-3), not since boot (bits 16-19)."""
    out = r.run(["vcgencmd", "get_throttled"])
    raw = out.partition("=")[2] if out and "=" in out else None
    if raw is None:
        files = sorted(r.root.glob("sys/devices/platform/soc*/*firmware/get_throttled"))
        if not files:
            return None
        raw = r.text(files[0].relative_to(r.root).as_posix()) or ""
    try:
        return int(raw.strip(), 16) & 0xF != 0
    except ValueError:
        r.warn("get_throttled value is garbled")
        return None


def _audio(r: _Reader) -> tuple[str, ...]:
    text = r.text("proc/asound/cards", required=False)
    if text is None:
        return ()
    cards = re.findall(r"^\s*\d+\s+\[[^\]]*\]:\s*\S+\s+-\s+(.+?)\s*$", text, re.MULTILINE)
    return tuple(cards)


def probe(
    sysroot: Path = Path("/"), data_dir: Path | None = None, *, quiet: bool = False
) -> HardwareFacts:
    """Read this box's (or a recorded sysroot's) hardware facts; never raises. `quiet` logs
    what is missing at debug (commands that only need the profile's choices)."""
    r = _Reader(Path(sysroot), quiet=quiet)
    cpus, cpu_board = _cpuinfo(r)
    arch = _arch(r, cpus)
    model_strings = _device_tree(r, "model", arch)
    compatible = _device_tree(r, "compatible", arch)
    vendor, product = _dmi(r)
    board_model = (
        (model_strings[0] if model_strings else "")
        or cpu_board.get("Model", "")
        or " ".join(x for x in (vendor, product) if x)
    )
    board = _board(board_model, compatible, arch)
    jetson = board.startswith("jetson") or r.path("etc/nv_tegra_release").exists()
    flags_line = cpus[0].get("flags", "") if cpus else ""
    flags = _cpu_flags(cpus)
    total, available, swap = _meminfo(r)
    runtime, nodes = _cuda(r)
    if nodes and runtime is None:
        r.warn("NVIDIA GPU device nodes found but no libcudart in the usual CUDA lib dirs")
    l4t_release, jetpack = l4t(r, board.startswith("jetson"))
    tensorrt = lib_version(r, "libnvinfer")
    if jetson and nodes and tensorrt is None:
        r.warn("no TensorRT (libnvinfer.so.*): ONNX models cannot use TensorRT; install JetPack")
    zones = _thermal(r)
    temps = [z.temp_c for z in zones if z.temp_c is not None]
    storage, device = storage_kind(r, data_dir)
    revision = _pi_revision(r, cpu_board)
    return HardwareFacts(
        board=board,
        board_model=board_model,
        arch=arch,
        cpu_count=_cpu_count(r, cpus),
        cpu_model=_cpu_model(cpus),
        cpu_flags=flags,
        amx_advertised="amx_tile" in flags,
        is_virtual=_is_virtual(r, flags_line, vendor, product) or storage == "virtual",
        mem_total_mb=total,
        mem_available_mb=available,
        swap_total_mb=swap,
        # A CUDA toolkit without a GPU (common on build VMs) must not select the CUDA backend.
        cuda=bool(nodes),
        cuda_runtime=runtime,
        gpu_nodes=nodes,
        l4t_release=l4t_release,
        jetpack=jetpack,
        jetpack_package=dpkg_version(r, "nvidia-jetpack") if jetson else None,
        tensorrt=tensorrt,
        cudnn=lib_version(r, "libcudnn"),
        power_mode=power_mode(r) if jetson else None,
        thermal_zones=zones,
        max_temp_c=max(temps) if temps else None,
        throttled=_throttled(r) if board.startswith("raspberry-pi") else None,
        storage=storage,
        storage_device=device,
        audio_cards=_audio(r),
        sysroot=str(r.root),
        warnings=tuple(r.warnings),
        board_revision=f"{revision.code:06x}" if revision else None,
        soc_stepping=revision.stepping if revision else None,
    )
