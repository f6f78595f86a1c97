"""Raspberry Pi revision codes, SoC steppings and the boot partition checks /health reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mongars_edge.hardware import probe
from mongars_edge.hardware.pi import (
    board_problems,
    boot_config_problems,
    decode_revision,
    pi5_tree_problem,
    revision_code,
)

SYSROOTS = Path(__file__).resolve().parents[1] / "fixtures" / "sysroots"
# The pin controller's compatible in the mainline Pi 5 trees (bcm2712-rpi-5-b.dtb and
# bcm2712-d-rpi-5-b.dtb of Debian's 7.3 kernel).
C0_PINCTRL = ["brcm,bcm2712c0-pinctrl"]
D0_PINCTRL = ["brcm,bcm2712d0-pinctrl"]


def _copy(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(SYSROOTS / name, root, symlinks=True)
    return root


def _set_revision(root: Path, revision: str) -> None:
    cpuinfo = root / "proc/cpuinfo"
    lines = [
        f"Revision\t: {revision}" if line.startswith("Revision") else line
        for line in cpuinfo.read_text().splitlines()
    ]
    cpuinfo.write_text("\n".join(lines) + "\n")


def _boot(root: Path, config: str, files: tuple[str, ...] = ()) -> Path:
    boot = root / "boot/firmware"
    boot.mkdir(parents=True, exist_ok=True)
    (boot / "config.txt").write_text(config)
    for name in files:
        (boot / name).parent.mkdir(parents=True, exist_ok=True)
        (boot / name).write_bytes(b"\xd0\x0d\xfe\xed")
    return boot


GOOD_CONFIG = """\
# Do not modify this file!
arm_64bit=1
enable_uart=1
upstream_kernel=1
kernel=vmlinuz-7.3.4+deb13-arm64
initramfs initrd.img-7.3.4+deb13-arm64
[pi5]
dtparam=fan_temp0=50000
#device_tree=bcm2712-d-rpi-5-b.dtb
[all]
"""
BOOT_FILES = ("vmlinuz-7.3.4+deb13-arm64", "initrd.img-7.3.4+deb13-arm64")


@pytest.mark.parametrize(
    ("code", "board", "rev", "memory", "stepping"),
    [
        (0xD04170, "Raspberry Pi 5", "1.0", 8192, "C0"),
        (0xC04170, "Raspberry Pi 5", "1.0", 4096, "C0"),
        (0xB04171, "Raspberry Pi 5", "1.1", 2048, "D0"),
        (0xE04171, "Raspberry Pi 5", "1.1", 16384, "D0"),
        (0xC03114, "Raspberry Pi 4 Model B", "1.4", 4096, None),
        (0xC03130, "Raspberry Pi 400", "1.0", 4096, None),
    ],
)
def test_known_revisions_decode(
    code: int, board: str, rev: str, memory: int, stepping: str | None
) -> None:
    decoded = decode_revision(code)
    assert decoded is not None and decoded.known
    assert (decoded.board, decoded.board_rev, decoded.memory_mb, decoded.stepping) == (
        board,
        rev,
        memory,
        stepping,
    )


def test_unknown_revisions_are_flagged_not_fatal() -> None:
    future_board = decode_revision(0xD04FF0)  # a type number no board had when this was written
    assert future_board is not None and not future_board.known
    pi5_rev_1_4 = decode_revision(0xD04174)  # a Pi 5 board revision with no known stepping
    assert pi5_rev_1_4 is not None and pi5_rev_1_4.stepping is None and not pi5_rev_1_4.known
    assert decode_revision(0x000E) is None  # old-style code (Pi 1 era): no fields to decode


def test_revision_sources() -> None:
    assert revision_code("d04170", None) == 0xD04170
    assert revision_code(None, bytes.fromhex("00d04171")) == 0xD04171
    assert revision_code("not-hex", None) is None
    assert revision_code(None, b"\x01\x02") is None  # a truncated device-tree cell


def test_probe_reports_the_pi5_stepping(tmp_path: Path) -> None:
    pi5 = probe(SYSROOTS / "pi5-8gb")
    assert (pi5.board_revision, pi5.soc_stepping) == ("d04170", "C0")
    root = _copy("pi5-8gb", tmp_path)
    _set_revision(root, "d04171")
    facts = probe(root)
    assert (facts.soc_stepping, facts.warnings) == ("D0", ())
    pi4 = probe(SYSROOTS / "pi4-4gb")
    assert (pi4.board_revision, pi4.soc_stepping) == ("c03114", None)


def test_mainline_kernel_revision_comes_from_the_device_tree(tmp_path: Path) -> None:
    root = _copy("pi5-8gb", tmp_path)
    _set_revision(root, "")
    cpuinfo = root / "proc/cpuinfo"
    cpuinfo.write_text(
        "\n".join(x for x in cpuinfo.read_text().splitlines() if not x.startswith("Revision"))
    )
    (root / "proc/device-tree/system").mkdir()
    (root / "proc/device-tree/system/linux,revision").write_bytes(bytes.fromhex("00e04171"))
    facts = probe(root)
    assert (facts.board_revision, facts.soc_stepping) == ("e04171", "D0")


def test_unknown_or_garbled_revision_is_a_warning(tmp_path: Path) -> None:
    root = _copy("pi5-8gb", tmp_path)
    _set_revision(root, "d04ff0")
    facts = probe(root)
    assert facts.board == "raspberry-pi-5"  # the device tree still names the board
    assert any("d04ff0 is not one this version knows" in w for w in facts.warnings)
    _set_revision(root, "zz!")
    assert any("revision is garbled" in w for w in probe(root).warnings)


def test_health_lists_an_unknown_revision_and_the_box_keeps_its_board(tmp_path: Path) -> None:
    root = _copy("pi5-8gb", tmp_path)
    _boot(root, GOOD_CONFIG, BOOT_FILES)
    assert board_problems(root, "raspberry-pi-5", "d04170") == []
    problems = board_problems(root, "raspberry-pi-5", "d04ff0")
    assert len(problems) == 1
    assert "revision code d04ff0 is not one this version knows" in problems[0]


def test_good_boot_config_has_no_problems(tmp_path: Path) -> None:
    assert boot_config_problems(_boot(tmp_path, GOOD_CONFIG, BOOT_FILES)) == []


def test_garbled_config_lines_are_named(tmp_path: Path) -> None:
    garbled = GOOD_CONFIG + "dtoverlay hifiberry-dacplus\n[pi5\n\x00\x01\x02junk\n"
    problems = boot_config_problems(_boot(tmp_path, garbled, BOOT_FILES))
    assert any("line 11" in p and "dtoverlay hifiberry-dacplus" in p for p in problems)
    assert any("line 12" in p and "[pi5" in p for p in problems)
    assert any("bytes that are not text" in p for p in problems)


def test_missing_boot_files_are_named(tmp_path: Path) -> None:
    config = GOOD_CONFIG + "[pi5]\ndevice_tree=bcm2712-d-rpi-5-b.dtb\ndtoverlay=wm8960-soundcard\n"
    problems = boot_config_problems(_boot(tmp_path, config, BOOT_FILES[:1]))
    assert any("initramfs names initrd.img-7.3.4+deb13-arm64" in p for p in problems)
    assert any("device_tree names bcm2712-d-rpi-5-b.dtb" in p for p in problems)
    overlay = "dtoverlay=wm8960-soundcard names overlays/wm8960-soundcard.dtbo"
    assert any(overlay in p for p in problems)
    files = (*BOOT_FILES, "bcm2712-d-rpi-5-b.dtb", "overlays/wm8960-soundcard.dtbo")
    assert boot_config_problems(_boot(tmp_path, config, files)) == []


def test_unmounted_or_empty_boot_partition(tmp_path: Path) -> None:
    (tmp_path / "boot/firmware").mkdir(parents=True)
    (problem,) = boot_config_problems(tmp_path / "boot/firmware")
    assert "empty or not mounted" in problem
    (tmp_path / "boot/firmware/start4.elf").write_bytes(b"x")
    (problem,) = boot_config_problems(tmp_path / "boot/firmware")
    assert "config.txt is missing" in problem


def test_a_pi5_on_the_other_steppings_tree_is_reported(tmp_path: Path) -> None:
    c0, d0 = decode_revision(0xD04170), decode_revision(0xD04171)
    assert pi5_tree_problem(c0, C0_PINCTRL) is None
    assert pi5_tree_problem(d0, D0_PINCTRL) is None
    assert "bcm2712d0.dtbo" in (pi5_tree_problem(d0, C0_PINCTRL) or "")
    assert "remove device_tree=" in (pi5_tree_problem(c0, D0_PINCTRL) or "")
    assert pi5_tree_problem(decode_revision(0xC03114), C0_PINCTRL) is None  # a Pi 4
    # The same, read from a live-shaped device tree.
    root = _copy("pi5-8gb", tmp_path)
    _boot(root, GOOD_CONFIG, BOOT_FILES)
    node = root / "proc/device-tree/soc@107c000000/pinctrl@7d504100"
    node.mkdir(parents=True)
    (node / "compatible").write_bytes(b"brcm,bcm2712c0-pinctrl\0")
    assert board_problems(root, "raspberry-pi-5", "d04170") == []
    (problem,) = board_problems(root, "raspberry-pi-5", "d04171")
    assert "has a D0 SoC but runs the C0 device tree" in problem


def test_other_boards_have_no_pi_problems(tmp_path: Path) -> None:
    assert board_problems(tmp_path, "x86_64-generic", None) == []
    assert board_problems(tmp_path, "jetson-orin-nano", None) == []
