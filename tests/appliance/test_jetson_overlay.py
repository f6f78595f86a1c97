"""The Jetson overlay tarball: built for real, then read back."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.env import REPO


def _build(out: Path, models: str | None) -> Path:
    if os.geteuid() != 0:
        pytest.skip("build_image.sh needs root")
    env = {**os.environ, "OUT": str(out)}
    if models is not None:
        env["IMAGE_MODELS"] = models
    result = subprocess.run(
        [str(REPO / "build_image.sh"), "jetson"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Without its models (1.2 GB from PyPI): the slow test below checks those."""
    return _build(tmp_path_factory.mktemp("jetson"), "")


def test_overlay_contents(overlay: Path) -> None:
    with tarfile.open(overlay) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        for path in (
            "usr/lib/systemd/system/mongars-edge.service",
            "usr/lib/systemd/system/mongars-edge-firstboot.service",
            "usr/lib/systemd/system/mongars-edge-power.service",
            "etc/systemd/system/mongars-edge.service.d/10-jetson.conf",
            "etc/systemd/system/multi-user.target.wants/mongars-edge.service",
            "etc/systemd/system/sysinit.target.wants/mongars-edge-firstboot.service",
            "usr/lib/sysusers.d/mongars-edge.conf",
            "usr/lib/tmpfiles.d/mongars-edge.conf",
            "usr/lib/mongars-edge/firstboot",
            "usr/lib/mongars-edge/jetson/power-mode.sh",
            "usr/lib/mongars-edge/jetson/gpu-wheels.sh",
            "usr/lib/mongars-edge/jetson/gpu-wheels.txt",
            "usr/lib/mongars-edge/install-app.sh",
            "etc/ssh/sshd_config.d/mongars-edge.conf",
            "etc/mongars-edge/firstboot/README.txt",
            "usr/share/mongars-edge/catalog.toml",
        ):
            assert path in members, path
        assert any(n.startswith("usr/lib/mongars-edge/wheels/mongars_edge-") for n in members)
        # Root-owned files; the script and the tools are executable.
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        assert members["usr/lib/mongars-edge/firstboot"].mode & 0o111
        assert members["usr/lib/mongars-edge/jetson/power-mode.sh"].mode & 0o111
        assert members["usr/lib/mongars-edge/jetson/gpu-wheels.sh"].mode & 0o111
        # Nothing applies itself: the first-boot folder holds examples only.
        firstboot = [n for n in members if n.startswith("etc/mongars-edge/firstboot/")]
        assert all(n.endswith((".example", "README.txt")) for n in firstboot), firstboot
        readme = tar.extractfile("./usr/share/doc/mongars-edge/README.overlay")
        assert readme is not None
        assert b"l4t_create_default_user" in readme.read()


@pytest.mark.slow
def test_the_overlay_carries_the_models_a_jetson_chooses(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """What a Jetson's profile chooses ships with the overlay, pulled and verified when built."""
    built = _build(tmp_path_factory.mktemp("jetson-models"), None)
    with tarfile.open(built) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    gguf = members["usr/share/mongars-edge/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"]
    assert gguf.size == 1117320768 and gguf.mode & 0o444 == 0o444
    assert "usr/share/mongars-edge/stt/whisper-base/model.bin" in members
