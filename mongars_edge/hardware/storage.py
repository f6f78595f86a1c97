"""Which kind of block device (SD, eMMC, NVMe, SSD, HDD, virtual) holds the data directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mongars_edge.hardware.reader import SysrootReader as _Reader

_NETWORK_OR_RAM_FS = ("tmpfs", "overlay", "nfs", "nfs4", "9p", "virtiofs")


def _mounts(r: _Reader) -> list[tuple[str, str, str, str]]:
    """(mount point, major:minor, fstype, source) from mountinfo, else /proc/mounts."""
    text = r.text("proc/self/mountinfo", required=False)
    rows: list[tuple[str, str, str, str]] = []
    for line in (text or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and len(tail) >= 2:
            rows.append((_unescape(fields[4]), fields[2], tail[0], tail[1]))
    if rows:
        return rows
    for line in (r.text("proc/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            rows.append((_unescape(parts[1]), "", parts[2], parts[0]))
    return rows


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _target(r: _Reader, data_dir: Path | None) -> str:
    """The data dir as an absolute path inside the sysroot (symlinks resolved when live)."""
    if r.live:
        path = Path(data_dir or "/").absolute()
        while not path.exists() and path != path.parent:
            path = path.parent
        return os.path.realpath(path)
    return (Path("/") / (data_dir or "/")).as_posix()


def _disk_for(r: _Reader, source: str, majmin: str) -> str | None:
    """Whole-disk name under /sys/block for a mount source like /dev/mmcblk0p2 or 179:2."""
    blocks = r.path("sys/block")
    disks = sorted(p.name for p in blocks.iterdir()) if blocks.is_dir() else []
    name = source.rpartition("/")[2] if source.startswith("/dev/") else ""
    for disk in disks:
        if name and (name == disk or (blocks / disk / name).exists()):
            return disk
    for disk in disks:
        for dev in [blocks / disk / "dev", *sorted((blocks / disk).glob("*/dev"))]:
            if (
                majmin
                and (r.text(dev.relative_to(r.root).as_posix(), required=False) or "").strip()
                == majmin
            ):
                return disk
    return None


def _classify(r: _Reader, disk: str, depth: int = 0) -> str:
    base = f"sys/block/{disk}"
    slaves = sorted(r.path(f"{base}/slaves").glob("*"))
    if slaves and depth < 4:  # LUKS/LVM: classify the device underneath
        return _classify(r, slaves[0].name, depth + 1)
    if disk.startswith("mmcblk"):
        kind = (r.text(f"{base}/device/type", required=False) or "").strip()
        if kind not in ("SD", "MMC"):
            r.warn(f"/{base}/device/type is missing; assuming an SD card")
        return "emmc" if kind == "MMC" else "sd"
    if disk.startswith("nvme"):
        return "nvme"
    if re.match(r"x?vd[a-z]", disk):
        return "virtual"
    if re.match(r"(s|h)d[a-z]", disk):
        vendor = (r.text(f"{base}/device/vendor", required=False) or "").strip().lower()
        if any(v in vendor for v in ("qemu", "vmware", "vbox", "msft")):
            return "virtual"
        rotational = (r.text(f"{base}/queue/rotational", required=False) or "").strip()
        return "hdd" if rotational == "1" else "ssd"
    return "unknown"


def storage_kind(r: _Reader, data_dir: Path | None) -> tuple[str, str | None]:
    """What kind of block device holds data_dir, and its disk name."""
    target = _target(r, data_dir)
    mounts = [m for m in _mounts(r) if _under(target, m[0])]
    if not mounts:
        r.warn(f"no mount found for {target} in /proc/self/mountinfo or /proc/mounts")
        return "unknown", None
    _point, majmin, fstype, source = max(mounts, key=lambda m: len(m[0]))
    disk = _disk_for(r, source, majmin)
    if disk is None:
        if fstype not in _NETWORK_OR_RAM_FS:
            r.warn(f"no /sys/block entry for {source} ({majmin}) holding {target}")
        return ("virtual" if fstype in ("9p", "virtiofs") else "unknown"), None
    return _classify(r, disk), disk


def _under(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")
