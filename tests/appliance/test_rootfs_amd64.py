"""The amd64 test rootfs: the onefile serves /health under chroot with no Python installed.

Builds the rootfs with ./build_image.sh rootfs-amd64 (mmdebstrap + the onefile). Slow: the
first build takes minutes (see docs/operations.md for measured times).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.env import REPO, free_port, need_tool, wait_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def rootfs() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building a rootfs needs root")
    need_tool("mmdebstrap")
    prebuilt = os.environ.get("MONGARS_ROOTFS")
    if prebuilt:  # reuse a rootfs built by `make image-rootfs` in the same CI job
        return Path(prebuilt)
    out = os.environ.get("MONGARS_IMAGE_OUT", str(REPO / "build/images"))
    result = subprocess.run(
        [str(REPO / "build_image.sh"), "rootfs-amd64"],
        env={**os.environ, "OUT": out},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    root = Path(result.stdout.strip().splitlines()[-1])
    assert (root / "usr/bin/mongars-edge").is_file()
    return root


def _in_root(root: Path, script: str, *, stderr: int | None) -> subprocess.Popen[str]:
    """Run *script* in a private mount+UTS namespace (proc, dev, tmp, run), for a chroot.

    The namespace keeps mounts and hostname changes away from the build machine and goes away
    with the process. No --fork: unshare execs the shell, so a signal reaches what it runs.
    """
    setup = (
        f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
        f"mount -t tmpfs tmpfs {root}/tmp && mount -t tmpfs tmpfs {root}/run && "
    )
    return subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--uts",
            "sh",
            "-c",
            setup + script,
        ],
        text=True,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )


def _run_in_root(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    proc = _in_root(root, script, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_rootfs_has_no_python(rootfs: Path) -> None:
    result = _run_in_root(rootfs, f"chroot {rootfs} sh -c 'command -v python3 python || true'")
    assert result.stdout.strip() == ""
    assert not list(rootfs.glob("usr/lib/*/libpython3*"))


def test_units_users_and_no_secrets_in_the_rootfs(rootfs: Path) -> None:
    tool = need_tool("systemd-analyze")
    for path in (
        "usr/lib/systemd/system/mongars-edge.service",
        "usr/lib/systemd/system/mongars-edge-firstboot.service",
        "etc/systemd/system/multi-user.target.wants/mongars-edge.service",
        "usr/lib/sysusers.d/mongars-edge.conf",
        "usr/lib/tmpfiles.d/mongars-edge.conf",
        "usr/lib/mongars-edge/firstboot",
        "etc/ssh/sshd_config.d/mongars-edge.conf",
        "usr/lib/udev/rules.d/70-mongars-edge.rules",
        "usr/share/mongars-edge/catalog.toml",
        "etc/systemd/system/ssh.service.d/10-mongars-hostkeys.conf",
    ):
        # Enable links point inside the rootfs (/lib/systemd/...): check the link, not the host.
        assert (rootfs / path).is_symlink() or (rootfs / path).exists(), path
    verify = subprocess.run(
        [
            tool,
            "verify",
            f"--root={rootfs}",
            "mongars-edge.service",
            "mongars-edge-firstboot.service",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert [line for line in verify.stderr.splitlines() if "mongars" in line] == []
    security = subprocess.run(
        [
            tool,
            "security",
            "--offline=true",
            f"--root={rootfs}",
            "--no-pager",
            "mongars-edge.service",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Overall exposure level for mongars-edge.service: 1." in security.stdout
    users = {line.split(":")[0] for line in (rootfs / "etc/passwd").read_text().splitlines()}
    assert {"mongars-edge", "mongars"} <= users
    for line in (rootfs / "etc/shadow").read_text().splitlines():
        name, hashed = line.split(":")[:2]
        assert hashed.startswith(("!", "*")), f"{name} can log in with a password"
    assert not list(rootfs.glob("etc/ssh/ssh_host_*")), "images must not share SSH host keys"
    assert (rootfs / "etc/machine-id").read_text() == ""


def test_sshd_accepts_the_dropin_and_forces_the_tui(rootfs: Path) -> None:
    script = (
        f'chroot {rootfs} sh -c \'ssh-keygen -q -t ed25519 -N "" -f /tmp/hostkey && '
        "mkdir -p /run/sshd && /usr/sbin/sshd -t -h /tmp/hostkey && "
        "/usr/sbin/sshd -T -h /tmp/hostkey -C user=mongars,host=x,addr=127.0.0.1'"
    )
    result = _run_in_root(rootfs, script)
    assert result.returncode == 0, result.stderr
    config = result.stdout.lower()
    assert "forcecommand /usr/bin/mongars-edge tui" in config
    assert "passwordauthentication no" in config
    assert "allowtcpforwarding no" in config


@pytest.fixture
def booted_root(rootfs: Path, tmp_path: Path) -> Path:
    """A copy of the rootfs for a test that boots it: first boot writes keys and hostname."""
    copy = tmp_path / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", str(rootfs), str(copy)], check=True)
    return copy


@pytest.fixture
def notify_in_root(booted_root: Path) -> Iterator[tuple[str, socket.socket]]:
    """A notify socket inside the rootfs, as systemd would put it in /run."""
    inside = "/var/lib/mongars-edge-notify.sock"
    path = booted_root / inside.lstrip("/")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)
    sock.settimeout(600)
    try:
        yield inside, sock
    finally:
        sock.close()


def test_onefile_serves_health_under_chroot_with_first_boot_problems(
    booted_root: Path, notify_in_root: tuple[str, socket.socket]
) -> None:
    rootfs = booted_root
    inside_sock, sock = notify_in_root
    boot = rootfs / "boot/firmware/mongars-edge"
    boot.mkdir(parents=True, exist_ok=True)
    (boot / "hostname").write_text("chroot-box\n")
    (boot / "wifi.txt").write_text("psk=no ssid here\n")  # a mistake the box must explain
    first = _run_in_root(rootfs, f"chroot {rootfs} /usr/lib/mongars-edge/firstboot")
    assert first.returncode == 0, first.stderr
    assert "PROBLEM: wifi.txt" in first.stderr
    assert (rootfs / "etc/hostname").read_text() == "chroot-box\n"
    assert list(rootfs.glob("etc/ssh/ssh_host_ed25519_key")), "first boot makes this box's keys"

    port = free_port()
    serve = (
        f"exec chroot --userspec=mongars-edge:mongars-edge {rootfs} env -i "
        f"HOME=/var/lib/mongars-edge NOTIFY_SOCKET={inside_sock} WATCHDOG_USEC=2000000 "
        f"/usr/bin/mongars-edge serve --data-dir /var/lib/mongars-edge "
        f"--host 127.0.0.1 --port {port} --no-mesh --no-speech"
    )
    proc = _in_root(rootfs, serve, stderr=subprocess.STDOUT)
    messages: list[bytes] = []
    health: dict[str, object] = {}
    out = ""
    try:
        # The onefile unpacks itself before Python starts: allow a slow machine its minutes.
        while not any(b"READY=1" in m for m in messages):
            messages.append(sock.recv(4096))
        health = wait_json(f"http://127.0.0.1:{port}/health", proc, deadline_s=60)
        while b"WATCHDOG=1" not in messages:
            messages.append(sock.recv(4096))
    except (TimeoutError, AssertionError) as exc:
        proc.terminate()
        out, _ = proc.communicate(timeout=120)
        raise AssertionError(f"{exc}; notify messages {messages}; server output:\n{out}") from None
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
    assert health["status"] == "degraded", health
    problems = health["problems"]
    assert isinstance(problems, list)
    assert any("wifi.txt" in p for p in problems)
    assert "Traceback" not in out
