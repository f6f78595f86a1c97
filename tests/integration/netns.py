"""Real network namespaces joined by a bridge (ENVIRONMENT.md recipe), with `serve` boxes in them.

Only 10.77.0.0/24 inside namespaces this module created is ever addressed. Namespaces are
deleted on exit, even when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.env import clean_env

SUBNET = "10.77.0"
HTTP_PORT = 8080
MESH_PORT = 8765


def can_use_netns() -> str:
    """Empty when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if subprocess.run(["which", "ip"], capture_output=True, check=False).returncode:
        return "iproute2 (`ip`) is not installed"
    return ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Box:
    name: str
    ns: str
    address: str
    data_dir: Path
    log_path: Path
    cpu: int = 0
    stopped: bool = False
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def exec_args(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def start(self) -> None:
        settings = {
            "MONGARS_N_THREADS": "1",
            "MONGARS_N_PARALLEL": "1",
            "MONGARS_STT": "off",
            "MONGARS_SPEECH": "off",
            "MONGARS_WYOMING_PORT": "0",
            "MONGARS_LOG_LEVEL": os.environ.get("MGS_LAB_LOG", "info"),
        }
        env = clean_env(**{**settings, **self.extra_env})
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.exec_args(
                sys.executable,
                "-m",
                "mongars_edge",
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--host",
                self.address,
                "--port",
                str(HTTP_PORT),
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()

    def kill(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.data_dir / "mesh" / "state.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def run(self, *cmd: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.exec_args(*cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            check=False,
            **kw,
        )

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(
            sys.executable,
            "-m",
            "mongars_edge",
            *args,
            "--data-dir",
            str(self.data_dir),
            timeout=timeout,
        )


class Lab(contextlib.AbstractContextManager["Lab"]):
    """A bridge namespace and one namespace per box, 10.77.0.1, .2, ..."""

    def __init__(self, root: Path, names: list[str]) -> None:
        self.tag = secrets.token_hex(2)
        self.bridge = f"mgs-{self.tag}-br"
        self.boxes: dict[str, Box] = {}
        cpus = sorted(os.sched_getaffinity(0))
        for i, name in enumerate(names, start=1):
            data = root / name
            data.mkdir(parents=True, exist_ok=True)
            self.boxes[name] = Box(
                name,
                f"mgs-{self.tag}-{name}",
                f"{SUBNET}.{i}",
                data,
                root / f"{name}.log",
                cpu=cpus[(i - 1) % len(cpus)],  # each box its own core where there are enough
            )

    def __enter__(self) -> Lab:
        try:
            _ip("netns", "add", self.bridge)
            _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge, "link", "set", "br0", "up")
            for box in self.boxes.values():
                _ip("netns", "add", box.ns)
                _ip("-n", box.ns, "link", "set", "lo", "up")
                _ip(
                    "link",
                    "add",
                    "veth0",
                    "netns",
                    box.ns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    f"br-{box.name}",
                    "netns",
                    self.bridge,
                )
                _ip("-n", self.bridge, "link", "set", f"br-{box.name}", "master", "br0")
                _ip("-n", self.bridge, "link", "set", f"br-{box.name}", "up")
                _ip("-n", box.ns, "addr", "add", f"{box.address}/24", "dev", "veth0")
                _ip("-n", box.ns, "link", "set", "veth0", "up", "multicast", "on")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for box in self.boxes.values():
            with contextlib.suppress(Exception):
                box.kill()
        for ns in [b.ns for b in self.boxes.values()] + [self.bridge]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def wait(self, what: str, cond: Any, limit_s: float = 60.0) -> None:
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            if cond():
                return
            for box in self.boxes.values():
                if box.proc is not None and not box.stopped and box.proc.poll() is not None:
                    raise AssertionError(f"box {box.name} exited:\n{box.log()[-3000:]}")
            time.sleep(0.2)
        logs = "\n".join(f"--- {b.name}\n{b.log()[-2000:]}" for b in self.boxes.values())
        raise AssertionError(f"timed out waiting for {what}\n{logs}")
