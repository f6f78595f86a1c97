"""Jetson facts under a sysroot: L4T release, JetPack, its TensorRT/cuDNN libraries, power mode."""

from __future__ import annotations

import re

from mongars_edge.hardware.reader import SysrootReader as _Reader

# fmt: off
# JetPack releases by L4T version; unknown point releases fall back to the major line.
_JETPACK = {
    "R36.4.4": "6.2.1", "R36.4.3": "6.2", "R36.4.0": "6.1", "R36.3.0": "6.0",
    "R36.2.0": "6.0 DP", "R35.6.0": "5.1.4", "R35.5.0": "5.1.3", "R35.4.1": "5.1.2",
    "R35.3.1": "5.1.1", "R35.2.1": "5.1", "R35.1.0": "5.0.2",
}
_JETPACK_MAJOR = {"R36": "6.x", "R35": "5.x", "R32": "4.x"}
# Where JetPack (and CUDA installs on a PC) put TensorRT and cuDNN: ONNX Runtime's TensorRT and
# CUDA providers load them by soname at session creation.
_LIB_DIRS = ("usr/lib/aarch64-linux-gnu", "usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib")
# fmt: on


def l4t(r: _Reader, jetson: bool) -> tuple[str | None, str | None]:
    """The L4T release (R36.4.3) and the JetPack it ships with, from /etc/nv_tegra_release."""
    text = r.text("etc/nv_tegra_release", required=jetson)
    if text is None:
        return None, None
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text)
    if not m:
        r.warn("/etc/nv_tegra_release is garbled (no R<major> (release), REVISION: line)")
        return None, None
    release = f"R{m.group(1)}.{m.group(2)}.{m.group(3)}"
    return release, _JETPACK.get(release) or _JETPACK_MAJOR.get(f"R{m.group(1)}")


def lib_version(r: _Reader, name: str) -> str | None:
    """The longest version a `name.so.X.Y.Z` file carries (TensorRT 10.3.0, cuDNN 9.3.0)."""
    found = [p.name for d in _LIB_DIRS for p in r.root.glob(f"{d}/{name}.so.*")]
    versions = [n.removeprefix(f"{name}.so.") for n in found]
    versions = [v for v in versions if re.fullmatch(r"\d+(\.\d+)*", v)]
    return max(versions, key=lambda v: (v.count("."), [int(x) for x in v.split(".")]), default=None)


def dpkg_version(r: _Reader, package: str) -> str | None:
    """An installed package's version from dpkg's status file (what `dpkg -l` reads)."""
    text = r.text("var/lib/dpkg/status", required=False) or ""
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
        if fields.get("Package") == package and fields.get("Status", "").endswith(" installed"):
            return fields.get("Version") or None
    return None


def power_mode(r: _Reader) -> str | None:
    """Jetson nvpmodel mode: `nvpmodel -q` when live, else the status file and config."""
    out = r.run(["nvpmodel", "-q"])
    if out:
        m = re.search(r"NV Power Mode:\s*(\S+)", out)
        if m:
            return m.group(1)
    status = r.text("var/lib/nvpmodel/status")
    conf = r.text("etc/nvpmodel.conf") or ""
    m = re.search(r"pmode:0*(\d+)", status or "")
    if m is None:
        default = re.search(r"<\s*PM_CONFIG\s+DEFAULT=(\d+)\s*>", conf)
        if default is None:
            return None
        mode_id = default.group(1)
    else:
        mode_id = m.group(1)
    name = re.search(rf"<\s*POWER_MODEL\s+ID={mode_id}\s+NAME=([^\s>]+)", conf)
    return name.group(1) if name else f"mode {mode_id}"
