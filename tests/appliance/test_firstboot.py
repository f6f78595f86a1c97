"""The first-boot script, run for real against a scratch root (MONGARS_ROOT)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.env import FIRSTBOOT, clean_env

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLE me@laptop"


def _root(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    for d in ("etc/mongars-edge", "var/lib/mongars-edge", "boot/firmware/mongars-edge"):
        (root / d).mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tmongars-edge\n")
    return root, root / "boot/firmware/mongars-edge"


def _run(root: Path, cli: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(MONGARS_ROOT=str(root), MONGARS_BIN=str(cli))
    return subprocess.run(
        ["sh", str(FIRSTBOOT)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _problems(root: Path) -> list[str]:
    path = root / "var/lib/mongars-edge/firstboot-problems.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_good_files_are_applied_and_secrets_leave_the_card(
    tmp_path: Path, cli_wrapper: Path
) -> None:
    root, boot = _root(tmp_path)
    (boot / "hostname").write_text("Kitchen-Box\r\n")  # written on Windows
    (boot / "wifi.txt").write_text('ssid=Maison "5G"\npsk = correct horse battery\ncountry=ca\n')
    (boot / "authorized_keys").write_text(f"# my laptop\n{KEY}\n")
    (boot / "config.toml").write_text("port = 8081\n")
    result = _run(root, cli_wrapper)
    assert result.returncode == 0, result.stderr
    assert _problems(root) == []
    assert (root / "etc/hostname").read_text() == "kitchen-box\n"
    assert "127.0.1.1\tkitchen-box" in (root / "etc/hosts").read_text()
    wpa = root / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
    assert (wpa.stat().st_mode & 0o777) == 0o600
    text = wpa.read_text()
    assert 'ssid="Maison \\"5G\\""' in text
    assert 'psk="correct horse battery"' in text
    assert "country=CA" in text
    assert not (boot / "wifi.txt").exists()
    assert "correct horse" not in (boot / "wifi.txt.applied").read_text()
    keys = root / "var/lib/mongars-tui/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n"
    assert (keys.stat().st_mode & 0o777) == 0o600
    assert (root / "etc/mongars-edge/config.toml").read_text() == "port = 8081\n"


def test_bad_files_never_fail_the_boot_and_are_explained(tmp_path: Path, cli_wrapper: Path) -> None:
    root, boot = _root(tmp_path)
    (root / "etc/mongars-edge/config.toml").write_text("port = 8080\n")
    (boot / "hostname").write_text("not a_valid name!\n")
    (boot / "wifi.txt").write_text("psk=short\n")
    (boot / "authorized_keys").write_text("hello, please let me in\n")
    (boot / "config.toml").write_text('port = "eighty"\n')
    (boot / "admin.txt").write_text("name=alice\n")
    result = _run(root, cli_wrapper)
    assert result.returncode == 0, result.stderr
    problems = _problems(root)
    joined = "\n".join(problems)
    assert "hostname file" in joined
    assert "wifi.txt: no 'ssid=' line" in joined
    assert "authorized_keys: 1 line(s) are not SSH public keys" in joined
    assert "no usable SSH public key" in joined
    assert "config.toml rejected" in joined
    assert "'port'" in joined  # the CLI's own message names the setting
    assert "admin.txt: needs 'name=' and 'password='" in joined
    # The journal gets the same lines, and nothing was half-applied.
    assert "PROBLEM: config.toml rejected" in result.stderr
    assert (root / "etc/mongars-edge/config.toml").read_text() == "port = 8080\n"
    assert not (root / "etc/hostname").exists()
    assert not (boot / "admin.txt").exists()  # a password never stays on the card


def test_garbage_config_and_empty_folder(tmp_path: Path, cli_wrapper: Path) -> None:
    root, boot = _root(tmp_path)
    (boot / "config.toml").write_bytes(b"\xff\xfe not toml [[[")
    result = _run(root, cli_wrapper)
    assert result.returncode == 0
    assert any("not valid TOML" in p for p in _problems(root))
    # Fixing the card and booting again clears the report.
    (boot / "config.toml").write_text("port = 8082\n")
    assert _run(root, cli_wrapper).returncode == 0
    assert _problems(root) == []
    assert not (root / "var/lib/mongars-edge/firstboot-problems.txt").exists()


def test_no_first_boot_folder_is_fine(tmp_path: Path, cli_wrapper: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/mongars-edge").mkdir(parents=True)
    result = _run(root, cli_wrapper)
    assert result.returncode == 0
    assert "nothing to apply" in result.stderr


def test_a_missing_boot_folder_is_reported_where_the_image_ships_one(
    tmp_path: Path, cli_wrapper: Path
) -> None:
    """The Pi image names its boot-partition folder; an unmounted partition is a problem."""
    root = tmp_path / "root"
    (root / "var/lib/mongars-edge").mkdir(parents=True)
    (root / "etc/mongars-edge").mkdir(parents=True)
    (root / "etc/mongars-edge/firstboot-source").write_text("/boot/firmware/mongars-edge\n")
    assert _run(root, cli_wrapper).returncode == 0
    (problem,) = _problems(root)
    assert "/boot/firmware/mongars-edge is missing" in problem


def test_a_device_tree_line_added_on_the_card_survives_kernel_updates(
    tmp_path: Path, cli_wrapper: Path
) -> None:
    """A Pi 5 D0 owner uncomments device_tree= in config.txt; the kernel hook would drop it."""
    root, _boot = _root(tmp_path)
    firmware = root / "boot/firmware"
    (firmware / "bcm2712-d-rpi-5-b.dtb").write_bytes(b"\xd0\x0d\xfe\xed")
    (firmware / "config.txt").write_text(
        "kernel=vmlinuz\r\n[pi5]\r\n#device_tree=old.dtb\r\ndevice_tree=bcm2712-d-rpi-5-b.dtb\r\n"
    )
    custom = root / "etc/default/raspi-firmware-custom"
    custom.parent.mkdir(parents=True)
    custom.write_text("[all]\narm_64bit=1\n")
    assert _run(root, cli_wrapper).returncode == 0
    assert _problems(root) == []
    kept = custom.read_text()
    assert "[pi5]\n" in kept and "\ndevice_tree=bcm2712-d-rpi-5-b.dtb\n" in kept
    assert _run(root, cli_wrapper).returncode == 0  # a second run adds nothing
    assert custom.read_text() == kept
    # A line naming a tree the card does not have is reported, not kept.
    (firmware / "config.txt").write_text("[pi5]\ndevice_tree=bcm2712-d-rpi5-b.dtb\n")
    assert _run(root, cli_wrapper).returncode == 0
    (problem,) = _problems(root)
    assert "device_tree=bcm2712-d-rpi5-b.dtb names a file that is not on the" in problem
    assert custom.read_text() == kept
