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
