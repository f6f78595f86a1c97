"""Raspberry Pi specifics: the board revision code and what the boot partition asks for.

Both feed /health: a box whose boot partition names a file it does not have, carries lines
the firmware cannot read, or reports a revision this version does not know still boots, and
says so. Nothing here raises on bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Board types of the new-style revision code (bits 4-11), for the boards an arm64 image runs on.
_TYPES = {
    0x08: "Raspberry Pi 3 Model B", 0x0D: "Raspberry Pi 3 Model B+",
    0x0E: "Raspberry Pi 3 Model A+", 0x11: "Raspberry Pi 4 Model B",
    0x12: "Raspberry Pi Zero 2 W", 0x13: "Raspberry Pi 400",
    0x14: "Compute Module 4", 0x15: "Compute Module 4S", 0x17: "Raspberry Pi 5",
    0x18: "Compute Module 5", 0x19: "Raspberry Pi 500", 0x1A: "Compute Module 5 Lite",
}  # fmt: skip
_PROCESSORS = {0: "BCM2835", 1: "BCM2836", 2: "BCM2837", 3: "BCM2711", 4: "BCM2712"}
_MEMORY_MB = {0: 256, 1: 512, 2: 1024, 3: 2048, 4: 4096, 5: 8192, 6: 16384}
# A Pi 5's board revision follows its SoC stepping: rev 1.0 boards carry BCM2712 C0, rev 1.1
# boards (every 2 GB and 16 GB board, later 4 GB and 8 GB ones) carry D0, which needs its own
# device tree (bcm2712-d-rpi-5-b.dtb) on mainline kernels.
_PI5_STEPPING = {0: "C0", 1: "D0"}
_PI5_TYPES = (0x17, 0x18, 0x19, 0x1A)


@dataclass(frozen=True)
class PiRevision:
    """A decoded revision code; `known` is False for types or fields this version cannot name."""

    code: int
    board: str | None
    board_rev: str
    processor: str | None
    memory_mb: int | None
    stepping: str | None

    @property
    def known(self) -> bool:
        return None not in (self.board, self.processor, self.memory_mb) and (
            self.stepping is not None or (self.code >> 4) & 0xFF not in _PI5_TYPES
        )

    @property
    def hex(self) -> str:
        return f"{self.code:06x}"


def decode_revision(code: int) -> PiRevision | None:
    """Decode a new-style revision code (bit 23 set); None for old-style (pre-2016) codes."""
    if not code & (1 << 23):
        return None
    kind = (code >> 4) & 0xFF
    rev = code & 0xF
    stepping = _PI5_STEPPING.get(rev) if kind in _PI5_TYPES else None
    return PiRevision(
        code=code,
        board=_TYPES.get(kind),
        board_rev=f"1.{rev}",
        processor=_PROCESSORS.get((code >> 12) & 0xF),
        memory_mb=_MEMORY_MB.get((code >> 20) & 0x7),
        stepping=stepping,
    )


def revision_code(cpuinfo_revision: str | None, dt_revision: bytes | None) -> int | None:
    """The revision from /proc/cpuinfo's `Revision` (Raspberry Pi kernels) or the firmware's
    /system/linux,revision device-tree cell (4 bytes, big-endian; mainline kernels)."""
    if cpuinfo_revision:
        try:
            return int(cpuinfo_revision.strip(), 16)
        except ValueError:
            return None
    if dt_revision is not None and len(dt_revision) == 4:
        return int.from_bytes(dt_revision, "big")
    return None


# --- config.txt -----------------------------------------------------------------------------

_LINE = re.compile(r"^[A-Za-z0-9_.]+\s*=.*$")
_FILTER = re.compile(r"^\[[^\[\]]+\]$")
# `initramfs FILE [ADDRESS]` is the one directive written with a space instead of '='.
_INITRAMFS = re.compile(r"^initramfs\s+(\S+)(\s+\S+)?$")


def boot_config_problems(boot: Path) -> list[str]:
    """What the firmware cannot use in BOOT/config.txt: unreadable lines and missing files."""
    config = boot / "config.txt"
    try:
        raw = config.read_bytes()
    except FileNotFoundError:
        if not boot.is_dir() or not any(boot.iterdir()):
            return [
                f"boot partition: {boot} is empty or not mounted (fstab mounts LABEL=MGSBOOT "
                "there with nofail); kernel updates and first-boot files cannot reach it"
            ]
        return [f"boot partition: {config} is missing; the firmware boots on its defaults"]
    except OSError as exc:
        return [f"boot partition: cannot read {config}: {exc.strerror}"]
    problems: list[str] = []
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text or "\0" in text:
        problems.append(f"boot config: {config} holds bytes that are not text (garbled?)")
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        problem = _line_problem(boot, line)
        if problem:
            problems.append(f"boot config: line {number} of {config}: {problem}")
    return problems[:20]


def _line_problem(boot: Path, line: str) -> str | None:
    initramfs = _INITRAMFS.match(line)
    if initramfs:
        return _missing(boot, initramfs.group(1), "initramfs")
    if _FILTER.match(line):
        return None
    if not _LINE.match(line):
        shown = line if len(line) <= 60 else line[:57] + "..."
        return f"'{shown}' is not 'name=value' or a [filter]; the firmware ignores it"
    key, _, value = (part.strip() for part in line.partition("="))
    name = value.split(",", 1)[0].strip()
    if key in ("kernel", "device_tree") and name:
        return _missing(boot, name, key)
    if key == "dtoverlay" and name:
        return _missing(boot, f"overlays/{name}.dtbo", f"dtoverlay={name}")
    return None


def _missing(boot: Path, name: str, what: str) -> str | None:
    if (boot / name).is_file():
        return None
    return f"{what} names {name}, which is not on the boot partition; the firmware skips it"


def pi5_tree_problem(revision: PiRevision | None, pinctrl: list[str]) -> str | None:
    """A Pi 5 running the device tree of the other SoC stepping (it may boot, but misbehave).

    `pinctrl` is the compatible list of the SoC's pin controller: the D0 tree (and the C0
    tree with the bcm2712d0 overlay applied) names "brcm,bcm2712d0-pinctrl" there.
    """
    if revision is None or revision.stepping is None or not pinctrl:
        return None
    d_tree = any("bcm2712d0" in c for c in pinctrl)
    if revision.stepping == "C0" and d_tree:
        return (
            f"board: this Pi 5 (revision {revision.hex}) has a C0 SoC but runs the D0 device "
            "tree: remove device_tree=bcm2712-d-rpi-5-b.dtb from config.txt"
        )
    if revision.stepping == "D0" and not d_tree:
        return (
            f"board: this Pi 5 (revision {revision.hex}) has a D0 SoC but runs the C0 device "
            "tree: check overlays/bcm2712d0.dtbo is on the boot partition, or add "
            "device_tree=bcm2712-d-rpi-5-b.dtb under [pi5] in config.txt"
        )
    return None


def _pinctrl_compatible(sysroot: Path) -> list[str]:
    for base in ("proc/device-tree", "sys/firmware/devicetree/base"):
        for path in sorted((sysroot / base).glob("soc*/pinctrl@7d504100/compatible")):
            try:
                raw = path.read_bytes()
            except OSError:
                continue
            return [s for s in raw.decode("ascii", "replace").split("\0") if s]
    return []


def board_problems(sysroot: Path, board: str, revision_hex: str | None) -> list[str]:
    """The Pi-specific problems /health lists: unknown revision, boot partition, device tree."""
    boot = sysroot / "boot" / "firmware"
    if not board.startswith("raspberry-pi") and revision_hex is None:
        return []
    problems: list[str] = []
    revision = decode_revision(int(revision_hex, 16)) if revision_hex else None
    if revision_hex and (revision is None or not revision.known):
        problems.append(
            f"board: revision code {revision_hex} is not one this version knows; the box runs "
            "on the settings of the board its device tree names (report it with "
            "`mongars-edge probe --json`)"
        )
    problems += boot_config_problems(boot)
    tree = pi5_tree_problem(revision, _pinctrl_compatible(sysroot))
    if tree:
        problems.append(tree)
    return problems
